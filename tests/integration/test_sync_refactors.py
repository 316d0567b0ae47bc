"""Live sync that follows refactors, the size limit at the moment of reading, and files edited on the host: all
through the real command line (`gpubox sync --watch`, `up --detach`, `status`, `run`, `pull`, `push`) against a
real sshd, a real filesystem and real watchdog.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.cli import host_entry, run_gpubox
from tests.support.hosthome import host_home
from tests.support.sshd import SshServer
from tests.support.terminal import on_a_terminal
from tests.support.trees import assert_same_tree, make_files, same_tree, snapshot, wait_until, write

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning"),
]


@dataclass
class Project:
    local: Path
    host: Path
    home: Path
    """The test host's home as its sessions see it (its ~/.gpubox/trash)."""

    def gpubox(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return run_gpubox(*args, cwd=self.local, timeout=timeout)

    def ok(self, *args: str, timeout: float = 90) -> str:
        result = self.gpubox(*args, timeout=timeout)
        assert result.returncode == 0, (args, result.returncode, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        return result.stdout

    def trashed_files(self) -> dict[str, Path]:
        """Every file in this project's host trash, by its path in the project."""
        found = {}
        for slug in (self.home / ".gpubox" / "trash").glob(f"{self.host.name}-*"):
            # os.walk, not rglob: the live sync may take a file back out of the trash (a move) and drop its emptied
            # batch folder while this looks.
            for folder, _dirs, files in os.walk(slug):
                for name in files:
                    path = Path(folder, name)
                    found[str(path.relative_to(slug)).split("/", 1)[1]] = path
        return found

    def matches(self) -> bool:
        return same_tree(self.local, self.host)


@pytest.fixture
def project(sshd: SshServer, tmp_path: Path) -> Iterator[Project]:
    local = tmp_path / "work"
    local.mkdir()
    host = tmp_path / "host" / f"refactor-{os.urandom(4).hex()}"
    (local / "hosts.toml").write_text(host_entry("box", sshd, accept_new=True, remote_dir=str(host)))
    (local / "gpubox.toml").write_text("[sync]\n")
    made = Project(local, host, host_home())
    try:
        yield made
    finally:
        for slug in (made.home / ".gpubox" / "trash").glob(f"{host.name}-*"):
            shutil.rmtree(slug, ignore_errors=True)


@dataclass
class Watcher:
    """`gpubox sync --watch` in its own process, its output collected line by line."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, needle: str, timeout: float = 30) -> bool:
        return wait_until(lambda: needle in self.text(), timeout)


@pytest.fixture
def watch(project: Project) -> Iterator[Watcher]:
    process = subprocess.Popen(
        [sys.executable, "-m", "gpubox", "sync", "--watch"],
        cwd=project.local,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watcher = Watcher(process)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            watcher.lines.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    try:
        assert watcher.wait_for("watching ", 60), watcher.text()
        yield watcher
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        assert "Traceback" not in watcher.text(), watcher.text()


def _inodes(root: Path, folder: str) -> dict[str, int]:
    return {
        str(p.relative_to(root / folder)): p.stat().st_ino for p in (root / folder).rglob("*") if p.is_file()
    }


# ------------------------------------------------------------------------------------ renames and moves


def test_a_folder_rename_is_a_rename_on_the_host(project: Project, watch: Watcher) -> None:
    """The issue's project: 41 files, a 25-file folder renamed under the watcher. The host renames (the same
    inodes, nothing re-sent, nothing in the trash), nothing pauses, and the next edit goes as always."""
    local, host = project.local, project.host
    make_files(local, 25, folder="models", per_folder=10, size=300)
    make_files(local, 14, folder="src", per_folder=20, size=200)
    assert wait_until(project.matches, 30), watch.text()
    before = _inodes(host, "models")

    os.rename(local / "models", local / "networks")
    assert wait_until(project.matches, 30), watch.text()
    assert _inodes(host, "networks") == before  # renamed in place: the very same files
    assert not (host / "models").exists()
    assert project.trashed_files() == {}
    assert watch.wait_for("25 moved", 10), watch.text()
    assert "held back" not in watch.text() and "paused" not in watch.text()

    # A file moved to another folder and renamed, and a folder moved deeper: still renames.
    one = host / "networks" / "d001" / "f00012.txt"
    inode = one.stat().st_ino
    os.rename(local / "networks" / "d001" / "f00012.txt", local / "src" / "renamed.txt")
    os.makedirs(local / "lib")
    os.rename(local / "networks" / "d002", local / "lib" / "d002")
    assert wait_until(project.matches, 30), watch.text()
    assert (host / "src" / "renamed.txt").stat().st_ino == inode
    assert project.trashed_files() == {}, watch.text()

    # Moved out of the project and back in a few seconds later under a new name: back out of the host's trash.
    outside = local.parent / "parked.txt"
    held = host / "src" / "d000" / "f00000.txt"
    inode = held.stat().st_ino
    os.rename(local / "src" / "d000" / "f00000.txt", outside)
    assert wait_until(lambda: "src/d000/f00000.txt" in project.trashed_files(), 30), watch.text()
    time.sleep(1.5)
    os.rename(outside, local / "src" / "back.txt")
    assert wait_until(project.matches, 30), watch.text()
    assert (host / "src" / "back.txt").stat().st_ino == inode
    assert "src/d000/f00000.txt" not in project.trashed_files()

    # A file whose facts match but whose bytes do not (same size and mtime, other content) is written, not moved.
    a = write(local, "same-facts-a.txt", "aaaa\n")
    assert wait_until(project.matches, 30), watch.text()
    stamp = a.stat().st_mtime_ns
    a.unlink()
    b = local.parent / "same-facts-b.txt"
    b.write_text("bbbb\n")
    os.utime(b, ns=(stamp, stamp))
    os.rename(b, local / "same-facts-b.txt")
    assert wait_until(project.matches, 30), watch.text()
    assert (host / "same-facts-b.txt").read_text() == "bbbb\n"
    assert project.trashed_files()["same-facts-a.txt"].read_text() == "aaaa\n"

    write(local, "src/edit.py", "print('still syncing')\n")
    assert wait_until(project.matches, 30), watch.text()
    assert "conflict" not in watch.text() and "error" not in watch.text()


def test_a_vanished_checkout_is_held_back_under_the_watcher(project: Project, watch: Watcher) -> None:
    local, host = project.local, project.host
    make_files(local, 30, folder="src", per_folder=10)
    make_files(local, 12, folder="vendor/lib", per_folder=20)
    subprocess.run(["git", "init", "-q", str(local / "vendor" / "lib")], check=True)
    assert wait_until(lambda: same_tree(local, host), 30), watch.text()
    before = snapshot(host / "vendor")

    shutil.rmtree(local / "vendor" / "lib")
    assert watch.wait_for("12 deletions held back on box: the checkout at vendor/lib vanished", 30), (
        watch.text()
    )
    write(local, "src/still.py", "x = 1\n")
    assert wait_until(lambda: (host / "src" / "still.py").exists(), 30), watch.text()
    assert snapshot(host / "vendor") == before  # nothing of the checkout was touched

    # Let go from another terminal: the watcher reads the record again and says so.
    assert "12 deleted" in project.ok("sync", "--allow-mass-delete")
    assert watch.wait_for("no deletions held back on box any more", 30), watch.text()
    assert wait_until(project.matches, 30), watch.text()
    assert set(project.trashed_files()) >= {f"vendor/lib/d000/f{i:05d}.txt" for i in range(12)}


# --------------------------------------------------------------------- a wipe under `up`, seen in status


def _status(project: Project) -> dict[str, object]:
    document = json.loads(project.ok("status", "--json"))
    (row,) = [row for row in document["hosts"] if row["name"] == "box"]
    return row["sync"] or {}


def test_a_wipe_under_up_is_held_shown_and_let_go_from_another_terminal(project: Project) -> None:
    local, host = project.local, project.host
    make_files(local, 40, folder="src", per_folder=10)
    write(local, "train.py", "print('v1')\n")
    write(local, ".gitignore", "*.tmp\n")
    up = project.gpubox("up", "box", "--detach", "--no-services", timeout=120)
    assert up.returncode == 0, (up.stdout, up.stderr)
    try:
        assert wait_until(project.matches, 30)
        before = snapshot(host)
        # The whole project but its dot files deleted at once, as an unmounted or wiped folder looks.
        shutil.rmtree(local / "src")
        (local / "train.py").unlink()
        (local / "gpubox.toml").unlink()
        assert wait_until(lambda: _status(project).get("held_deletions") == 42, 30), _status(project)
        sync = _status(project)
        assert "empty" in str(sync["held_reason"])
        text = project.ok("status")
        assert "42 deletions held back on box: it would leave the project folder on the host empty" in text
        assert "`gpubox sync --allow-mass-delete` carries them out" in text
        assert snapshot(host) == before

        # Everything else keeps syncing meanwhile (the hosts.toml edit, a new file).
        write(local, "notes.md", "# what happened\n")
        assert wait_until(lambda: (host / "notes.md").exists(), 30)
        assert _status(project)["held_deletions"] == 42

        released = project.ok("sync", "--allow-mass-delete")
        assert "42 deleted" in released
        assert wait_until(lambda: not _status(project).get("held_deletions"), 30), _status(project)
        assert "held back" not in project.ok("status")
        assert wait_until(project.matches, 30)
        write(local, "next.py", "print('after')\n")
        assert wait_until(lambda: (host / "next.py").exists(), 30)
        assert len(project.trashed_files()) == 42
    finally:
        project.gpubox("down", "box")


# ------------------------------------------------------------------------------------------- the size limit


def test_the_size_limit_holds_when_a_file_is_read(project: Project) -> None:
    """A tracked file grown over the limit stays tracked (the host keeps the copy sent, its deletion is carried)
    and the dry run says so; a file growing while the watcher reads it never reaches the host over the limit."""
    local, host = project.local, project.host
    (local / "gpubox.toml").write_text("[sync]\nmax_file_size_mb = 1\n")
    write(local, "data.bin", os.urandom(500_000))
    project.ok("sync")
    assert (host / "data.bin").stat().st_size == 500_000
    with open(local / "data.bin", "ab") as handle:
        handle.write(os.urandom(2_500_000))
    dry = project.ok("sync", "--dry-run")
    assert "skipped data.bin (3.0 MB, over max_file_size_mb = 1" in dry
    assert "the host keeps the copy sent before, and deleting the file here still deletes it there" in dry
    assert "0 sent" in project.ok("sync")
    assert (host / "data.bin").stat().st_size == 500_000
    (local / "data.bin").unlink()
    assert "1 deleted" in project.ok("sync")
    assert not (host / "data.bin").exists()

    process = subprocess.Popen(
        [sys.executable, "-m", "gpubox", "sync", "--watch"],
        cwd=local,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watcher = Watcher(process)
    threading.Thread(
        target=lambda: [watcher.lines.append(line.rstrip("\n")) for line in process.stdout or ()], daemon=True
    ).start()
    largest = [0]
    done = threading.Event()

    def measure() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError):
                largest[0] = max(largest[0], (host / "grows.bin").stat().st_size)
            time.sleep(0.002)

    try:
        assert watcher.wait_for("watching ", 60), watcher.text()
        meter = threading.Thread(target=measure)
        meter.start()
        # Written in place, in pieces, the way `head -c 300M /dev/urandom > big.bin` is.
        with open(local / "grows.bin", "wb") as handle:
            for _ in range(48):
                handle.write(os.urandom(64 * 1024))
                handle.flush()
                time.sleep(0.005)
        assert watcher.wait_for("! skipped grows.bin (", 30), watcher.text()
        assert "over max_file_size_mb = 1; list it in [sync] include to send it" in watcher.text()
        done.set()
        meter.join()
        assert largest[0] <= 1024 * 1024, largest[0]
        (local / "grows.bin").unlink()
        assert wait_until(lambda: not (host / "grows.bin").exists(), 30), watcher.text()
    finally:
        done.set()
        process.send_signal(signal.SIGINT)
        process.wait(30)
    assert "Traceback" not in watcher.text()
    assert not list((host / ".gpubox-staging").glob("*")) if (host / ".gpubox-staging").exists() else True


# -------------------------------------------------------------------------------- edits made on the host


def test_files_edited_on_the_host_are_named_and_settled_either_way(project: Project) -> None:
    local, host = project.local, project.host
    write(local, "train.py", "print('local v1')\n")
    write(local, "nb.ipynb", '{"cells": [], "v": "local 1"}\n')
    write(local, "both.ipynb", '{"cells": [], "v": "both 1"}\n')
    project.ok("sync")

    # Edited on the host (through Jupyter, say): `run` says so, and runs the host's copy.
    write(host, "train.py", "print('edited on the host')\n")
    run = project.ok("run", "-f", "--", "python3", "train.py", timeout=120)
    assert "edited on the host" in run
    assert (
        "! 1 file changed on box since gpubox sent them, so sync leaves them alone; the run uses the "
        "host's copy: train.py" in run
    )
    assert (
        "`gpubox pull train.py` brings the host's copy home; `gpubox push train.py` sends yours over it"
        in run
    )

    # `pull PATH` brings the host's copy home (local had not changed: nothing to keep aside) and sync agrees.
    pulled = project.ok("pull", "train.py")
    assert pulled.startswith("pull box: 1 fetched"), pulled
    assert (local / "train.py").read_text() == "print('edited on the host')\n"
    assert not list(local.glob("train.py.gpubox-local-*"))
    assert "0 sent" in project.ok("sync", "--verify")

    # Both sides edit it; `push` makes local win, and the host's copy waits in its trash.
    write(host, "train.py", "print('host v3')\n")
    write(local, "train.py", "print('local v3')\n")
    pushed = project.ok("push", "train.py")
    assert pushed.startswith("push box: 1 sent"), pushed
    assert (host / "train.py").read_text() == "print('local v3')\n"
    assert project.trashed_files()["train.py"].read_text() == "print('host v3')\n"
    assert not list(host.glob("train.py.gpubox-conflict-*"))

    # Notebooks made or edited in Jupyter on the host come home with a plain `pull`; when both sides changed,
    # local's copy is kept aside.
    write(host, "new.ipynb", '{"cells": [], "v": "made on the host"}\n')
    write(host, "nb.ipynb", '{"cells": [], "v": "host 2"}\n')
    write(host, "both.ipynb", '{"cells": [], "v": "host 2"}\n')
    write(local, "both.ipynb", '{"cells": [], "v": "local 2"}\n')
    write(host, "scratch.txt", "not a notebook: stays on the host\n")
    default = project.ok("pull")
    assert "3 notebooks from the host" in default, default
    for name in ("new.ipynb", "nb.ipynb", "both.ipynb"):
        assert f"notebook from the host: {name}" in default
        assert (local / name).read_text() == (host / name).read_text()
    (kept,) = local.glob("both.ipynb.gpubox-local-*")
    assert kept.read_text() == '{"cells": [], "v": "local 2"}\n'
    assert not (local / "scratch.txt").exists()
    again = project.ok("pull")
    assert again.startswith("pull box: 0 fetched") and "notebook" not in again

    # Sync now sends only local's kept-aside copy: no conflict, nothing sent back.
    synced = project.ok("sync")
    assert "1 sent" in synced and "conflict" not in synced, synced
    assert_same_tree(local, host, host_exclude=("scratch.txt",))


# ----------------------------------------------------------------------- a one-shot sync on a terminal


def test_a_one_shot_sync_on_a_terminal_shows_its_bar_and_asks_before_a_wipe(project: Project) -> None:
    local = project.local
    make_files(local, 30, folder="src", per_folder=10)
    code, shown, _ = on_a_terminal("sync", cwd=local, answer=b"y\n")
    assert code == 0 and "sync box: 36 sent" in shown, shown
    assert "━" in shown  # the bar, drawn once there was something to send
    assert project.matches()

    shutil.rmtree(local / "src")
    (local / "gpubox.toml").unlink()
    code, shown, _ = on_a_terminal("sync", cwd=local, answer=b"y\n")
    assert code == 0, shown
    assert "31 deletions held back on the host: it would leave the project folder on the host empty" in shown
    assert "sync box: 0 sent (0 B), 31 deleted" in shown, shown  # 30 files and gpubox.toml (and the folders)
    assert project.matches() and len(project.trashed_files()) == 31
