"""Running a private OpenSSH ``sshd`` on loopback: keys, config, start, readiness.

The built-in ``local`` host is such a server, and so is every host in the test suite: both go through this
module, so what the tests exercise is what users get.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from gpubox.errors import HostUnreachable
from gpubox.record import record

__all__ = [
    "SshdFiles",
    "find_sshd",
    "free_port",
    "generate_ed25519_key",
    "prepare_sshd_files",
    "sshd_command",
    "wait_for_banner",
]

_SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")
MISSING_SSHD = (
    "OpenSSH server (sshd) is not installed: install the `openssh-server` package "
    "(Debian/Ubuntu: apt-get install openssh-server)"
)


def find_sshd() -> str:
    """Absolute path of sshd (it refuses to re-exec itself from a relative path)."""
    found = shutil.which("sshd")
    if found:
        return os.path.abspath(found)
    for candidate in _SSHD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise HostUnreachable(MISSING_SSHD)


def generate_ed25519_key(path: Path, comment: str = "gpubox") -> str:
    """Write an unencrypted OpenSSH ed25519 key to *path* (0600) and *path*.pub; return the public line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_line = f"{public.decode()} {comment}\n"
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    os.replace(tmp, path)
    path.with_name(path.name + ".pub").write_text(public_line)
    return public_line


@record
class SshdFiles:
    """Everything one private sshd needs, all inside one folder."""

    folder: Path
    host_key: Path
    client_key: Path
    authorized_keys: Path
    config: Path
    pid_file: Path
    log_file: Path

    @classmethod
    def in_folder(cls, folder: Path) -> SshdFiles:
        return cls(
            folder=folder,
            host_key=folder / "host_ed25519",
            client_key=folder / "client_ed25519",
            authorized_keys=folder / "authorized_keys",
            config=folder / "sshd_config",
            pid_file=folder / "sshd.pid",
            log_file=folder / "sshd.log",
        )

    @property
    def host_public_key(self) -> str:
        """The host key as a ``type base64`` pair, for pinning without a known_hosts lookup."""
        return " ".join(self.host_key.with_name(self.host_key.name + ".pub").read_text().split()[:2])


def prepare_sshd_files(
    folder: Path, *, listen: str = "127.0.0.1", user: str | None = None, home: Path | None = None
) -> SshdFiles:
    """Create (or reuse) host key, client key, authorized_keys and an sshd config in *folder*.

    The port is not part of the config file; it is given on the command line so a restart can move to
    another free port without rewriting anything. *home* gives the sessions another ``HOME`` than the user's
    own (sshd applies ``SetEnv`` after its own ``HOME``): everything gpubox keeps on the host then lives there.
    """
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = SshdFiles.in_folder(folder)
    if not files.host_key.exists():
        generate_ed25519_key(files.host_key, "gpubox-host")
    if not files.client_key.exists():
        generate_ed25519_key(files.client_key, "gpubox-client")
    public = files.client_key.with_name(files.client_key.name + ".pub").read_text()
    files.authorized_keys.write_text(public)
    files.authorized_keys.chmod(0o600)
    login_user = user or getpass.getuser()
    lines = [
        f"ListenAddress {listen}",
        f"HostKey {files.host_key}",
        f"PidFile {files.pid_file}",
        f"AuthorizedKeysFile {files.authorized_keys}",
        f"AllowUsers {login_user}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        # A login as the same unprivileged user needs no PAM session; as root PAM would only add noise.
        "UsePAM no",
        "PermitRootLogin prohibit-password",
        # The folders above may sit under a world-writable /tmp, which StrictModes rejects.
        "StrictModes no",
        "AllowTcpForwarding yes",
        "AllowAgentForwarding no",
        "X11Forwarding no",
        "PrintMotd no",
        "PrintLastLog no",
        # Tunnels open many channels and tests open many sessions at once.
        "MaxStartups 64:30:256",
        "MaxSessions 64",
        "ClientAliveInterval 15",
        "ClientAliveCountMax 4",
        "Subsystem sftp internal-sftp",
        "LogLevel INFO",
    ]
    if home is not None:
        lines.append(f'SetEnv "HOME={home}"')
    files.config.write_text("\n".join(lines) + "\n")
    return files


def sshd_command(files: SshdFiles, port: int, *, sshd: str | None = None) -> list[str]:
    """The command line that runs this sshd in the foreground (``-D``) logging to its log file."""
    return [sshd or find_sshd(), "-D", "-f", str(files.config), "-p", str(port), "-E", str(files.log_file)]


def ensure_privsep_dir() -> None:
    """sshd started by root needs its privilege-separation folder, which only the system service creates."""
    if os.geteuid() == 0:
        with contextlib.suppress(OSError):
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (sshd cannot bind port 0, so callers retry on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def banner_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            return sock.recv(8).startswith(b"SSH-2.0")
    except OSError:
        return False


def wait_for_banner(
    host: str, port: int, proc: subprocess.Popen[bytes] | None = None, *, timeout: float = 10.0
) -> None:
    """Return once an SSH banner answers on host:port; raise if *proc* exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise HostUnreachable(
                f"sshd exited with status {proc.returncode} before listening on {host}:{port}"
            )
        if banner_answers(host, port, timeout=0.5):
            return
        time.sleep(0.02)
    raise HostUnreachable(f"sshd did not answer on {host}:{port} within {timeout:.0f} s")
