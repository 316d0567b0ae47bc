"""A real OpenSSH sshd for tests: loopback (or inside a network namespace), random port, temp keys."""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import subprocess
from pathlib import Path

from gpubox.remote.sshd import (
    SshdFiles,
    ensure_privsep_dir,
    find_sshd,
    free_port,
    prepare_sshd_files,
    sshd_command,
    wait_for_banner,
)
from tests.support import hosthome


class SshServer:
    """One sshd process. ``netns`` runs it inside that network namespace (root only).

    Its sessions get the session's test host home (tests/support/hosthome.py), or *home* when given.
    """

    def __init__(
        self,
        folder: Path,
        *,
        listen: str = "127.0.0.1",
        port: int | None = None,
        netns: str | None = None,
        home: Path | None = None,
    ) -> None:
        self.listen = listen
        self.netns = netns
        self.user = getpass.getuser()
        self.home = home or hosthome.host_home()
        self.files: SshdFiles = prepare_sshd_files(folder, listen=listen, user=self.user, home=self.home)
        self.port = port or (22 if netns else free_port())
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return self.listen

    @property
    def client_key(self) -> Path:
        return self.files.client_key

    @property
    def host_public_key(self) -> str:
        return self.files.host_public_key

    def known_hosts_line(self, name: str | None = None) -> str:
        target = name or (self.listen if self.port == 22 else f"[{self.listen}]:{self.port}")
        return f"{target} {self.host_public_key}\n"

    def start(self) -> SshServer:
        ensure_privsep_dir()
        command = sshd_command(self.files, self.port, sshd=find_sshd())
        if self.netns:
            command = ["ip", "netns", "exec", self.netns, *command]
        for _attempt in range(5):
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                if self.netns:
                    self._wait_in_netns()
                else:
                    wait_for_banner(self.listen, self.port, self.proc, timeout=10)
                return self
            except Exception:
                self.stop()
                if self.netns or "Address already in use" not in self.log():
                    raise
                self.port = free_port()
        raise RuntimeError(f"sshd could not find a free port:\n{self.log()}")

    def _wait_in_netns(self) -> None:
        probe = (
            "import socket,sys,time\n"
            "end=time.time()+10\n"
            "while time.time()<end:\n"
            "  try:\n"
            f"    s=socket.create_connection(('{self.listen}',{self.port}),1)\n"
            "    sys.exit(0 if s.recv(8).startswith(b'SSH-2.0') else 1)\n"
            "  except OSError: time.sleep(0.05)\n"
            "sys.exit(1)\n"
        )
        subprocess.run(
            ["ip", "netns", "exec", str(self.netns), "python3", "-c", probe], check=True, timeout=15
        )

    def log(self) -> str:
        try:
            return self.files.log_file.read_text()
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the listener and every session it spawned: the host dies, live connections drop."""
        if self.proc and self.proc.poll() is None:
            for pid in [self.proc.pid, *descendants(self.proc.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        """End the listener and its sessions (each session sshd runs in its own session, so not by group)."""
        if self.proc and self.proc.poll() is None:
            sessions = descendants(self.proc.pid)
            try:
                self.proc.terminate()
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
            for pid in sessions:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        self.proc = None

    def restart(self) -> SshServer:
        self.stop()
        return self.start()

    def set_env(self, variables: dict[str, str]) -> SshServer:
        """Give every new session these variables too (sshd's ``SetEnv``), as a cloud gives its containers'
        processes theirs, and restart the server so they apply."""
        lines = self.files.config.read_text().splitlines()
        kept = [line for line in lines if not line.startswith("SetEnv ")]
        pairs = {"HOME": str(self.home), **variables}
        kept.append("SetEnv " + " ".join(f'"{name}={value}"' for name, value in pairs.items()))
        self.files.config.write_text("\n".join(kept) + "\n")
        return self.restart() if self.proc is not None else self


def children(parent: int) -> list[int]:
    """The processes whose parent is *parent*."""
    return _children_by_parent().get(parent, [])


def descendants(root: int) -> list[int]:
    """Every process below *root*, found through /proc parent links."""
    children = _children_by_parent()
    found: list[int] = []
    queue = [root]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    return children
