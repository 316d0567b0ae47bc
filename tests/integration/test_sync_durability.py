"""What a host crash in the middle of a sync pass costs, through the real CLI against a real sshd.

The agent no longer fsyncs each file: a pass asks the host to make everything durable once, at its end, and
keeps a note of what it sent until then (gpubox/sync/pending.py). A crash cannot be staged here, so the test
leaves what one would: the note of a pass that never saw its flush, and host copies torn the way a crash tears
them (a file with the size and mtime gpubox gave it but other bytes, a file that never got its name).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.cli import host_entry, run_gpubox
from tests.support.sshd import SshServer

pytestmark = pytest.mark.integration


def _project(sshd: SshServer, tmp_path: Path) -> tuple[Path, Path]:
    local = tmp_path / "work"
    (local / "src").mkdir(parents=True)
    host = tmp_path / "host" / f"durable-{os.urandom(4).hex()}"
    (local / "hosts.toml").write_text(host_entry("box", sshd, accept_new=True, remote_dir=str(host)))
    (local / ".gitignore").write_text("hosts.toml\n")
    for name in ("a.txt", "b.txt", "c.txt"):
        (local / "src" / name).write_bytes(os.urandom(300))
    return local, host


def _sync(local: Path) -> str:
    result = run_gpubox("sync", cwd=local)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


def _tear(host: Path) -> None:
    """src/a.txt keeps its size and mtime but loses its bytes; src/b.txt was never renamed into place."""
    torn = host / "src" / "a.txt"
    facts = torn.stat()
    torn.write_bytes(b"\0" * facts.st_size)
    os.utime(torn, ns=(facts.st_atime_ns, facts.st_mtime_ns))
    (host / "src" / "b.txt").unlink()


def _leave_note(local: Path, boot: str) -> Path:
    """The note a pass leaves when its flush is never answered: what it sent, and under which boot."""
    (lock,) = (Path(os.environ["GPUBOX_HOME"]) / "state" / "locks").glob("sync-box-*.lock")
    note = lock.with_suffix(".pending")
    rows: dict[str, object] = {
        f"src/{name}": ["f", st.st_size, st.st_mtime_ns, False, ""]
        for name in ("a.txt", "b.txt")
        for st in [(local / "src" / name).stat()]
    }
    rows["\0boot"] = boot
    note.write_text(json.dumps(rows) + "\n")
    return note


def test_after_a_host_reboot_the_files_of_an_unflushed_pass_are_written_again(
    sshd: SshServer, tmp_path: Path
) -> None:
    local, host = _project(sshd, tmp_path)
    _sync(local)
    _tear(host)
    note = _leave_note(local, "a-boot-before-the-crash")
    _sync(local)
    for name in ("a.txt", "b.txt", "c.txt"):
        assert (host / "src" / name).read_bytes() == (local / "src" / name).read_bytes(), name
    # The torn copy had the facts of gpubox's own write: replaced, not kept aside as someone's work.
    assert sorted(p.name for p in (host / "src").iterdir()) == ["a.txt", "b.txt", "c.txt"]
    assert not note.exists()
    assert "0 sent" in _sync(local)  # and settled: nothing left to do


def test_on_the_same_boot_the_host_copies_are_trusted_and_flushed(sshd: SshServer, tmp_path: Path) -> None:
    """A pass cut off by a dropped link or a killed gpubox, not a crash: the host's page cache still holds what
    it acknowledged, so a copy with the facts gpubox sent is gpubox's own (adopted, flushed, not sent again)."""
    local, host = _project(sshd, tmp_path)
    _sync(local)
    (host / "src" / "b.txt").unlink()  # an apply that never ran
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()  # the host is this machine
    note = _leave_note(local, boot)
    _sync(local)
    assert (host / "src" / "b.txt").read_bytes() == (local / "src" / "b.txt").read_bytes()
    assert (host / "src" / "a.txt").read_bytes() == (local / "src" / "a.txt").read_bytes()
    assert not note.exists()
