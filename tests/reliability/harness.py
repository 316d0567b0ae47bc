"""Fault harness: hosts in network namespaces, faults on a seeded schedule, and the invariant check at the end.

The pieces, each usable alone:

- :class:`Workspace`: one local project folder synced to one namespace host by the real ``gpubox`` command line
  (subprocesses), with its hosts.toml in the workspace's own ``GPUBOX_HOME``.
- :class:`SmallDisk`: a size-limited tmpfs mounted in the host's filesystem, holding the host project folder, that
  can be filled to the last few bytes and freed again.
- :class:`FaultSchedule`: a seeded list of timed faults (link down, sshd killed and restarted, the local gpubox
  SIGKILLed and started again, the host disk filled, netem delay and loss), bounded in count and total time,
  played by a thread that always puts everything back (link up, sshd running, netem removed, disk freed, gpubox
  running) however it ends.
- :class:`Invariants`: what must hold after any fault: local and host trees hash-identical apart from ignored
  paths and outputs, host outputs never deleted, nothing written outside the host project folder, the env and
  ``~/.gpubox``, every run accounted for, every run's log byte-identical to the host's. What it checked and what
  it found lost is added to :class:`Counters`, which the campaign writes as JSON.

The namespace hosts share this machine's filesystem (not its mount table: a namespace's sshd sees the mounts that
existed when it started, so :class:`SmallDisk` restarts it after mounting).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import hosthome
from tests.support.netns import NetemUnavailable, NetnsHost
from tests.support.sshd import SshServer, descendants

__all__ = [
    "FAULT_KINDS",
    "Counters",
    "Fault",
    "FaultSchedule",
    "Invariants",
    "SmallDisk",
    "Workspace",
    "host_home",
    "netem_unavailable_reason",
]

FAULT_KINDS = ("link_down", "sshd_kill_restart", "gpubox_sigkill", "disk_fill", "netem")
HOST_NAME = "lab"
REPO = Path(__file__).resolve().parents[2]


def host_home() -> Path:
    """The namespace hosts log in as this user with the session's test host home as ``~``."""
    return hosthome.host_home()


def clear_stale_rehash_lock(min_age: float = 10.0) -> bool:
    """Remove pyenv's rehash lock when a killed login shell left it behind; True if it did.

    Every SSH session on the namespace hosts runs the developer's ~/.bashrc (Debian's bash does for sshd, and
    the test host home's .bashrc reads the developer's), which may run ``pyenv rehash`` under the lock ``~/.pyenv/shims/.pyenv-shim``. A session
    SIGKILLed inside it (what the sshd faults do) leaves the lock, and every later login on the machine, ours and
    anyone else's, then waits up to a minute for it. A rehash takes well under a second, so an older lock is stale.
    """
    lock = hosthome.real_home() / ".pyenv" / "shims" / ".pyenv-shim"
    try:
        if time.time() - lock.stat().st_mtime < min_age:
            return False
        lock.unlink()
    except OSError:
        return False
    return True


def kill_sshd(server: SshServer) -> None:
    """The host's sshd crashes: SIGKILL its listener and every per-session sshd, so every connection drops at once.

    What the sessions run (shells, the agent) is left to notice the end of its connection, as after a real crash:
    SIGKILLing a login shell inside ``pyenv rehash`` would leave pyenv's lock behind and stall every later login on
    this shared machine (see :func:`clear_stale_rehash_lock`).
    """
    if server.proc is None or server.proc.poll() is not None:
        return
    victims = [server.proc.pid]
    for pid in descendants(server.proc.pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                victims.append(pid)
        except OSError:
            continue
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server.proc.wait(5)


def netem_unavailable_reason(host: NetnsHost) -> str | None:
    """Why netem cannot be used on *host* (the exact error), or None when it can; leaves no qdisc behind."""
    try:
        host.netem(delay_ms=1)
    except NetemUnavailable as exc:
        return str(exc)
    host.clear_netem()
    return None


# ------------------------------------------------------------------------------------------------ counters


@dataclass
class Counters:
    """What a test or a campaign did and checked; ``lost`` lists every violated promise (the target is none)."""

    schedules: int = 0
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    files_checked: int = 0
    bytes_compared: int = 0
    runs_checked: int = 0
    log_bytes_compared: int = 0
    outputs_checked: int = 0
    lost: list[str] = field(default_factory=list)
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)

    def merge(self, other: Counters) -> None:
        self.schedules += other.schedules
        self.faults.update(other.faults)
        self.files_checked += other.files_checked
        self.bytes_compared += other.bytes_compared
        self.runs_checked += other.runs_checked
        self.log_bytes_compared += other.log_bytes_compared
        self.outputs_checked += other.outputs_checked
        self.lost += other.lost
        self.skipped.update(other.skipped)

    def document(self) -> dict[str, Any]:
        return {
            "schedules": self.schedules,
            "faults": dict(sorted(self.faults.items())),
            "faults_total": sum(self.faults.values()),
            "files_checked": self.files_checked,
            "bytes_compared": self.bytes_compared,
            "runs_checked": self.runs_checked,
            "log_bytes_compared": self.log_bytes_compared,
            "outputs_checked": self.outputs_checked,
            "lost": self.lost,
            "skipped": dict(self.skipped),
        }

    def write(self, path: Path) -> None:
        """Add these counts to the JSON file at *path* (created if missing), so several tests sum up."""
        total = Counters()
        if path.exists():
            old = json.loads(path.read_text())
            total.schedules = old["schedules"]
            total.faults.update(old["faults"])
            total.files_checked = old["files_checked"]
            total.bytes_compared = old["bytes_compared"]
            total.runs_checked = old["runs_checked"]
            total.log_bytes_compared = old["log_bytes_compared"]
            total.outputs_checked = old["outputs_checked"]
            total.lost = list(old["lost"])
            total.skipped.update(old.get("skipped", {}))
        total.merge(self)
        path.write_text(json.dumps(total.document(), indent=1) + "\n")


# ----------------------------------------------------------------------------------------------- workspace


class Workspace:
    """A project folder on this machine, its copy on one namespace host, and the gpubox command line for both."""

    def __init__(
        self,
        host: NetnsHost,
        folder: Path,
        *,
        remote_dir: Path | None = None,
        gpubox_home: Path | None = None,
        gpubox_toml: str = "",
        connect_timeout: float = 5.0,
    ) -> None:
        self.host = host
        self.folder = folder
        self.project = folder / "proj"
        self.project.mkdir(parents=True, exist_ok=True)
        self.remote = remote_dir or folder / "remote" / "proj"
        self.gpubox_home = gpubox_home or Path(os.environ.get("GPUBOX_HOME") or folder / "gpubox-home")
        self.env = dict(os.environ, GPUBOX_HOME=str(self.gpubox_home))
        self.env.pop("SSH_AUTH_SOCK", None)
        config = self.gpubox_home / "config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "hosts.toml").write_text(
            f"[hosts.{HOST_NAME}]\n"
            f'hostname = "{host.ip}"\n'
            f'user = "{host.server.user}"\n'
            f'identity_file = "{host.server.client_key}"\n'
            "accept_new = true\n"
            f"connect_timeout = {connect_timeout}\n"
            "keepalive_seconds = 2\n"
            f'remote_dir = "{self.remote}"\n'
        )
        if gpubox_toml:
            (self.project / "gpubox.toml").write_text(gpubox_toml)
        self.pid: int | None = None
        """The detached ``gpubox up`` process holding the host, while one is meant to run."""

    # -- the command line

    def gpubox(
        self, *args: str, timeout: float = 120.0, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "gpubox", *args],
            cwd=self.project,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"gpubox {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def spawn(
        self, *args: str, stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "gpubox", *args],
            cwd=self.project,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )

    def up(self, *, services: bool = False, timeout: float = 120.0) -> int:
        """``gpubox up --detach`` (``--no-services`` unless asked): the supervisor holds the host and live-syncs;
        its pid."""
        extra = () if services else ("--no-services",)
        result = self.gpubox("up", HOST_NAME, "--detach", *extra, timeout=timeout, check=True)
        marker = "running in the background (pid "
        line = next(line for line in result.stdout.splitlines() if marker in line)
        self.pid = int(line.split(marker, 1)[1].split(",", 1)[0])
        return self.pid

    def up_alive(self) -> bool:
        return self.pid is not None and _alive(self.pid)

    def kill_up(self) -> None:
        """SIGKILL the supervisor: no clean-up runs, as when a laptop dies."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            _wait_gone(self.pid)

    def stop_up(self) -> None:
        if self.pid is not None:
            self.gpubox("up", HOST_NAME, "--stop", timeout=60)
            _wait_gone(self.pid)
            self.pid = None

    @property
    def up_log(self) -> Path:
        """The background up's log: one per host and project (``up-HOST-PROJECTID.log``)."""
        logs = self.gpubox_home / "state" / "logs"
        found = sorted(logs.glob(f"up-{HOST_NAME}-*.log"), key=lambda p: p.stat().st_mtime)
        return found[-1] if found else logs / f"up-{HOST_NAME}.log"

    def up_log_text(self) -> str:
        try:
            return self.up_log.read_text(errors="replace")
        except OSError:
            return ""

    def start_run(self, *command: str) -> str:
        result = self.gpubox("run", "--no-sync", "--", *command, timeout=300, check=True)
        return next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("started "))

    def runs(self) -> dict[str, dict[str, Any]]:
        listing = self.gpubox("runs", "--all", "--json", timeout=120, check=True)
        return {run["id"]: run for run in json.loads(listing.stdout)["runs"]}

    # -- convergence

    def synced(self) -> bool:
        """True when the host tree equals the local one (apart from ignored paths and outputs)."""
        try:
            return tree_digest(self.project, self.remote, exclude_host=self.outputs())[0] == {}
        except OSError:
            return False

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.synced():
                return True
            time.sleep(0.2)
        return self.synced()

    def outputs(self) -> tuple[str, ...]:
        from gpubox.config import load_project

        return tuple(o.strip("/") for o in load_project(self.project).sync.outputs)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------------- disk


class SmallDisk:
    """A tmpfs of *size_mb* mounted at *mount*, for a host project folder that can run out of space.

    Needs root. :meth:`fill` takes all but *leave* bytes with a filler file beside the project folder (never in
    it), :meth:`free` removes it. The namespace host's sshd is restarted after mounting so its sessions see the
    mount (namespaces copy the mount table when they start).
    """

    def __init__(self, mount: Path, size_mb: int = 20) -> None:
        self.mount = mount
        self.size_mb = size_mb
        self.filler = mount / ".filler"
        self.mounted = False

    def __enter__(self) -> SmallDisk:
        self.mount.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0755", "tmpfs", str(self.mount)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.mounted = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.mount)], check=False, capture_output=True, timeout=30)
            self.mounted = False

    def free_bytes(self) -> int:
        info = os.statvfs(self.mount)
        return info.f_bavail * info.f_frsize

    def fill(self, leave: int = 0) -> int:
        """Take the free space down to *leave* bytes (at most); return how much the filler holds."""
        want = max(0, self.free_bytes() - leave)
        with open(self.filler, "ab") as handle:
            if want:
                with contextlib.suppress(OSError):
                    os.posix_fallocate(handle.fileno(), handle.tell(), want)
        return self.filler.stat().st_size

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()


# -------------------------------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float
    """Seconds after the schedule starts."""
    seconds: float
    """How long the fault lasts before everything is put back (for gpubox_sigkill: how long gpubox stays dead)."""
    delay_ms: int = 0
    loss_percent: float = 0.0

    def describe(self) -> str:
        extra = f" {self.delay_ms} ms {self.loss_percent:g} %" if self.kind == "netem" else ""
        return f"{self.kind}{extra} at {self.at:.1f} s for {self.seconds:.1f} s"


@dataclass
class FaultOutcome:
    fault: Fault
    injected: bool
    note: str = ""


class Follower:
    """``gpubox logs RUN -f`` in the background, its output in a file; started again after a kill, as a user would
    (the new one prints what the killed one had fetched, then goes on: its output alone must be the whole log)."""

    def __init__(self, workspace: Workspace, run_id: str, folder: Path) -> None:
        self.workspace = workspace
        self.run_id = run_id
        self.folder = folder
        self.files: list[Path] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed = False
        self.closed = False

    def start(self) -> Follower:
        self.folder.mkdir(parents=True, exist_ok=True)
        out = self.folder / f"follow-{self.run_id}-{len(self.files)}.out"
        self.files.append(out)
        with open(out, "wb") as stdout, open(out.with_suffix(".err"), "wb") as stderr:
            self.proc = self.workspace.spawn("logs", self.run_id, "-f", stdout=stdout, stderr=stderr)
        self.killed = False
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
            self.killed = True

    def restart_if_killed(self) -> None:
        if self.killed and not self.closed:
            self.start()

    def close(self) -> None:
        """Kill it for good: a schedule still unwinding must not start it again (it would outlive the run)."""
        self.closed = True
        self.kill()

    def wait(self, timeout: float) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None

    def shown(self) -> bytes:
        return self.files[-1].read_bytes() if self.files else b""

    def errors(self) -> str:
        return self.files[-1].with_suffix(".err").read_text(errors="replace") if self.files else ""


class FaultTarget:
    """What a schedule acts on: the host (link, sshd, netem), the local gpubox processes (the supervisor and any
    log followers), and optionally a small disk."""

    def __init__(
        self, workspace: Workspace, disk: SmallDisk | None = None, followers: Sequence[Follower] = ()
    ) -> None:
        self.workspace = workspace
        self.host = workspace.host
        self.disk = disk
        self.followers = list(followers)
        self.netem_reason: str | None = None
        self.rehash_locks_cleared = 0

    def link_down(self) -> None:
        self.host.link_down()

    def link_up(self) -> None:
        self.host.link_up()

    def sshd_kill(self) -> None:
        kill_sshd(self.host.server)

    def sshd_start(self) -> None:
        if self.host.server.proc is None or self.host.server.proc.poll() is not None:
            self.host.server.start()
        self.rehash_locks_cleared += clear_stale_rehash_lock()

    def gpubox_kill(self) -> None:
        self.workspace.kill_up()
        for follower in self.followers:
            follower.kill()

    def gpubox_start(self) -> None:
        if self.workspace.pid is not None and not self.workspace.up_alive():
            self.workspace.up()
        for follower in self.followers:
            follower.restart_if_killed()

    def disk_fill(self) -> None:
        assert self.disk is not None
        self.disk.fill()

    def disk_free(self) -> None:
        if self.disk is not None:
            self.disk.free()

    def netem_on(self, delay_ms: int, loss_percent: float) -> None:
        self.host.netem(delay_ms=delay_ms, loss_percent=loss_percent)

    def netem_off(self) -> None:
        self.host.clear_netem()

    def restore(self) -> list[str]:
        """Put everything back; every step is tried, the failures are returned."""
        errors = []
        self.rehash_locks_cleared += clear_stale_rehash_lock()
        for what, step in (
            ("netem off", self.netem_off),
            ("link up", self.link_up),
            ("disk free", self.disk_free),
            ("sshd start", self.sshd_start),
            ("gpubox start", self.gpubox_start),
        ):
            try:
                step()
            except Exception as exc:
                errors.append(f"{what}: {exc}")
        return errors


class FaultSchedule:
    """A seeded schedule of at most *max_faults* faults within *horizon* seconds, one at a time.

    The same seed and arguments always give the same faults. :meth:`start` plays them on a thread against a
    :class:`FaultTarget`; :meth:`join` waits for the end, and everything is restored in a ``finally`` whatever
    happened (also when :meth:`stop` cuts the schedule short).
    """

    def __init__(
        self,
        seed: int,
        *,
        kinds: Sequence[str] = FAULT_KINDS,
        horizon: float = 30.0,
        max_faults: int = 3,
        link_down_seconds: tuple[float, float] = (5.0, 8.0),
        sshd_down_seconds: tuple[float, float] = (0.5, 3.0),
        gpubox_dead_seconds: tuple[float, float] = (0.5, 3.0),
        disk_full_seconds: tuple[float, float] = (1.0, 4.0),
        netem_seconds: tuple[float, float] = (3.0, 8.0),
        gap_seconds: tuple[float, float] = (0.2, 2.0),
    ) -> None:
        if not kinds or max_faults < 1 or horizon <= 0:
            raise ValueError("a schedule needs fault kinds, at least one fault and a positive horizon")
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds: {sorted(unknown)}")
        self.seed = seed
        self.horizon = horizon
        rng = random.Random(seed)
        durations = {
            "link_down": link_down_seconds,
            "sshd_kill_restart": sshd_down_seconds,
            "gpubox_sigkill": gpubox_dead_seconds,
            "disk_fill": disk_full_seconds,
            "netem": netem_seconds,
        }
        faults: list[Fault] = []
        now = 0.0
        for _ in range(rng.randint(1, max_faults)):
            kind = rng.choice(list(kinds))
            at = now + rng.uniform(*gap_seconds)
            seconds = rng.uniform(*durations[kind])
            if at + seconds > horizon:
                break
            delay, loss = (
                (rng.choice((50, 100, 200)), rng.choice((0.0, 0.5, 1.0))) if kind == "netem" else (0, 0)
            )
            faults.append(Fault(kind, round(at, 2), round(seconds, 2), delay, loss))
            now = at + seconds
        if not faults:  # the first fault alone must fit: shorten it to the horizon
            kind = rng.choice(list(kinds))
            faults.append(Fault(kind, 0.0, round(min(horizon, durations[kind][0]), 2), 200, 1.0))
        self.faults = faults
        self.outcomes: list[FaultOutcome] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def seconds(self) -> float:
        last = self.faults[-1]
        return last.at + last.seconds

    def describe(self) -> str:
        return f"seed {self.seed}: " + "; ".join(f.describe() for f in self.faults)

    def start(self, target: FaultTarget) -> FaultSchedule:
        self._thread = threading.Thread(target=self._play, args=(target,), name=f"faults-{self.seed}")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self.horizon + 120)
            if self._thread.is_alive():
                raise RuntimeError(f"fault schedule {self.seed} did not end")

    def __enter__(self) -> FaultSchedule:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.join()

    def _play(self, target: FaultTarget) -> None:
        started = time.monotonic()
        try:
            for fault in self.faults:
                if self._stop.wait(max(0.0, started + fault.at - time.monotonic())):
                    break
                self.outcomes.append(self._inject(target, fault))
        except Exception as exc:  # recorded, never raised in the thread: the test reads self.errors
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self.errors += target.restore()

    def _inject(self, target: FaultTarget, fault: Fault) -> FaultOutcome:
        wait = fault.seconds
        if fault.kind == "link_down":
            target.link_down()
            try:
                self._stop.wait(wait)
            finally:
                target.link_up()
        elif fault.kind == "sshd_kill_restart":
            target.sshd_kill()
            try:
                self._stop.wait(wait)
            finally:
                target.sshd_start()
        elif fault.kind == "gpubox_sigkill":
            if not target.workspace.up_alive():
                return FaultOutcome(fault, False, "no gpubox up process to kill")
            target.gpubox_kill()
            try:
                self._stop.wait(wait)
            finally:
                target.gpubox_start()
        elif fault.kind == "disk_fill":
            if target.disk is None:
                return FaultOutcome(fault, False, "no small disk in this schedule")
            target.disk_fill()
            try:
                self._stop.wait(wait)
            finally:
                target.disk_free()
        elif fault.kind == "netem":
            try:
                target.netem_on(fault.delay_ms, fault.loss_percent)
            except NetemUnavailable as exc:
                target.netem_reason = str(exc)
                return FaultOutcome(fault, False, str(exc))
            try:
                self._stop.wait(wait)
            finally:
                target.netem_off()
        return FaultOutcome(fault, True)


# ---------------------------------------------------------------------------------------------- invariants


def _digest(path: Path) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def _walk(root: Path, skip_top: Sequence[str]) -> dict[str, tuple[object, ...]]:
    """Every path under *root* → ('f', sha256, exec, size) / ('l', target) / ('d',), never following links."""
    facts: dict[str, tuple[object, ...]] = {}
    stack = [""]
    while stack:
        folder = stack.pop()
        with os.scandir(root / folder if folder else root) as listing:
            for item in listing:
                rel = f"{folder}/{item.name}" if folder else item.name
                if not folder and item.name in skip_top:
                    continue
                st = item.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    facts[rel] = ("l", os.readlink(item.path))
                elif stat.S_ISDIR(st.st_mode):
                    facts[rel] = ("d",)
                    stack.append(rel)
                elif stat.S_ISREG(st.st_mode):
                    digest, size = _digest(Path(item.path))
                    facts[rel] = ("f", digest, bool(st.st_mode & 0o100), size)
                else:
                    facts[rel] = ("o",)
    return facts


def tree_digest(
    project: Path, remote: Path, *, exclude_host: Sequence[str] = ()
) -> tuple[dict[str, str], int, int]:
    """Compare what gpubox must mirror of *project* with *remote*: ({path: difference}, files, bytes).

    The local side is what gpubox's own ignore rules send (``gpubox.sync.ignore`` through the scanner: ignored
    paths, secrets, outputs and too-large files stay home); the host side is everything under *remote* except
    the top-level output folders *exclude_host* and gpubox's staging folder (checked on its own).
    """
    from gpubox.config import load_project
    from gpubox.sync.ignore import rules_for
    from gpubox.sync.scan import scan_tree

    scanned = scan_tree(project, rules_for(load_project(project)))
    mine: dict[str, tuple[object, ...]] = {}
    for rel, entry in scanned.entries.items():
        if entry.kind == "f":
            digest, size = _digest(project / rel)
            mine[rel] = ("f", digest, entry.executable, size)
        elif entry.kind == "l":
            mine[rel] = ("l", entry.target)
        else:
            mine[rel] = (entry.kind,)
    theirs = _walk(remote, (*exclude_host, ".gpubox-staging")) if remote.exists() else {}
    differences = {
        rel: f"local={mine.get(rel)} host={theirs.get(rel)}"
        for rel in sorted(set(mine) | set(theirs))
        if mine.get(rel) != theirs.get(rel)
    }
    files = sum(1 for fact in mine.values() if fact[0] == "f")
    size = sum(int(fact[3]) for fact in mine.values() if fact[0] == "f")  # type: ignore[call-overload]
    return differences, files, size


# Top-level names in the host user's home and /tmp that other work on this shared machine (test runners, pip,
# other checkouts' namespace labs) may create at any time; gpubox's own are checked by name below.
# ~/.keras is TensorFlow's own (the user's training writes it, not gpubox), made whenever a test's run first imports Keras.
_HOME_CHURN = (
    ".cache",
    ".local",
    ".config",
    ".keras",
    ".python_history",
    ".bash_history",
    ".lesshst",
    ".wget-hsts",
    ".rustup",  # a pip build that needed Rust, in another checkout
    ".cargo",
)
_TEMPFILE_NAME = re.compile(r"^tmp[a-z0-9_]{8}$")
_TMP_CHURN_PREFIXES = ("pytest-of-", "tmp", "pip-", "gpubox-netns.lock", "gpubox-bench-", "systemd-", "ssh-")


class Invariants:
    """Records the host's state at the start, then checks every promise at the end (see the module doc).

    Runs are added with :meth:`expect_run` (their expected exit code, or None for any terminal state).
    """

    def __init__(self, workspace: Workspace, counters: Counters) -> None:
        self.workspace = workspace
        self.counters = counters
        self.home = host_home()
        self.runs: dict[str, int | None] = {}
        self.outputs: dict[str, tuple[object, ...]] = {}
        self._home_before = self._listing(self.home)
        self._tmp_before = self._listing(Path("/tmp"))
        self._gpubox_before = self._listing(self.home / ".gpubox")
        self._remote_parent_before = self._listing(workspace.remote.parent)

    @staticmethod
    def _listing(folder: Path) -> set[str]:
        try:
            return set(os.listdir(folder))
        except OSError:
            return set()

    def expect_run(self, run_id: str, exit_code: int | None = 0) -> None:
        self.runs[run_id] = exit_code

    def remember_outputs(self) -> int:
        """Note every host output file now; each must still be there, unchanged, at the end."""
        remote = self.workspace.remote
        for top in self.workspace.outputs():
            if (remote / top).is_dir():
                for rel, fact in _walk(remote / top, ()).items():
                    if fact[0] == "f":
                        self.outputs[f"{top}/{rel}"] = fact
        return len(self.outputs)

    def check(self, *, converge_seconds: float = 90.0) -> list[str]:
        """Every promise, after waiting up to *converge_seconds* for the host to catch up; the broken ones."""
        problems: list[str] = []
        ws = self.workspace
        converged = ws.wait_synced(converge_seconds)
        differences, files, size = tree_digest(ws.project, ws.remote, exclude_host=ws.outputs())
        self.counters.files_checked += files
        self.counters.bytes_compared += size
        if not converged or differences:
            shown = list(differences.items())[:10]
            problems.append(
                f"trees differ in {len(differences)} paths: " + "; ".join(f"{p}: {d}" for p, d in shown)
            )
        for rel, fact in self.outputs.items():
            self.counters.outputs_checked += 1
            path = ws.remote / rel
            try:
                now = ("f", *_digest(path)[:1], bool(path.stat().st_mode & 0o100), path.stat().st_size)
            except OSError:
                problems.append(f"host output {rel} was deleted")
                continue
            if now != fact:
                problems.append(f"host output {rel} was changed")
        staging = ws.remote / ".gpubox-staging"
        if staging.exists() and os.listdir(staging):
            problems.append(f"staged files left on the host: {sorted(os.listdir(staging))[:5]}")
        problems += self._outside_writes()
        if self.runs:
            problems += self._check_runs()
        self.counters.lost += problems
        return problems

    def _outside_writes(self) -> list[str]:
        problems = []
        new_home = {
            name
            for name in self._listing(self.home) - self._home_before - {".gpubox", *_HOME_CHURN}
            if not _TEMPFILE_NAME.match(name)  # other work's tempfile.mkdtemp(dir=~)
        }
        if new_home:
            problems.append(f"written in the host's home outside ~/.gpubox: {sorted(new_home)}")
        # What gpubox keeps on a host (PROTOCOL.md): which project owns each folder, the guardians, runs, envs...
        allowed = (
            "agent-",
            "__pycache__",
            "envs",
            "runs",
            "services",
            "trash",
            "ssh",
            "projects",
            "guardian",
        )
        new_gpubox = {
            n for n in self._listing(self.home / ".gpubox") - self._gpubox_before if not n.startswith(allowed)
        }
        if new_gpubox:
            problems.append(f"unexpected entries in the host's ~/.gpubox: {sorted(new_gpubox)}")
        new_tmp = {
            n
            for n in self._listing(Path("/tmp")) - self._tmp_before
            if "gpubox" in n.lower() and not n.startswith(_TMP_CHURN_PREFIXES)
        }
        if new_tmp:
            problems.append(f"written in the host's /tmp: {sorted(new_tmp)}")
        parent = self._listing(self.workspace.remote.parent) - self._remote_parent_before
        stray = parent - {self.workspace.remote.name, ".filler"}
        if stray:
            problems.append(f"written beside the host project folder: {sorted(stray)}")
        return problems

    def _check_runs(self) -> list[str]:
        problems = []
        ws = self.workspace
        deadline = time.monotonic() + 300
        listing = ws.runs()
        while time.monotonic() < deadline and any(
            listing.get(run, {}).get("state") in ("starting", "running") for run in self.runs
        ):
            time.sleep(1.0)
            listing = ws.runs()
        for run_id, expected in self.runs.items():
            self.counters.runs_checked += 1
            row = listing.get(run_id)
            if row is None:
                problems.append(f"run {run_id} is missing from `gpubox runs`")
                continue
            if row["state"] not in ("succeeded", "failed", "stopped"):
                problems.append(f"run {run_id} ended {row['state']}")
            elif expected is not None and row.get("exit_code") != expected:
                problems.append(f"run {run_id} exited {row.get('exit_code')}, expected {expected}")
            problems += self.check_log(run_id)
        return problems

    def check_log(self, run_id: str, shown: bytes | None = None) -> list[str]:
        """`gpubox logs RUN` (or *shown*, what a follower printed) is byte-identical to the host's log file."""
        host_log = (self.home / ".gpubox" / "runs" / run_id / "log").read_bytes()
        if shown is None:
            result = subprocess.run(
                [sys.executable, "-m", "gpubox", "logs", run_id],
                cwd=self.workspace.project,
                env=self.workspace.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=120,
            )
            shown = result.stdout
        self.counters.log_bytes_compared += len(host_log)
        if shown != host_log:
            return [f"log of {run_id}: {len(shown)} bytes shown, the host holds {len(host_log)} (differ)"]
        return []


# ------------------------------------------------------------------------------------------------- editing


class Editor:
    """Seeded edits of a project the way people and tools make them: new files, rewrites, safe-write renames,
    deletions, new folders, exec bits."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.count = 0

    def files(self) -> list[Path]:
        return sorted(p for p in (self.root / "src").rglob("*") if p.is_file())

    def edit(self) -> None:
        rng = self.rng
        self.count += 1
        files = self.files()
        choice = rng.random()
        body = (f"# edit {self.count} seed-random {rng.getrandbits(64):x}\n" * rng.randint(1, 400)).encode()
        if not files or choice < 0.35:
            folder = self.root / "src" / f"pkg{rng.randint(0, 9)}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"m{self.count}.py").write_bytes(body)
        elif choice < 0.65:
            rng.choice(files).write_bytes(body)
        elif choice < 0.8:
            target = rng.choice(files)  # an editor's safe write: temp file, then rename over
            temp = target.with_name(f".{target.name}.tmp{self.count}")
            temp.write_bytes(body)
            os.replace(temp, target)
        elif choice < 0.92:
            rng.choice(files).unlink()
        else:
            target = rng.choice(files)
            target.chmod(target.stat().st_mode ^ 0o100)

    def burst(self, count: int, pause: float = 0.0) -> None:
        for _ in range(count):
            self.edit()
            if pause:
                time.sleep(pause)


def seed_tree(root: Path, files: int, *, size: int = 2048, big: int = 0, big_size: int = 0) -> None:
    """*files* small source files under src/ and *big* files of *big_size* bytes under data/, all distinct."""
    for index in range(files):
        path = root / "src" / f"pkg{index % 10}" / f"m{index}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((f"# file {index}\n" * (size // 10 + 1)).encode()[:size])
    for index in range(big):
        path = root / "data" / f"blob{index}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(random.Random(index).randbytes(big_size))


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@contextlib.contextmanager
def link_cut(host: NetnsHost) -> Iterator[None]:
    host.link_down()
    try:
        yield
    finally:
        host.link_up()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ campaign

JOB = """\
import os, sys, time
run = os.environ["GPUBOX_RUN_ID"]
os.makedirs("outputs", exist_ok=True)
with open(os.path.join("outputs", run + ".txt"), "w") as handle:
    handle.write(run * 1000)
for i in range(int(sys.argv[1])):
    print("%s line %05d %s" % (run, i, "x" * (i % 61)), flush=True)
    time.sleep(float(sys.argv[2]))
"""


@dataclass
class ScheduleOutcome:
    schedule: FaultSchedule
    problems: list[str]
    seconds: float
    counters: Counters


def run_schedule(
    host: NetnsHost,
    folder: Path,
    seed: int,
    counters: Counters,
    *,
    kinds: Sequence[str] = FAULT_KINDS,
    link_down_seconds: tuple[float, float] = (5.0, 8.0),
    horizon: float = 16.0,
    max_faults: int = 2,
    disk: SmallDisk | None = None,
    keep: bool = False,
) -> ScheduleOutcome:
    """One seeded schedule against a fresh project: ``gpubox up`` live-syncing, a run with its log followed, edits
    all along, the faults, then every invariant. Adds to *counters*; the workspace is removed unless *keep*."""
    started = time.monotonic()
    own = Counters(schedules=1)
    schedule = FaultSchedule(
        seed, kinds=kinds, horizon=horizon, max_faults=max_faults, link_down_seconds=link_down_seconds
    )
    remote = (disk.mount / f"s{seed}" / "proj") if disk is not None else None
    ws = Workspace(host, folder, remote_dir=remote)
    seed_tree(ws.project, 80)
    (ws.project / "job.py").write_text(JOB)
    invariants = Invariants(ws, own)
    problems: list[str] = []
    follower: Follower | None = None
    try:
        ws.up()
        # A run that lasts about as long as the faults, started before them (a run's start needs the host).
        lines = max(20, int(schedule.seconds / 0.05))
        run_id = ws.start_run("python3", "job.py", str(lines), "0.05")
        invariants.expect_run(run_id)
        output = ws.remote / "outputs" / f"{run_id}.txt"
        size = len(run_id) * 1000  # wait for all of it: a half-written output would read as "changed" later
        wait_until(lambda: output.exists() and output.stat().st_size == size, timeout=60, interval=0.05)
        invariants.remember_outputs()
        follower = Follower(ws, run_id, folder / "follow").start()
        editor = Editor(ws.project, seed)
        done = threading.Event()
        pause = random.Random(seed).uniform(0.05, 0.3)

        def edit() -> None:
            while not done.wait(pause):
                editor.edit()

        editing = threading.Thread(target=edit, name=f"edits-{seed}")
        editing.start()
        try:
            schedule.start(FaultTarget(ws, disk, [follower]))
            schedule.join()  # it ends by itself within its horizon
        finally:
            done.set()
            editing.join(30)
        problems += [f"fault harness: {error}" for error in schedule.errors]
        for outcome in schedule.outcomes:
            if outcome.injected:
                own.faults[outcome.fault.kind] += 1
            else:
                own.skipped[outcome.fault.kind] += 1
        if not ws.up_alive():
            problems.append("gpubox up is not running after the schedule:\n" + ws.up_log_text()[-2000:])
        code = follower.wait(timeout=300)
        if code != 0:
            problems.append(f"logs -f of {run_id} ended with {code}: {follower.errors()[-500:]}")
        problems += invariants.check_log(run_id, shown=follower.shown())
        problems += invariants.check(converge_seconds=120)
    except Exception as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        if follower is not None:
            follower.closed = True
        schedule.stop()
        with contextlib.suppress(Exception):
            schedule.join(60)
        if follower is not None:
            follower.close()
        with contextlib.suppress(Exception):
            ws.stop_up()
        if ws.pid is not None:
            ws.kill_up()
        if problems:
            problems.append("up log:\n" + ws.up_log_text()[-3000:])
    own.lost = problems
    counters.merge(own)
    if not keep:
        remove_tree(ws.project)
        remove_tree(folder / "follow")
        if remote is not None:
            remove_tree(remote.parent)
    return ScheduleOutcome(schedule, problems, time.monotonic() - started, own)
