"""Where gpubox keeps its files on this machine.

``GPUBOX_HOME`` overrides every location (tests use it, and so can people who want gpubox's files elsewhere);
otherwise the platform's user config and state folders are used.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "config_dir",
    "gpubox_home",
    "known_hosts_file",
    "local_host_dir",
    "local_host_home",
    "machine_id",
    "ssh_config_file",
    "state_dir",
]


def gpubox_home() -> Path | None:
    value = os.environ.get("GPUBOX_HOME")
    return Path(value).expanduser().resolve() if value else None


def config_dir() -> Path:
    home = gpubox_home()
    if home is not None:
        return home / "config"
    import platformdirs

    return Path(platformdirs.user_config_dir("gpubox", appauthor=False))


def state_dir() -> Path:
    home = gpubox_home()
    if home is not None:
        return home / "state"
    import platformdirs

    return Path(platformdirs.user_state_dir("gpubox", appauthor=False))


def known_hosts_file() -> Path:
    """gpubox's own pins, checked after ``~/.ssh/known_hosts``; the only known-hosts file gpubox writes."""
    return state_dir() / "known_hosts"


def local_host_dir() -> Path:
    """Keys, config, pid and log of the private sshd behind the built-in ``local`` host."""
    return state_dir() / "local-sshd"


def local_host_home() -> Path | None:
    """``GPUBOX_LOCAL_HOME``: the home folder sessions on the ``local`` host get instead of the user's own.

    Runs, envs, services and the trash then live under it, apart from what the user keeps in ``~/.gpubox`` (the
    test suite gives each session such a home of its own).
    """
    value = os.environ.get("GPUBOX_LOCAL_HOME")
    return Path(value).expanduser().resolve() if value else None


def ssh_config_file() -> Path:
    """The file ``gpubox ssh-config`` writes, meant to be pulled into ``~/.ssh/config`` with ``Include``."""
    return config_dir() / "ssh_config"


def ensure_private_dir(path: Path) -> Path:
    """Create *path* (and parents) readable by this user only, since it may hold keys."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def machine_id() -> str:
    """A random id of this gpubox installation (made once, kept in the state folder). Project ids are derived
    from it and the project's path, so the same path on two laptops never names the same host folder."""
    path = state_dir() / "machine-id"
    for _attempt in range(3):
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = None
        if text is not None and len(text) == 32 and all(c in "0123456789abcdef" for c in text):
            return text
        import secrets

        ensure_private_dir(path.parent)
        made = secrets.token_hex(16)
        # Named after the new id, not the process: threads of one process may be making one at the same time.
        tmp = path.with_name(f"machine-id.{made}.tmp")
        tmp.write_text(made + "\n")
        try:
            if text is None:
                os.link(tmp, path)  # never over one another process made meanwhile: all must read the same id
            else:
                os.replace(tmp, path)  # unreadable as an id: made anew
            return made
        except FileExistsError:
            continue
        finally:
            tmp.unlink(missing_ok=True)
    raise OSError(f"cannot settle {path}")
