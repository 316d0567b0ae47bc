"""The built-in ``local`` host: a private OpenSSH sshd that gpubox runs on 127.0.0.1 for this user.

No root is needed: the server runs as the current user with keys generated under gpubox's state folder, so
it can only log that user in. It is reused while it runs, and stopped by ``gpubox down local``.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from gpubox import paths
from gpubox.errors import HostUnreachable
from gpubox.record import record
from gpubox.remote import sshd
from gpubox.remote.providers.base import ConnectSpec, InstanceStatus
from gpubox.state import pid_alive

if TYPE_CHECKING:
    from gpubox.config import HostConfig
    from gpubox.remote.providers.registry import ProviderSpec

HOST_KEY_ALIAS = "gpubox-local"
_START_ATTEMPTS = 5


@record
class LocalServer:
    pid: int
    port: int
    started_at: float
    home: str | None = None
    """The ``HOME`` its sessions get when it is not the user's own."""


class LocalSshd:
    """The private sshd's files and process, all under one folder."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or paths.local_host_dir()
        self.record = self.folder / "server.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Two gpubox commands starting `local` at once must end up sharing one server.
        paths.ensure_private_dir(self.folder)
        with open(self.folder / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def files(self) -> sshd.SshdFiles:
        return sshd.prepare_sshd_files(self.folder, user=getpass.getuser(), home=paths.local_host_home())

    def running(self, *, banner: bool = True) -> LocalServer | None:
        """The server if it runs and answers; stale records are ignored. Without *banner*, a listener that
        runs (its pid, its config) is taken as answering, without connecting to read its SSH banner."""
        try:
            data = json.loads(self.record.read_text())
            server = LocalServer(
                int(data["pid"]), int(data["port"]), float(data["started_at"]), data.get("home")
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not pid_alive(server.pid) or not self._is_ours(server.pid):
            return None
        if banner and not sshd.banner_answers("127.0.0.1", server.port):
            return None
        return server

    def _is_ours(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        # sshd rewrites its argv into one "sshd: ... [listener]" title, so match a substring, not an argument.
        return str(self.folder / "sshd_config").encode() in cmdline

    def previous_port(self) -> int | None:
        try:
            return int(json.loads(self.record.read_text())["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def ensure_running(self) -> LocalServer:
        with self._locked():
            server = self.running()
            home = paths.local_host_home()
            wanted_home = str(home) if home is not None else None
            if server is not None and server.home == wanted_home:
                return server
            if server is not None:
                # GPUBOX_LOCAL_HOME changed: a server still giving sessions the old home would mix the two.
                self._kill(server)
            sshd_path = sshd.find_sshd()
            files = self.files()
            sshd.ensure_privsep_dir()
            # Keep the port stable across restarts when we can: ssh-config entries and habits point at it.
            port = self.previous_port() or sshd.free_port()
            for _attempt in range(_START_ATTEMPTS):
                with contextlib.suppress(OSError):
                    files.log_file.unlink()
                proc = subprocess.Popen(
                    sshd.sshd_command(files, port, sshd=sshd_path),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                try:
                    sshd.wait_for_banner("127.0.0.1", port, proc, timeout=10)
                except HostUnreachable:
                    log = _tail(files.log_file)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait()
                    if "Address already in use" in log or "Cannot bind" in log:
                        port = sshd.free_port()
                        continue
                    raise HostUnreachable(f"the local sshd did not start: {log or 'no log'}") from None
                server = LocalServer(proc.pid, port, time.time(), wanted_home)
                with contextlib.suppress(OSError):
                    self.stopped_record.unlink()
                _write_json(self.record, server.__dict__)
                return server
            raise HostUnreachable("the local sshd found no free port on 127.0.0.1")

    def stop(self) -> bool:
        """Stop the server; True if one was running. Who stopped it and when is kept (:meth:`stopped_note`):
        the last project out stops the host for every project, and the others then need to know why."""
        with self._locked():
            server = self.running()
            if server is None:
                with contextlib.suppress(OSError):
                    self.record.unlink()
                return False
            self._kill(server)
            with contextlib.suppress(OSError):
                _write_json(self.stopped_record, {"at": time.time(), "pid": os.getpid(), "cwd": os.getcwd()})
            return True

    @property
    def stopped_record(self) -> Path:
        return self.folder / "stopped.json"

    def stopped_note(self) -> str:
        """`` (stopped 3 min ago by gpubox in ~/b)`` when gpubox stopped it last; empty when that is not known."""
        try:
            note = json.loads(self.stopped_record.read_text())
            at, cwd = float(note["at"]), str(note["cwd"])
        except (OSError, ValueError, KeyError, TypeError):
            return ""
        from gpubox.fmt import format_duration

        return f" (stopped {format_duration(max(0.0, time.time() - at))} ago by gpubox in {cwd})"

    @staticmethod
    def _kill(server: LocalServer) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while pid_alive(server.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if pid_alive(server.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.pid, signal.SIGKILL)


def _write_json(path: Path, data: dict[str, object]) -> None:
    """Replace *path* in one step: a reader sees the old record or the new one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


class LocalProvider:
    def __init__(self, spec: ProviderSpec, server: LocalSshd | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.server = server or LocalSshd()

    def launch(self, host: HostConfig) -> InstanceStatus:
        server = self.server.ensure_running()
        return InstanceStatus("running", f"sshd pid {server.pid} on 127.0.0.1:{server.port}")

    def status(self, host: HostConfig) -> InstanceStatus:
        from gpubox.remote.control import holder_answers

        # A holder answering on its control socket keeps its SSH link to this sshd (and would say so if it broke):
        # its listener running is enough, without a connection of our own to read the banner.
        server = self.server.running(banner=not holder_answers(host.name))
        if server is None:
            return InstanceStatus("stopped")
        return InstanceStatus("running", f"sshd pid {server.pid} on 127.0.0.1:{server.port}")

    def live_price_per_hour(self, host: HostConfig) -> float | None:
        return None  # your own machine

    def terminate(self, host: HostConfig) -> str:
        if self.server.stop():
            return "stopped the local sshd"
        return "the local sshd was not running"

    def connect_spec(self, host: HostConfig) -> ConnectSpec:
        from gpubox.remote.connection import Endpoint

        server = self.server.running()
        if server is None:
            raise HostUnreachable(
                f"the local host is not running{self.server.stopped_note()}: `gpubox up local` starts it"
            )
        files = sshd.SshdFiles.in_folder(self.server.folder)
        endpoint = Endpoint(
            alias="local",
            hostname="127.0.0.1",
            port=server.port,
            user=getpass.getuser(),
            identity_files=(str(files.client_key),),
            use_default_keys=False,
        )
        return ConnectSpec(endpoint, trusted_host_keys=(files.host_public_key,))
