"""The test hosts' home folder: one per test session, apart from the developer's own.

Every sshd the fixtures start, and gpubox's own ``local`` host in tests, log the (same) user in with ``HOME``
set to this folder (sshd's ``SetEnv``, applied after its own ``HOME``; ``GPUBOX_LOCAL_HOME`` for ``local``). So
runs, services and the trash of other work on the machine never show up in a test, and tests leave nothing in
the developer's real ``~/.gpubox``.

What is expensive to make and safe to share stays shared between sessions, in a cache under the developer's
real home (``GPUBOX_TEST_HOST_CACHE`` moves it): the project envs, content-addressed by their requirements
hash (TensorFlow takes minutes to install), and pip's download cache. The session home's ``.gpubox/envs`` and
``.cache/pip`` are links into it; gpubox builds an env at the link's real path, so a venv made in one session
still works in the next.

A login on the test host otherwise behaves like the developer's own: the session home's shell start-up files
read the developer's (with ``HOME`` pointing at the real home while they run, so a ``~/.pyenv`` or ``~/.cargo``
set up there is found), and pip's configuration (a mirror, local wheels) is the developer's too.
"""

from __future__ import annotations

import os
import pwd
import shlex
from pathlib import Path

__all__ = ["ENV_VARIABLE", "host_cache", "host_home", "make_session_host_home", "real_home"]

ENV_VARIABLE = "GPUBOX_LOCAL_HOME"
"""Set for the whole session: gpubox's ``local`` host reads it, and so does :func:`host_home`."""


def real_home() -> Path:
    """The user's home folder from passwd: what sshd would give a session without ``SetEnv``."""
    return Path(pwd.getpwuid(os.getuid()).pw_dir)


def host_cache() -> Path:
    value = os.environ.get("GPUBOX_TEST_HOST_CACHE")
    return Path(value) if value else real_home() / ".cache" / "gpubox-tests" / "host"


def host_home() -> Path:
    """The test hosts' home in this session (where their ``~/.gpubox`` is)."""
    value = os.environ.get(ENV_VARIABLE)
    if not value:
        raise RuntimeError(f"{ENV_VARIABLE} is not set: tests/conftest.py sets it when the session starts")
    return Path(value)


def make_session_host_home(home: Path) -> Path:
    """Create *home* as a fresh host home: shared env and pip caches linked in, the developer's login set-up."""
    real = real_home()
    cache = host_cache()
    for shared in ("envs", "pip"):
        (cache / shared).mkdir(parents=True, exist_ok=True)
    (home / ".gpubox").mkdir(parents=True, mode=0o700)
    (home / ".gpubox" / "envs").symlink_to(cache / "envs", target_is_directory=True)
    (home / ".cache").mkdir()
    (home / ".cache" / "pip").symlink_to(cache / "pip", target_is_directory=True)
    pip_config = real / ".config" / "pip"
    if pip_config.is_dir():
        (home / ".config").mkdir()
        (home / ".config" / "pip").symlink_to(pip_config, target_is_directory=True)
    # bash run by sshd reads ~/.bashrc (Debian builds it so); a login shell reads ~/.profile.
    (home / ".bashrc").write_text(_read_with_real_home(real, ".bashrc"))
    (home / ".profile").write_text(_read_with_real_home(real, ".profile") + 'cd "$HOME"\n')
    return home


def _read_with_real_home(real: Path, name: str) -> str:
    source = real / name
    if not source.is_file():
        return "# the developer has no such file\n"
    return (
        "# The test host's login: the developer's own set-up, read with their real home.\n"
        f'__gpubox_session_home="$HOME"\nHOME={shlex.quote(str(real))}\n'
        f". {shlex.quote(str(source))}\n"
        'HOME="$__gpubox_session_home"\nunset __gpubox_session_home\n'
    )
