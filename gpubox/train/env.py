"""The project's Python environment on the host: one venv per definition, built once, then reused.

The venv lives at ``~/.gpubox/envs/<key>``, where the key hashes the requirements file's content, the ``[env]``
settings and the host's Python version, so changing any of them builds a new one and switching back reuses the
old. It is made with ``--system-site-packages`` so a preinstalled TensorFlow/CUDA stack (Lambda Stack, the
TensorFlow images) is reused rather than downloaded again. A marker file is written last: a build that failed
or was interrupted is removed and never used.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpubox.errors import BadInput, RemoteError, UsageError
from gpubox.remote.agent import calls

if TYPE_CHECKING:
    from gpubox.config import ProjectConfig
    from gpubox.remote.connection import ByteSink
    from gpubox.remote.session import HostSession

__all__ = ["EnvSpec", "ensure_env", "env_spec", "requirements_file", "tools_spec"]

READY = ".gpubox-ready"
_FAILED_REQUIREMENT = (
    re.compile(r"No matching distribution found for (\S+)"),
    re.compile(r"Could not find a version that satisfies the requirement (\S+)"),
    re.compile(r"Failed building wheel for (\S+)"),
    re.compile(r"Failed to build (\S+)"),
    re.compile(r"ERROR: Invalid requirement: '?([^':]+)"),
)


@dataclass(frozen=True)
class EnvSpec:
    key: str
    python: str
    """The host interpreter the venv is built from."""
    requirements: str | None
    """Path of the requirements file relative to the project folder."""
    setup: tuple[str, ...]

    @property
    def path(self) -> str:
        return f"~/.gpubox/envs/{self.key}"


def env_spec(project: ProjectConfig, host_python_version: str) -> EnvSpec | None:
    """What the project's env is made of; None when it needs none (no requirements, no setup)."""
    settings = project.env
    requirements = settings.requirements
    if requirements is None and (project.root / "requirements.txt").is_file():
        requirements = "requirements.txt"
    content = b""
    if requirements is not None:
        try:
            content = (project.root / requirements).read_bytes()
        except OSError as exc:
            raise UsageError(
                f"[env] requirements = {requirements!r}: cannot read it ({exc.strerror or exc})"
            ) from None
    if requirements is None and not settings.setup:
        return None
    identity = {
        "requirements": hashlib.sha256(content).hexdigest(),
        "python": settings.python,
        "setup": list(settings.setup),
        "host_python": host_python_version,
        "layout": 1,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return EnvSpec(key, settings.python, requirements, settings.setup)


def tools_spec(project: ProjectConfig, host_python_version: str) -> EnvSpec:
    """An env for a project that needs none of its own, to hold Jupyter and TensorBoard."""
    identity = {"tools": True, "python": project.env.python, "host_python": host_python_version, "layout": 1}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return EnvSpec(key, project.env.python, None, ())


def _script(spec: EnvSpec, project_dir: str) -> str:
    from gpubox.remote.session import shell_word

    steps = [
        "set -u",
        'mkdir -p "$HOME/.gpubox/envs" || exit 90',
        # Built at the folder's real path: when ~/.gpubox/envs links to a bigger disk (or a cache shared by
        # several homes), the venv's scripts must name the place that stays, not the link.
        f'D="$(cd "$HOME/.gpubox/envs" && pwd -P)/{spec.key}"',
        f'if [ -f "$D/{READY}" ]; then echo "gpubox-env: cached $D"; exit 0; fi',
        # Two gpubox processes must not build the same env at once; flock(1) is util-linux, nearly always there.
        'exec 9>"$D.lock"',
        "command -v flock >/dev/null 2>&1 && flock 9",
        f'if [ -f "$D/{READY}" ]; then echo "gpubox-env: cached $D"; exit 0; fi',
        'rm -rf "$D"',
        'echo "gpubox-env: creating $D"',
        f'{shlex.quote(spec.python)} -m venv --system-site-packages "$D" 2>&1 || {{ rm -rf "$D"; exit 90; }}',
        f'cd {shell_word(project_dir)} || {{ rm -rf "$D"; exit 91; }}',
    ]
    if spec.requirements:
        steps.append(
            '"$D/bin/python" -m pip install --disable-pip-version-check --no-input --progress-bar off '
            f'-r {shlex.quote(spec.requirements)} 2>&1 || {{ rm -rf "$D"; exit 92; }}'
        )
    for command in spec.setup:
        steps.append(
            f'echo "gpubox-env: setup: "{shlex.quote(command)}; '
            f'(. "$D/bin/activate" && sh -c {shlex.quote(command)}) 2>&1 || {{ rm -rf "$D"; exit 93; }}'
        )
    steps += [f'touch "$D/{READY}"', 'echo "gpubox-env: ready $D"']
    return "\n".join(steps)


class _Tee:
    """Passes pip's output through (prefixed) while keeping it, to say what failed."""

    def __init__(self, out: ByteSink | None) -> None:
        self.out = out
        self.kept = bytearray()
        self._line_start = True

    def flush(self) -> None:
        if self.out is not None:
            self.out.flush()

    def write(self, data: bytes) -> int:
        self.kept += data
        if self.out is not None:
            text = bytes(data)
            prefixed = bytearray()
            for line in text.splitlines(keepends=True):
                if self._line_start:
                    prefixed += b"    | "
                prefixed += line
                self._line_start = line.endswith(b"\n")
            self.out.write(bytes(prefixed))
            self.out.flush()
        return len(data)


def ensure_env(session: HostSession, spec: EnvSpec, *, show: ByteSink | None = None) -> tuple[str, bool]:
    """Build the env if needed; return (its path on the host, whether it was already built)."""
    # The common case, a built env, costs one agent round trip instead of a shell on the host.
    known = calls.env_ready(session.agent, key=spec.key)
    if known.get("ready"):
        return str(known["path"]), True
    tee = _Tee(show)
    command = f"sh -c {shlex.quote(_script(spec, session.remote_dir))}"
    code = session.connection.stream(command, None, tee, tee)
    output = bytes(tee.kept).decode(errors="replace")
    if code == 0:
        # The script names the env by its real path: everything installed into it later (tools, a pip
        # install in a run) must write that path into its scripts, not a link to it that may go away.
        said = re.search(r"^gpubox-env: (cached|ready) (.+)$", output, re.MULTILINE)
        if said is None:
            raise RemoteError(f"the env script on {session.host.name} did not say where it built the env")
        return said.group(2).strip(), said.group(1) == "cached"
    tail = "\n".join(output.strip().splitlines()[-8:])
    if code == 90:
        raise RemoteError(
            f"could not create a venv with {spec.python} on {session.host.name} (on Debian/Ubuntu install "
            f"python3-venv there): {tail.splitlines()[-1] if tail else 'no output'}"
        )
    if code == 91:
        raise RemoteError(
            f"the project folder {session.remote_dir} is missing on {session.host.name}: sync first"
        )
    if code == 92:
        failed = next((m.group(1) for p in _FAILED_REQUIREMENT for m in [p.search(output)] if m), None)
        what = f"requirement {failed!r} could not be installed" if failed else "pip install failed"
        if show is None:
            sys.stderr.write(tail + "\n")
        raise RemoteError(f"{what} from {spec.requirements} on {session.host.name} (pip's output ends above)")
    if code == 93:
        raise RemoteError(f"an [env] setup command failed on {session.host.name} (its output ends above)")
    raise RemoteError(f"building the env on {session.host.name} failed (exit {code}): {tail[-300:]}")


def requirements_file(project: ProjectConfig) -> tuple[str, str] | None:
    """(name, text) of the project's requirements file, when there is one to read a TensorFlow pin from."""
    name = project.env.requirements or "requirements.txt"
    path = project.root / name
    if not path.is_file():
        return None
    try:
        return name, path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None
