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

from gpubox.actions.sync import wipe_guard
from gpubox.config import HostConfig, ProjectConfig, SyncConfig
from gpubox.errors import GpuboxError, RemoteError
from gpubox.remote.connection import Backoff
from gpubox.remote.session import HostSession, connect_host
from gpubox.sync import engine
from gpubox.sync.engine import BatchProgress, Syncer, SyncReport
from gpubox.sync.scan import Entry
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

pytestmark = [
    pytest.mark.integration,
    # watchdog re-adds a watch for a folder it already watches when git recreates it; harmless, and noisy.
    pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning"),
]

OUTPUTS = ("/runs", "/checkpoints", "/logs", "/outputs")
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

    def assert_same(self, *, local_exclude: tuple[str, ...] = (), host_exclude: tuple[str, ...] = ()) -> None:
        assert not (self.host / STAGING).exists(), (
            f"a staging folder was left on the host: {sorted(os.listdir(self.host / STAGING))[:5]}"
        )
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
        assert live.wait_idle(5), ([why for _, why in self.reports][-10:], self.problems[-5:])
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
            guard=wipe_guard(project.sync),
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

    report = rig.full(verify=True)

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
    again = rig.full(verify=True)
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
        host_exclude=(
            *host_extra,
            "host-only-edit.txt",
            "plain.txt",
            "same-new.txt.gpubox-conflict-*",
            "pkg",
        ),
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

    # Only this patch is undone below: monkeypatch.undo() would also undo the fixtures' isolated state
    # folder, and the next pass would write to the developer's real one.
    with monkeypatch.context() as patch:
        patch.setattr(engine.os, "open", open_)
        report = rig.full()
        assert report.unreadable == [("locked.bin", "Permission denied")]
        assert report.errors == [] and report.sent == 3
        rig.assert_same(local_exclude=("locked.bin",))
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
                result, _ = agent.request_with_blob(
                    "apply", {"root": root, "trash": trash, "ops": [op]}, blob
                )
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


def test_the_trash_takes_a_path_twice_within_one_second(rig: Rig) -> None:
    """A file trashed, then a folder of that name trashed in a batch with the same UTC second stamp."""
    write(rig.local, "thing", "a file\n")
    rig.full()
    (rig.local / "thing").unlink()
    write(rig.local, "thing/inner.txt", "in the folder\n")
    rig.syncer.paths(["thing"])
    first = [p for p in rig.trash.rglob("thing") if p.is_file()]
    assert [p.read_text() for p in first] == ["a file\n"]
    # Whatever second the next batch is stamped with, its trash folder already holds a file named "thing".
    now = time.time()
    for offset in range(6):
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now + offset))
        if not (rig.trash / stamp / "thing").exists():
            write(rig.trash / stamp, "thing", "blocker\n")
    subprocess.run(["rm", "-rf", str(rig.local / "thing")], check=True)
    write(rig.local, "thing", "a file again\n")
    report = rig.syncer.paths(["thing"])
    assert (report.errors, report.conflicts) == ([], [])
    assert [p.read_text() for p in rig.trash.rglob("inner.txt")] == ["in the folder\n"]
    rig.assert_same()


# ----------------------------------------------------------------------------- 3. git branch switch


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def test_the_flush_barrier_covers_every_change_saved_before_it(rig: Rig) -> None:
    """`LiveSync.flush` (what `gpubox run` and `gpubox sync` ask of `gpubox up`): whatever was saved before it was
    called is on the host when it returns, though the watcher, left alone, would wait seconds for a quiet tree."""
    write(rig.local, "gone.txt", "soon deleted\n")
    slow = WatchSettings(quiet_seconds=30.0, max_wait_seconds=60.0, rescan_seconds=3600.0)
    with rig.live(slow) as live:
        for round_ in range(6):
            write(rig.local, "model.py", f"v{round_}\n")
            write(rig.local, f"new-{round_}/deep/data.txt", f"data {round_}\n")  # a folder not watched yet
            if round_ == 3:
                (rig.local / "gone.txt").unlink()
            outcome = live.flush(timeout=60)
            assert not isinstance(outcome, str), outcome
            assert (rig.host / "model.py").read_text() == f"v{round_}\n"
            assert (rig.host / f"new-{round_}/deep/data.txt").read_text() == f"data {round_}\n"
            assert (rig.host / "gone.txt").exists() == (round_ < 3)
            assert outcome.sent >= 2 and not outcome.errors, outcome
        # Nothing changed: the barrier answers at once, having sent nothing.
        again = live.flush(timeout=60)
        assert not isinstance(again, str) and again.sent == again.deleted == 0
        rig.assert_same()
    # Its marker file is neither sent nor left behind.
    assert not list(rig.local.glob(".gpubox-flush-*")) and not list(rig.host.glob(".gpubox-flush-*"))


def test_the_flush_barrier_does_not_vouch_for_files_the_host_refused(rig: Rig, tmp_path: Path) -> None:
    """A file the host refused (one by one, not the whole batch) is not there: until a full pass gets it there,
    the barrier says so, and the command asking syncs on its own (and reports what fails)."""
    write(rig.local, "sub/a.txt", "a\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    with rig.live(WatchSettings(rescan_seconds=3600.0)) as live:
        rig.settle(live)
        # The host's sub/ becomes a link leading out of the project: a file sent into it is refused.
        for child in (rig.host / "sub").iterdir():
            child.unlink()
        (rig.host / "sub").rmdir()
        (rig.host / "sub").symlink_to(outside)
        write(rig.local, "sub/b.txt", "b\n")
        assert wait_until(lambda: any(report.errors for report, _why in rig.reports), 20), rig.reports
        outcome = live.flush(timeout=30)
        assert isinstance(outcome, str) and "unsent" in outcome, outcome
        assert not (outside / "b.txt").exists()


@pytest.mark.parametrize("pass_kind", ["paths", "full"])
def test_a_file_replaced_while_the_scan_passes_it_is_sent_not_forgotten(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, pass_kind: str
) -> None:
    """git replaces a file by unlinking it and writing a new one. A scan that passes in between misses it; by the
    time the pass plans, it is back. It must go as an edit of the tracked file, not be dropped from tracking (the
    next pass would then send it as new, and the host's copy would be set aside as a conflict)."""
    write(rig.local, "src/a.py", "old\n")
    write(rig.local, "src/b.py", "b\n")
    rig.full()
    path = rig.local / "src" / "a.py"
    real_scan_path, real_scan_tree = engine.scan_path, engine.scan_tree

    def replace_during(scan: Callable[..., object]) -> Callable[..., object]:
        def scanned_while_replaced(*args: object, **kwargs: object) -> object:
            path.unlink()
            try:
                return scan(*args, **kwargs)
            finally:
                path.write_text("new from the other branch\n")

        return scanned_while_replaced

    with monkeypatch.context() as patch:
        if pass_kind == "paths":
            patch.setattr(engine, "scan_path", replace_during(real_scan_path))
            first = rig.syncer.paths(["src/a.py"])
        else:
            patch.setattr(engine, "scan_tree", replace_during(real_scan_tree))
            first = rig.full()
    second = rig.syncer.paths(["src/a.py"])

    assert first.conflicts == [] and second.conflicts == [], (first.conflicts, second.conflicts)
    assert first.errors == [] and second.errors == []
    assert rig.syncer.ancestor()["src/a.py"].size == len("new from the other branch\n")
    rig.assert_same()


def test_live_sync_follows_a_git_branch_switch(rig: Rig) -> None:
    repo = rig.local
    _git(repo, "init", "-q", "-b", "main")
    make_files(repo, 600, folder="src", per_folder=100)
    write(repo, "README.md", "main\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "main")
    _git(repo, "checkout", "-q", "-b", "feature")
    files = sorted((repo / "src").rglob("*.txt"))
    for path in files[:150]:
        path.write_text(path.read_text() + "changed on feature\n")
    for path in files[150:300]:
        path.unlink()
    make_files(repo, 200, folder="feature_only", per_folder=40)
    write(repo, "tools/run.sh", "#!/bin/sh\n", executable=True)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "feature")
    _git(repo, "checkout", "-q", "main")

    with rig.live() as live:
        rig.settle(live)
        _git(repo, "checkout", "-q", "feature")
        rig.settle(live, 30)
        assert (rig.host / "tools" / "run.sh").stat().st_mode & 0o100
        assert not (rig.host / "src" / files[200].relative_to(repo / "src")).exists()
        _git(repo, "checkout", "-q", "main")
        rig.settle(live, 30)
        assert not (rig.host / "feature_only").exists()
    assert not (rig.host / ".git").exists()
    assert not [r for r, _ in rig.reports if r.conflicts or r.errors or r.kept_on_host]
    assert not [p for p in rig.problems if "paused" in p], rig.problems


# ------------------------------------------------------------------------------------ 6. ignore rules


def test_nested_gitignore_gpuboxignore_and_a_rescan_when_one_changes(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(ignore=("*.tmpdata",))
    local = rig.local
    write(local, ".gitignore", "*.log\n/build/\ndata/*.csv\n!data/keep.csv\nsecret_dir/\n")
    write(local, "app/.gitignore", "!important.log\n*.cache\n")
    write(local, ".gpuboxignore", "!data/small.csv\n")
    for rel in (
        "top.log",
        "app/debug.log",
        "app/important.log",
        "app/x.cache",
        "build/out.o",
        "app/build/kept.txt",  # /build/ is anchored at the root
        "data/big.csv",
        "data/keep.csv",
        "data/small.csv",
        "secret_dir/a.txt",
        "notes.tmpdata",
        "app/main.py",
        "venv/lib.py",
        "node_modules/pkg/index.js",
        "pkg/__pycache__/m.cpython-311.pyc",
        ".ipynb_checkpoints/nb.ipynb",
    ):
        write(local, rel, rel + "\n")
    ignored = (
        "top.log",
        "app/debug.log",
        "app/x.cache",
        "/build",
        "data/big.csv",
        "secret_dir",
        "notes.tmpdata",
        "venv",
        "node_modules",
        ".ipynb_checkpoints",
    )
    with rig.live() as live:
        rig.settle(live, local_exclude=ignored)
        for present in ("app/important.log", "app/build/kept.txt", "data/keep.csv", "data/small.csv"):
            assert (rig.host / present).exists(), present

        # Stop ignoring *.log: the change of a rule file rescans at once, and the logs go up.
        write(local, ".gitignore", "/build/\ndata/*.csv\n!data/keep.csv\nsecret_dir/\n")
        rig.settle(live, local_exclude=ignored[2:])
        assert any(why == ".gitignore changed" for _, why in rig.reports), [w for _, w in rig.reports]
        assert (rig.host / "top.log").read_text() == "top.log\n"

        # A nested rule file counts too; a file it now ignores stays on the host, untracked, never deleted.
        write(local, "app/.gitignore", "main.py\n")
        wait_until(lambda: any(why == "app/.gitignore changed" for _, why in rig.reports))
        assert live.wait_idle(10)
        assert (rig.host / "app" / "main.py").exists()
        assert (rig.host / "app" / "x.cache").read_text() == "app/x.cache\n"
        rig.settle(
            live,
            local_exclude=(*ignored[3:], "app/main.py"),
            host_exclude=("app/main.py",),
        )
    assert rig.syncer.full().planned == []


# ---------------------------------------------------------------------------------- command-line rigs


@dataclass
class CliProject:
    local: Path
    host: Path
    home: Path

    def gpubox(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_gpubox(*args, cwd=self.local, timeout=60)

    def trash_batches(self) -> list[Path]:
        return sorted(
            batch
            for slug in (self.home / ".gpubox" / "trash").glob(f"{self.host.name}-*")
            for batch in slug.iterdir()
        )


@pytest.fixture
def cli_project(sshd: SshServer, tmp_path: Path) -> Iterator[CliProject]:
    """A project folder whose hosts.toml names the test sshd as "box", with its own remote folder."""
    local = tmp_path / "cli-local"
    local.mkdir()
    # A name no other test uses: the host's trash folders are found (and removed) by it.
    host = tmp_path / "cli-host" / f"proj-{os.urandom(4).hex()}"
    (local / "hosts.toml").write_text(host_entry("box", sshd, accept_new=True, remote_dir=str(host)))
    (local / "gpubox.toml").write_text("[sync]\n")
    project = CliProject(local, host, sshd.home)
    try:
        yield project
    finally:
        for slug in (project.home / ".gpubox" / "trash").glob(f"{host.name}-*"):
            subprocess.run(["rm", "-rf", str(slug)], check=False)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


# ------------------------------------------------------------------------- 7. outputs and gpubox pull


def test_outputs_stay_on_the_host_and_pull_brings_them_back(cli_project: CliProject) -> None:
    local, host = cli_project.local, cli_project.host
    write(local, "train.py", "print('train')\n")
    write(local, "runs/local-only/notes.txt", "a local run folder\n")
    write(local, "deep/logs/keep.txt", "outputs are anchored at the root: this one is code\n")
    assert "sync box: 6 sent" in _ok(cli_project.gpubox("sync"))
    assert not (host / "runs").exists()
    assert (host / "deep" / "logs" / "keep.txt").exists()

    # The host's training run writes outputs; local deletes its own folder of that name.
    write(host, "runs/exp1/metrics.json", '{"loss": 0.5}\n')
    write(host, "runs/exp1/model.bin", os.urandom(300_000))
    write(host, "runs/exp1/run.sh", "#!/bin/sh\n", executable=True)
    write(host, "checkpoints/ckpt-1", b"\x00" * 1000)
    subprocess.run(["rm", "-rf", str(local / "runs")], check=True)
    write(local, "train.py", "print('train v2')\n")
    out = _ok(cli_project.gpubox("sync"))
    assert "1 sent" in out and "0 deleted" in out
    host_outputs = snapshot(host, exclude=("train.py", "deep", "hosts.toml", "gpubox.toml"))
    assert set(host_outputs) >= {"runs/exp1/metrics.json", "runs/exp1/model.bin", "checkpoints/ckpt-1"}

    first = _ok(cli_project.gpubox("pull"))
    assert first.startswith("pull box: 4 fetched"), first
    assert snapshot(local / "runs") == snapshot(host / "runs")
    assert snapshot(local / "checkpoints") == snapshot(host / "checkpoints")
    assert (local / "runs" / "exp1" / "run.sh").stat().st_mode & 0o100
    second = _ok(cli_project.gpubox("pull"))
    assert second.startswith("pull box: 0 fetched (0.0 MB), 4 unchanged"), second

    # The host writes newer metrics; local edited its copy later still: local's is kept aside, not lost.
    write(host, "runs/exp1/metrics.json", '{"loss": 0.1}\n')
    os.utime(host / "runs" / "exp1" / "metrics.json", (time.time() - 60, time.time() - 60))
    write(local, "runs/exp1/metrics.json", '{"loss": "my local edit"}\n')
    # ...and a local copy older than the host's is simply replaced.
    write(host, "checkpoints/ckpt-1", b"\x01" * 2000)
    os.utime(local / "checkpoints" / "ckpt-1", (time.time() - 3600, time.time() - 3600))
    third = _ok(cli_project.gpubox("pull", "runs/exp1", "checkpoints"))
    assert third.startswith("pull box: 2 fetched"), third
    (kept,) = (local / "runs" / "exp1").glob("metrics.json.gpubox-local-*")
    assert kept.read_text() == '{"loss": "my local edit"}\n'
    assert f"kept your local copy aside: runs/exp1/metrics.json -> {kept.name}" in third
    assert not list((local / "checkpoints").glob("*.gpubox-local-*"))
    assert snapshot(local / "runs", exclude=("*.gpubox-local-*",)) == snapshot(host / "runs")
    assert snapshot(local / "checkpoints") == snapshot(host / "checkpoints")
    assert not [p for p in local.rglob("*") if ".gpubox-pull-" in p.name]

    # Pulled outputs never go back up; the host's outputs are still there after all of it.
    assert "0 sent" in _ok(cli_project.gpubox("sync", "--verify"))
    assert_same_tree(local, host, local_exclude=OUTPUTS, host_exclude=OUTPUTS)
    assert (host / "runs" / "exp1" / "model.bin").stat().st_size == 300_000


# --------------------------------------------------------------------------------------- 9. wipe guard


def test_deleting_most_files_goes_a_wipe_is_held_back_then_allowed_into_the_trash(
    cli_project: CliProject,
) -> None:
    local, host = cli_project.local, cli_project.host
    make_files(local, 40, folder="src", per_folder=10)
    write(local, "train.py", "print('train')\n")
    _ok(cli_project.gpubox("sync"))
    assert_same_tree(local, host)
    before = snapshot(host)

    # 30 of 43 files deleted on purpose: everyday work (they go to the host's trash, recoverable).
    doomed = sorted((local / "src").rglob("*.txt"))[:30]
    for path in doomed:
        path.unlink()
    assert "30 deleted" in _ok(cli_project.gpubox("sync"))
    assert_same_tree(local, host)
    (batch,) = cli_project.trash_batches()
    trashed = {rel: fact for rel, fact in snapshot(batch).items() if fact[0] == "f"}
    assert trashed == {rel: before[rel] for rel in (str(p.relative_to(local)) for p in doomed)}

    # Everything but dot files and gpubox's config gone at once: a wipe, held back; the rest still goes.
    before = snapshot(host)
    for child in local.iterdir():
        if not child.name.startswith(".") and child.name not in ("hosts.toml", "gpubox.toml"):
            subprocess.run(["rm", "-rf", str(child)], check=True)
    write(local, ".gitignore", "*.tmp\n")
    held = cli_project.gpubox("sync")
    assert held.returncode == 1, (held.stdout, held.stderr)
    assert "Traceback" not in held.stderr
    assert "1 sent" in held.stdout and "11 deletions held back" in held.stdout, held.stdout
    line = held.stderr.strip()
    assert line.startswith("gpubox: 11 deletions held back on the host: it would leave the project folder on")
    assert line.endswith("`gpubox sync --allow-mass-delete` carries them out (into the host's trash)"), line
    assert (host / ".gitignore").read_text() == "*.tmp\n"
    assert {k: v for k, v in snapshot(host).items() if k != ".gitignore"} == before
    assert len(cli_project.trash_batches()) == 1
    # The dry run says the same, and what would be held.
    dry = _ok(cli_project.gpubox("sync", "--dry-run"))
    assert "delete train.py (held back)" in dry and "11 deletions held back" in dry

    allowed = _ok(cli_project.gpubox("sync", "--allow-mass-delete"))
    assert "11 deleted" in allowed
    assert_same_tree(local, host)
    assert len(cli_project.trash_batches()) == 2

    # A trash batch older than trash_days (7 by default) is pruned by the next sync that connects.
    month_ago = time.time() - 30 * 86400
    for old in cli_project.trash_batches():
        os.utime(old, (month_ago, month_ago))
    write(local, "new.txt", "something to send\n")
    _ok(cli_project.gpubox("sync"))
    assert cli_project.trash_batches() == []
    assert_same_tree(local, host)


# -------------------------------------------------------------------------------- 13. dry run and JSON

REPORT_KEYS = {
    "host",
    "dry_run",
    "sent",
    "bytes_sent",
    "deleted",
    "moved",
    "held_deletions",
    "held_reason",
    "already_there",
    "seconds",
    "conflicts",
    "host_changed",
    "kept_on_host",
    "errors",
    "held_back",
    "too_large",
    "outside_links",
    "unreadable",
}


def test_dry_run_sends_nothing_and_json_is_one_document(cli_project: CliProject) -> None:
    local, host = cli_project.local, cli_project.host
    write(local, "a.txt", "a\n")
    write(local, "pkg/b.py", "b\n")
    write(local, "old.txt", "to be deleted\n")
    write(local, ".env", "SECRET=1\n")

    dry = _ok(cli_project.gpubox("sync", "--dry-run"))
    lines = dry.splitlines()
    assert "send   a.txt" in lines and "send   pkg/" in lines and "send   pkg/b.py" in lines
    assert "dry run: 6 changes for box, nothing was sent" in lines
    assert "held back 1 secret file(s): .env" in dry
    assert not host.exists()  # not even the project folder was made

    document = json.loads(_ok(cli_project.gpubox("sync", "--json")))
    assert set(document) == REPORT_KEYS
    assert document["host"] == "box" and document["dry_run"] is False
    assert (document["sent"], document["deleted"], document["held_back"]) == (6, 0, [".env"])
    assert document["bytes_sent"] == sum(
        (local / p).stat().st_size for p in ("a.txt", "pkg/b.py", "old.txt")
    ) + sum((local / p).stat().st_size for p in ("hosts.toml", "gpubox.toml"))
    assert_same_tree(local, host, local_exclude=(".env",))

    (local / "old.txt").unlink()
    write(local, "a.txt", "a changed\n")
    before = snapshot(host)
    planned = json.loads(_ok(cli_project.gpubox("sync", "--dry-run", "--json")))
    assert set(planned) == REPORT_KEYS | {"would_send", "would_move", "would_delete"}
    assert (planned["dry_run"], planned["would_send"], planned["would_delete"]) == (
        True,
        ["a.txt"],
        ["old.txt"],
    )
    assert planned["sent"] == 0 and planned["deleted"] == 0
    assert snapshot(host) == before

    document = json.loads(_ok(cli_project.gpubox("sync", "--json")))
    assert (document["sent"], document["deleted"]) == (1, 1)
    assert_same_tree(local, host, local_exclude=(".env",))


# ------------------------------------------------------------------------- 10. link killed mid-batch


def test_a_link_killed_in_the_middle_of_a_batch_recovers(rig: Rig, sshd: SshServer) -> None:
    # 6,500 files: four apply batches of at most 2,000 ops, three of them in flight at once.
    make_files(rig.local, 6500, size=1500, per_folder=500)
    write(rig.local, "big/blob.bin", os.urandom(3_000_000))
    killed = threading.Event()
    batches_done: list[BatchProgress] = []

    def progress(step: BatchProgress) -> None:
        batches_done.append(step)
        if not killed.is_set():
            # The first batch is acknowledged; the next ones are on the wire or being applied on the host.
            killed.set()
            threading.Thread(target=sshd.kill).start()

    with pytest.raises(GpuboxError):
        rig.full(progress=progress)
    assert killed.is_set() and batches_done[0].files_done < batches_done[0].files_total
    wait_until(lambda: sshd.proc is not None and sshd.proc.poll() is not None)
    # Whatever the host got so far: no partial file anywhere, each one is complete or absent.
    partial = snapshot(rig.host, exclude=(STAGING,))
    mine = snapshot(rig.local)
    assert all(mine.get(rel) == fact for rel, fact in partial.items()), (
        "a partial file is visible on the host"
    )
    assert len(partial) < len(mine)

    sshd.start()
    rig.session.reconnect(Backoff(initial=0.05, maximum=0.5, deadline=30))
    report = rig.full(verify=True)
    assert report.errors == [] and report.conflicts == [] and report.kept_on_host == []
    # What was acknowledged is not sent again; what arrived but was never acknowledged is recognised as there.
    assert report.sent + report.in_sync == len(mine) - batches_done[-1].files_done
    rig.assert_same()
    assert rig.full(verify=True).planned == []


# ------------------------------------------------------------------------------- 11. inotify overflow

QUEUE_LIMIT = Path("/proc/sys/fs/inotify/max_queued_events")


def _can_lower_inotify_queue() -> bool:
    return os.geteuid() == 0 and QUEUE_LIMIT.exists() and os.access(QUEUE_LIMIT, os.W_OK)


@pytest.mark.parametrize("how", ["kernel", "log-record"])
def test_an_inotify_overflow_triggers_a_rescan(rig: Rig, how: str) -> None:
    """For real where the kernel's queue can be lowered (root); else through the record watchdog logs then."""
    if how == "kernel" and not _can_lower_inotify_queue():
        pytest.skip("lowering fs.inotify.max_queued_events needs root; the log-record case covers the path")
    make_files(rig.local, 50, folder="before")
    settings = WatchSettings(rescan_seconds=3600)
    if how == "kernel":
        # The queue length is fixed when an inotify instance is made: lower it just while the observer starts.
        saved = QUEUE_LIMIT.read_text()
        QUEUE_LIMIT.write_text("16\n")
        try:
            live_context = rig.live(settings)
            live = live_context.__enter__()
        finally:
            QUEUE_LIMIT.write_text(saved)
        try:
            rig.settle(live)
            # Thousands of files in one burst from one process (touch): ~9,000 events within milliseconds,
            # far more than the queue holds before watchdog's reader thread gets to read it.
            burst = rig.local / "burst"
            burst.mkdir()
            subprocess.run(["touch", *(f"file-{i:05d}.txt" for i in range(3000))], cwd=burst, check=True)
            rig.settle(live, 30)
        finally:
            live_context.__exit__(None, None, None)
    else:
        with rig.live(settings) as live:
            rig.settle(live)
            make_files(rig.local, 300, folder="burst", per_folder=100)
            # What watchdog's inotify reader logs when the kernel says IN_Q_OVERFLOW.
            logging.getLogger("watchdog.observers.inotify_c").warning(
                "Inotify queue overflowed; filesystem events were lost"
            )
            rig.settle(live, 30)
    assert any(why == "inotify queue overflowed" for _, why in rig.reports), [w for _, w in rig.reports]
    rig.assert_same()


def test_pull_reports_what_is_in_the_way_and_fetches_the_rest(rig: Rig) -> None:
    from gpubox.sync.pull import pull

    write(rig.host, "runs/a.txt", "fine\n")
    write(rig.host, "runs/clash", "a host file where local has a folder\n")
    write(rig.host, "runs/sub/inner.txt", "a host folder where local has a file\n")
    write(rig.local, "runs/clash/mine.txt", "my folder\n")
    write(rig.local, "runs/sub", "my file\n")
    report = pull(rig.session, rig.syncer.project)
    assert report.fetched == 1 and (rig.local / "runs" / "a.txt").read_text() == "fine\n"
    assert sorted(error.split(":")[0] for error in report.errors) == [
        "runs/clash",
        "runs/sub",
        "runs/sub/inner.txt",
    ]
    assert (rig.local / "runs" / "clash" / "mine.txt").read_text() == "my folder\n"
    assert (rig.local / "runs" / "sub").read_text() == "my file\n"
    assert not [p for p in rig.local.rglob("*") if ".gpubox-pull-" in p.name]


# ------------------------------------------------------------------------- the folder index (no-op passes)


def _one_shot(rig: Rig, **sync: object) -> Syncer:
    """A Syncer as a new `gpubox sync` process makes it: nothing of the ancestor in memory yet."""
    project = rig.syncer.project
    if sync:
        project = ProjectConfig(root=project.root, path=None, sync=SyncConfig(**sync))  # type: ignore[arg-type]
    return Syncer(rig.session, project, guard=wipe_guard(project.sync), trash_days=project.sync.trash_days)


def _no_op_from_the_index(rig: Rig, **sync: object) -> SyncReport:
    syncer = _one_shot(rig, **sync)
    report = syncer.full()
    assert syncer._ancestor is None, "the no-op pass read the ancestor: the folder index was not used"
    assert report.sent == report.deleted == 0 and report.errors == []
    return report


def _pass_that_decides(rig: Rig, **sync: object) -> SyncReport:
    syncer = _one_shot(rig, **sync)
    report = syncer.full()
    assert syncer._ancestor is not None, "the folder index was trusted where something had changed"
    assert report.errors == [] and report.conflicts == []
    return report


NOT_SENT = (".env", "out")


def test_a_no_op_pass_trusts_the_folder_index_and_any_change_is_still_found(rig: Rig) -> None:
    local = rig.local
    write(local, "src/pkg/a.py", "a\n")
    write(local, "src/pkg/deep/b.py", "b\n")
    write(local, "src/pkg/c.log", "log\n")
    write(local, ".env", "TOKEN=1\n")
    (local / "src" / "link").symlink_to("pkg/a.py")
    (local / "out").symlink_to("/etc/hostname")
    first = rig.full()
    assert first.sent > 0 and first.held_back == [".env"]

    report = _no_op_from_the_index(rig)
    assert report.held_back == [".env"] and report.outside_links == [("out", "/etc/hostname")]

    # Rewritten with its old size and mtime: rsync's quick check (and gpubox's) does not send it, but its folder
    # is decided again (ctime), and the index taken anew.
    b = local / "src" / "pkg" / "deep" / "b.py"
    before = b.stat()
    b.write_text("B\n")
    os.utime(b, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert _pass_that_decides(rig).sent == 0
    _no_op_from_the_index(rig)
    write(local, "src/pkg/deep/b.py", "b\n")  # back as it was, for the comparisons below
    rig.full()

    write(local, "src/pkg/deep/new.py", "new\n")
    assert _pass_that_decides(rig).sent == 1
    rig.assert_same(local_exclude=NOT_SENT)
    _no_op_from_the_index(rig)

    (local / "src" / "pkg" / "a.py").unlink()
    assert _pass_that_decides(rig).deleted == 1
    rig.assert_same(local_exclude=NOT_SENT)
    _no_op_from_the_index(rig)

    # A rule file two folders up: the folder of c.log is listed as before, and still decided again.
    write(local, ".gitignore", "*.log\n")
    _pass_that_decides(rig)
    assert "src/pkg/c.log" not in _one_shot(rig).ancestor()
    assert (rig.host / "src" / "pkg" / "c.log").exists()  # untracked, never deleted on the host
    _no_op_from_the_index(rig)

    # Other [sync] settings: another index.
    _pass_that_decides(rig, ignore=("data/",))
    _no_op_from_the_index(rig, ignore=("data/",))

    _pass_that_decides(rig)  # and back: the index of the settings before is gone
    _no_op_from_the_index(rig)

    # The ancestor changed by someone else (a pull, another gpubox): its generation moved.
    facts = (local / "src" / "pkg" / "deep" / "b.py").stat()
    rig.syncer.adopt({"src/pkg/deep/b.py": Entry("f", facts.st_size, facts.st_mtime_ns, False, "")})
    _pass_that_decides(rig)
    rig.assert_same(local_exclude=(*NOT_SENT, "src/pkg/c.log"), host_exclude=("src/pkg/c.log",))
    _no_op_from_the_index(rig)


def test_no_index_is_taken_while_the_host_is_not_what_the_ancestor_says(rig: Rig) -> None:
    local = rig.local
    write(local, "keep/a.txt", "a\n")
    for index in range(10):
        write(local, f"bulk/f{index}.txt", f"{index}\n")
    rig.full()
    for index in range(10):
        (local / "bulk" / f"f{index}.txt").unlink()
    held = _one_shot(rig, max_delete_count=5).full()
    assert len(held.held_deletions) == 10
    # Deletions held back: the ancestor still has them, so no index may say "nothing to do".
    _pass_that_decides(rig, max_delete_count=5)
