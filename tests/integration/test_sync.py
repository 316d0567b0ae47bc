"""Sync against a real OpenSSH sshd, a real filesystem, real watchdog and real git: the host ends identical.

Every test ends by comparing the local tree with the host tree (bytes, symlink targets, exec bits, folders),
leaving out only what must not travel (ignored, secret, outputs), and with nothing unexpected on the host.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gpubox.config import HostConfig, ProjectConfig, SyncConfig
from gpubox.errors import GpuboxError, RemoteError
from gpubox.remote.connection import Backoff
from gpubox.remote.session import HostSession, connect_host
from gpubox.sync import engine
from gpubox.sync.engine import BatchProgress, MassDeletionRefused, Syncer, SyncReport
from gpubox.sync.watch import LiveSync, WatchSettings
from tests.support.cli import host_entry, run_gpubox
from tests.support.sshd import SshServer
from tests.support.trees import (
    assert_same_tree,
    make_files,
    same_tree,
    snapshot,
    wait_until,
    write,
)

pytestmark = pytest.mark.integration

OUTPUTS = ("runs", "checkpoints", "logs", "outputs")
STAGING = ".gpubox-staging"


# ------------------------------------------------------------------------------------------------- rigs


@dataclass
class Rig:
    """One local project folder synced to one folder on the test sshd, through a real HostSession."""

    local: Path
    host: Path
    session: HostSession
    syncer: Syncer
    home: Path
    """The ssh user's home on the host (where the agent keeps ~/.gpubox/trash)."""
    reports: list[tuple[SyncReport, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def trash(self) -> Path:
        return self.home / ".gpubox" / "trash" / self.syncer.trash

    def full(self, **kwargs: object) -> SyncReport:
        return self.syncer.full(**kwargs)  # type: ignore[arg-type]

    def same(self, *, local_exclude: tuple[str, ...] = (), host_exclude: tuple[str, ...] = ()) -> bool:
        return same_tree(self.local, self.host, local_exclude=local_exclude, host_exclude=host_exclude)

    def assert_same(
        self, *, local_exclude: tuple[str, ...] = (), host_exclude: tuple[str, ...] = ()
    ) -> None:
        assert not (self.host / STAGING).exists(), "a staging folder was left on the host"
        assert_same_tree(self.local, self.host, local_exclude=local_exclude, host_exclude=host_exclude)

    @contextlib.contextmanager
    def live(self, settings: WatchSettings | None = None) -> Iterator[LiveSync]:
        """A LiveSync with the real watchdog observer; reports and problems are kept on the rig."""
        live = LiveSync(
            self.syncer,
            settings=settings or WatchSettings(),
            on_report=lambda report, why: self.reports.append((report, why)),
            on_problem=self.problems.append,
            link_generation=lambda: self.session.generation,
        ).start()
        try:
            assert live.watching
            # The start-up rescan is done once the first report arrives.
            assert wait_until(lambda: live.batches >= 1, 20), self.problems
            yield live
        finally:
            live.stop()

    def settle(
        self,
        live: LiveSync,
        timeout: float = 20,
        *,
        local_exclude: tuple[str, ...] = (),
        host_exclude: tuple[str, ...] = (),
    ) -> None:
        """Wait until the host matches local (events are asynchronous), then assert it in full."""
        wait_until(
            lambda: live.wait_idle(1) and self.same(local_exclude=local_exclude, host_exclude=host_exclude),
            timeout,
        )
        assert live.wait_idle(5)
        self.assert_same(local_exclude=local_exclude, host_exclude=host_exclude)
        assert not [p for p in self.problems if "link lost" in p], self.problems


def _host_config(sshd: SshServer, remote_dir: Path) -> HostConfig:
    return HostConfig(
        name="box",
        hostname=sshd.host,
        port=sshd.port,
        user=sshd.user,
        identity_file=str(sshd.client_key),
        accept_new=True,
        remote_dir=str(remote_dir),
    )


@pytest.fixture
def make_rig(sshd: SshServer, tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(name: str = "proj", **sync: object) -> Rig:
        local = tmp_path / "local" / name
        local.mkdir(parents=True, exist_ok=True)
        host = tmp_path / "host" / name
        project = ProjectConfig(root=local, path=None, sync=SyncConfig(**sync))  # type: ignore[arg-type]
        session = connect_host(_host_config(sshd, host), project.name, probe=False)
        syncer = Syncer(
            session,
            project,
            max_delete_count=project.sync.max_delete_count,
            max_delete_share=project.sync.max_delete_share,
            trash_days=project.sync.trash_days,
        )
        rig = Rig(local, host, session, syncer, Path(session.agent.hello["home"]))
        rigs.append(rig)
        return rig

    try:
        yield make
    finally:
        for rig in rigs:
            rig.session.close()
            # The trash lives in the ssh user's real home: leave nothing of this test there.
            subprocess.run(["rm", "-rf", str(rig.trash)], check=False)


@pytest.fixture
def rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig()


def _conflicts(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f"{name}.gpubox-conflict-*"))


# ------------------------------------------------------------------------------------ 1. initial sync


def test_initial_sync_of_an_odd_tree_then_a_noop(make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    rig = make_rig(max_file_size_mb=0.01, include=("data/wanted-big.bin",))
    local = rig.local
    write(local, "src/pkg/deep/er/module.py", "print('deep')\n")
    write(local, "src/pkg/__init__.py", "")  # a 0-byte file
    write(local, "scripts/train.sh", "#!/bin/sh\necho train\n", executable=True)
    (local / "empty" / "nested-empty").mkdir(parents=True)
    write(local, "with space/a file.txt", "spaces\n")
    write(local, "ünïcödé/日本語.txt", "unicode\n")
    write(local, "odd/new\nline.txt", "newline in the name\n")
    write(local, "data/big.bin", os.urandom(20_000))  # over the 0.01 MB limit: skipped
    write(local, "data/wanted-big.bin", os.urandom(20_000))  # over it too, but in [sync] include
    (local / "src" / "link-to-module").symlink_to("pkg/deep/er/module.py")
    (local / "src" / "link-to-folder").symlink_to("pkg")
    (local / "escape").symlink_to("../../outside")
    (local / "absolute").symlink_to("/etc/hostname")
    (tmp_path / "outside").mkdir()

    report = rig.full()

    assert report.outside_links == [("absolute", "/etc/hostname"), ("escape", "../../outside")]
    assert report.too_large == [("data/big.bin", 20_000)]
    assert report.errors == [] and report.conflicts == [] and report.unreadable == []
    rig.assert_same(local_exclude=("escape", "absolute", "data/big.bin"))
    host = rig.host
    assert os.readlink(host / "src" / "link-to-module") == "pkg/deep/er/module.py"
    assert (host / "src" / "link-to-folder").is_symlink()
    assert (host / "scripts" / "train.sh").stat().st_mode & 0o777 == 0o755
    assert (host / "with space" / "a file.txt").stat().st_mode & 0o777 == 0o644
    assert (host / "src" / "pkg" / "__init__.py").stat().st_size == 0
    # mtimes travel, so the quick check of the next pass finds everything in place.
    assert (host / "ünïcödé" / "日本語.txt").stat().st_mtime_ns == (
        local / "ünïcödé" / "日本語.txt"
    ).stat().st_mtime_ns
    assert not (tmp_path / "outside" / "escape").exists()
    assert report.sent == len(snapshot(host))

    again = rig.full()
    assert (again.sent, again.deleted, again.planned, again.conflicts) == (0, 0, [], [])
    assert again.outside_links == report.outside_links and again.too_large == report.too_large
    rig.assert_same(local_exclude=("escape", "absolute", "data/big.bin"))

    # A fresh ancestor (another machine, a wiped state) finds the host already in step: nothing goes up.
    rig.syncer.forget()
    fresh = rig.full()
    assert fresh.sent == 0 and fresh.in_sync == report.sent and fresh.planned == []


# ------------------------------------------------------------------------------------------ 5. secrets


def test_secrets_are_held_back_unless_included(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    write(rig.local, "train.py", "print(1)\n")
    write(rig.local, ".env", "API_KEY=hunter2\n")
    write(rig.local, "config/.env.production", "TOKEN=x\n")
    write(rig.local, "certs/server.pem", "-----BEGIN-----\n")
    write(rig.local, "id_ed25519", "private\n")
    report = rig.full()
    assert report.held_back == [".env", "certs/server.pem", "config/.env.production", "id_ed25519"]
    secrets = (".env", "config/.env.production", "certs/server.pem", "id_ed25519")
    rig.assert_same(local_exclude=secrets)
    assert not (rig.host / ".env").exists()
    rig.session.close()

    # Named in [sync] include, .env goes up (and only it).
    rig = make_rig(include=(".env",))
    report = rig.full()
    assert report.held_back == ["certs/server.pem", "config/.env.production", "id_ed25519"]
    assert (rig.host / ".env").read_text() == "API_KEY=hunter2\n"
    rig.assert_same(local_exclude=secrets[1:])


# ------------------------------------------------------------------------------------- 8. one-way-safe


def _host_edit(path: Path, text: str, *, age: float = 0) -> None:
    """Change a host file the way a training script would: new bytes, a new mtime."""
    path.write_text(text)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))


def test_one_way_safe_against_host_changes(rig: Rig) -> None:
    for name in ("both.txt", "host-only-edit.txt", "deleted-here.txt", "plain.txt", "same-new.txt"):
        write(rig.local, name, f"{name} v1\n")
    write(rig.local, "pkg/gone-here.txt", "v1\n")
    assert rig.full().sent == 7
    host = rig.host

    _host_edit(host / "both.txt", "host's edit of both\n", age=100)
    _host_edit(host / "host-only-edit.txt", "host's edit\n", age=100)
    _host_edit(host / "deleted-here.txt", "host's edit of a file deleted locally\n", age=100)
    write(host, "created-on-host.txt", "made by a run\n")
    write(host, "newdir/host-file.txt", "made by a run\n")
    # Created on both sides independently, with different bytes: the host's copy must survive too.
    write(host, "twin.txt", "host's twin\n")
    write(rig.local, "twin.txt", "local twin\n")
    write(rig.local, "both.txt", "local's edit of both\n")
    (rig.local / "deleted-here.txt").unlink()

    report = rig.full()

    (both,) = _conflicts(host, "both.txt")
    assert both.read_text() == "host's edit of both\n"
    assert (host / "both.txt").read_text() == "local's edit of both\n"
    (twin,) = _conflicts(host, "twin.txt")
    assert twin.read_text() == "host's twin\n"
    assert sorted(c.split(" -> ")[0] for c in report.conflicts) == ["both.txt", "twin.txt"]
    assert (host / "host-only-edit.txt").read_text() == "host's edit\n"
    assert (host / "deleted-here.txt").read_text() == "host's edit of a file deleted locally\n"
    assert report.host_changed == ["deleted-here.txt", "host-only-edit.txt"]
    assert report.deleted == 0
    host_extra = (
        "created-on-host.txt",
        "newdir",
        "deleted-here.txt",
        "both.txt.gpubox-conflict-*",
        "twin.txt.gpubox-conflict-*",
    )
    rig.assert_same(local_exclude=("host-only-edit.txt",), host_exclude=(*host_extra, "host-only-edit.txt"))

    # The host-changed file stays the host's while local leaves it alone; nothing else moves either.
    again = rig.full()
    assert again.planned == [] and again.host_changed == ["host-only-edit.txt"]
    assert (host / "created-on-host.txt").read_text() == "made by a run\n"

    # Live sync (no manifest): a local delete of a file the host changed is refused just in time, kept.
    _host_edit(host / "plain.txt", "host's late edit\n", age=50)
    (rig.local / "plain.txt").unlink()
    live = rig.syncer.paths(["plain.txt"])
    assert live.kept_on_host == ["plain.txt"] and live.deleted == 0
    assert (host / "plain.txt").read_text() == "host's late edit\n"
    # ...and a local write over a file the host changed keeps the host's copy aside.
    _host_edit(host / "same-new.txt", "host's late edit\n", age=50)
    write(rig.local, "same-new.txt", "local's late edit\n")
    live = rig.syncer.paths(["same-new.txt"])
    assert [c.split(" -> ")[0] for c in live.conflicts] == ["same-new.txt"]
    assert _conflicts(host, "same-new.txt")[0].read_text() == "host's late edit\n"
    # A local delete of a file in a folder that the host replaced by its own file: that file is not touched.
    (host / "pkg" / "gone-here.txt").unlink()
    (host / "pkg").rmdir()
    write(host, "pkg", "the host's own file named pkg\n")
    (rig.local / "pkg" / "gone-here.txt").unlink()
    rig.syncer.paths(["pkg/gone-here.txt"])
    assert (host / "pkg").read_text() == "the host's own file named pkg\n"
    assert not _conflicts(host, "pkg")
    rig.assert_same(
        local_exclude=("host-only-edit.txt", "pkg"),
        host_exclude=(*host_extra, "host-only-edit.txt", "plain.txt", "same-new.txt.gpubox-conflict-*", "pkg"),
    )
    # Nothing the host created or changed went to the trash.
    assert not rig.trash.exists() or not [p for p in rig.trash.rglob("*") if p.is_file()]


# -------------------------------------------------------------------------------- 14. unreadable files


def test_an_unreadable_file_is_reported_not_fatal(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    write(rig.local, "ok.txt", "fine\n")
    write(rig.local, "locked.bin", "secret bytes\n")
    write(rig.local, "also-ok/x.txt", "fine too\n")
    real_open = os.open
    locked = str(rig.local / "locked.bin")

    def open_(path: str | os.PathLike[str], flags: int, *args: int, **kwargs: object) -> int:
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine.os, "open", open_)
    report = rig.full()
    assert report.unreadable == [("locked.bin", "Permission denied")]
    assert report.errors == [] and report.sent == 3
    rig.assert_same(local_exclude=("locked.bin",))
    monkeypatch.undo()
    # Readable again: the next pass sends it (it was never recorded as on the host).
    assert rig.full().sent == 1
    rig.assert_same()


# ------------------------------------------------------------------------------ 12. crafted agent paths

CRAFTED = ["../x", "/ABS", "a/../../x", "", ".", "a//b", "./x", "x/..", STAGING + "/x", "nul\0byte"]


def _everything_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_the_agent_refuses_crafted_paths(rig: Rig, tmp_path: Path) -> None:
    agent = rig.session.agent
    root = str(rig.host)
    rig.host.mkdir(parents=True)
    outside = tmp_path / "outside"
    write(outside, "victim.txt", "do not touch\n")
    write(outside, "inner/secret.txt", "do not read\n")
    (rig.host / "linked").symlink_to(outside)  # a symlinked folder on the host, pointing out
    before_outside = snapshot(outside)
    before_parent = _everything_under(tmp_path / "host")
    absolute_target = str(outside / "victim.txt")
    paths = [p.replace("/ABS", absolute_target) for p in CRAFTED]
    paths += ["linked/victim.txt", "linked/new.txt", "linked/inner/secret.txt"]
    trash = rig.syncer.trash

    for path in paths:
        for op in (
            {"o": "w", "p": path, "e": None, "n": 5, "m": 0, "x": False},
            {"o": "l", "p": path, "e": None, "t": "victim.txt"},
            {"o": "d", "p": path, "e": None},
            {"o": "rm", "p": path, "e": ["f", 13, 0, False, ""]},
            {"o": "rmdir", "p": path, "e": ["d", 0, 0, False, ""]},
        ):
            blob = b"EVIL!" if op["o"] == "w" else b""
            try:
                result, _ = agent.request_with_blob("apply", {"root": root, "trash": trash, "ops": [op]}, blob)
            except RemoteError as exc:
                assert "refusing" in str(exc), (path, op, exc)
            else:
                (outcome,) = result["results"]
                assert outcome[0] in ("refused", "gone"), (path, op, outcome)
        with pytest.raises(RemoteError, match="refusing"):
            agent.request_with_blob("read", {"root": root, "files": [[path, 0, 100]]})
        try:
            _result, blob = agent.request_with_blob("manifest", {"root": root, "only": [path]})
        except RemoteError as exc:
            assert "refusing" in str(exc), (path, exc)
        else:
            assert json.loads(zlib.decompress(blob)) == [], path
    with pytest.raises(RemoteError, match="refusing"):
        agent.request_with_blob("read", {"root": root, "files": [["/etc/passwd", 0, 100]]})
    with pytest.raises(RemoteError, match="refusing"):
        agent.request_with_blob("manifest", {"root": root, "only": ["/etc/passwd"]})
    # The link itself is listed as a link, never followed into.
    _result, blob = agent.request_with_blob("manifest", {"root": root, "only": ["linked"]})
    assert json.loads(zlib.decompress(blob)) == [["linked", "l", 0, 0, False, str(outside)]]
    for bad_trash in ("", "..", "a/b"):
        with pytest.raises(GpuboxError, match="trash must be a plain folder name"):
            agent.request_with_blob("prune_trash", {"trash": bad_trash, "days": 0})

    assert snapshot(outside) == before_outside
    assert _everything_under(tmp_path / "host") == before_parent
    assert not rig.trash.exists()


def test_a_refused_write_leaves_nothing_staged(rig: Rig) -> None:
    """One bad path in a batch fails the batch before anything moves: the staged files go too."""
    root = str(rig.host)
    ops = [
        {"o": "w", "p": "good.txt", "e": None, "n": 4, "m": 1_000_000_000, "x": False},
        {"o": "w", "p": "../evil.txt", "e": None, "n": 4, "m": 1_000_000_000, "x": False},
    ]
    with pytest.raises(RemoteError, match="refusing"):
        rig.session.agent.request_with_blob(
            "apply", {"root": root, "trash": rig.syncer.trash, "ops": ops}, b"goodevil"
        )
    assert not (rig.host / "good.txt").exists()
    assert not (rig.host.parent / "evil.txt").exists()
    assert not (rig.host / STAGING).exists()
    # A size that overruns the blob is refused the same way.
    ops[1] = {"o": "w", "p": "short.txt", "e": None, "n": 400, "m": 1_000_000_000, "x": False}
    with pytest.raises(GpuboxError, match="bad size"):
        rig.session.agent.request_with_blob(
            "apply", {"root": root, "trash": rig.syncer.trash, "ops": ops}, b"goodevil"
        )
    # So is a malformed write (no mtime): the agent answers with an error, and nothing stays staged.
    ops[1] = {"o": "w", "p": "no-mtime.txt", "e": None, "n": 4}
    with pytest.raises(GpuboxError):
        rig.session.agent.request_with_blob(
            "apply", {"root": root, "trash": rig.syncer.trash, "ops": ops}, b"goodevil"
        )
    assert _everything_under(rig.host) == set()


# ------------------------------------------------------------------------------ 2. editor save patterns


def _save_in_place(path: Path, text: str) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(0)
        handle.write(text.encode())


def _save_vim(path: Path, text: str) -> None:
    backup = path.with_name(path.name + "~")
    os.rename(path, backup)
    path.write_text(text)
    backup.unlink()


def _save_jetbrains(path: Path, text: str) -> None:
    temp = path.with_name(path.name + "___jb_tmp___")
    old = path.with_name(path.name + "___jb_old___")
    temp.write_text(text)
    os.rename(path, old)
    os.rename(temp, path)
    old.unlink()


def _save_atomic(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temp.write_text(text)
    os.replace(temp, path)


@pytest.mark.parametrize(
    "save",
    [_save_in_place, _save_vim, _save_jetbrains, _save_atomic],
    ids=["in-place", "vim", "jetbrains", "write-temp-replace"],
)
def test_live_sync_follows_editor_saves(rig: Rig, save: Callable[[Path, str], None]) -> None:
    write(rig.local, "model.py", "v0\n")
    write(rig.local, "pkg/util.py", "u0\n", executable=True)
    with rig.live() as live:
        rig.settle(live)
        for round_ in range(1, 6):
            # Same size and a growing size, in the top folder and below, one after another.
            save(rig.local / "model.py", f"v{round_}\n")
            save(rig.local / "pkg" / "util.py", f"u{round_}\n" * round_)
            if round_ % 2:
                rig.settle(live)
        rig.settle(live)
        assert (rig.host / "model.py").read_text() == "v5\n"
        assert (rig.host / "pkg" / "util.py").read_text() == "u5\n" * 5
    assert not [r for r, _ in rig.reports if r.conflicts or r.errors], rig.reports
    # Whatever temp names the editor used were never left behind on the host (nor in its trash as junk).
    rig.assert_same()


# ------------------------------------------------------------------- 4. renames, chmod, file <-> folder


def test_live_sync_folder_rename_chmod_and_file_folder_swaps(rig: Rig) -> None:
    make_files(rig.local, 60, folder="src/old_name", per_folder=20)
    make_files(rig.local, 100, folder="stay", per_folder=50)
    write(rig.local, "run.sh", "#!/bin/sh\n")
    write(rig.local, "thing", "a file for now\n")
    with rig.live() as live:
        rig.settle(live)
        os.rename(rig.local / "src" / "old_name", rig.local / "src" / "new_name")
        rig.settle(live)
        assert not (rig.host / "src" / "old_name").exists()

        os.chmod(rig.local / "run.sh", 0o755)  # only an attrib event: the mtime stays
        rig.settle(live)
        assert (rig.host / "run.sh").stat().st_mode & 0o777 == 0o755
        os.chmod(rig.local / "run.sh", 0o644)
        rig.settle(live)
        assert (rig.host / "run.sh").stat().st_mode & 0o777 == 0o644

        (rig.local / "thing").unlink()
        write(rig.local, "thing/inside/deeper.txt", "now a folder\n")
        rig.settle(live)
        assert (rig.host / "thing").is_dir()
        subprocess.run(["rm", "-rf", str(rig.local / "thing")], check=True)
        write(rig.local, "thing", "a file again\n")
        rig.settle(live)
        assert (rig.host / "thing").read_text() == "a file again\n"

        # A folder renamed back and forth in quick succession.
        for _ in range(3):
            os.rename(rig.local / "src" / "new_name", rig.local / "src" / "tmp_name")
            os.rename(rig.local / "src" / "tmp_name", rig.local / "src" / "new_name")
        rig.settle(live)
    assert not [r for r, _ in rig.reports if r.conflicts or r.errors], rig.reports
    assert not [p for p in rig.problems if "paused" in p], rig.problems
