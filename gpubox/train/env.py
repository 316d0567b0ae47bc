"""The project's Python environment on the host: one venv per definition, built once, then reused.

The venv lives at ``~/.gpubox/envs/<key>``, where the key hashes the requirements file's content, the ``[env]``
settings and the host's Python version, so changing any of them builds a new one and switching back reuses the
old. It is made with ``--system-site-packages`` so a preinstalled TensorFlow/CUDA stack (Lambda Stack, the
TensorFlow images) is reused rather than downloaded again. A marker file is written last: a build that failed
or was interrupted is removed and never used. The build's whole output (pip's) is kept beside the env, in
``<key>.log``; gpubox shows only what it is doing now, and on a failure the lines that say why.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from gpubox.errors import BadInput, RemoteError, UsageError
from gpubox.record import record
from gpubox.remote.agent import calls

if TYPE_CHECKING:
    from gpubox.config import ProjectConfig
    from gpubox.remote.session import HostSession

__all__ = [
    "BuiltEnv",
    "EnvBuildFailed",
    "EnvSpec",
    "ensure_env",
    "env_spec",
    "lines_that_matter",
    "pip_activity",
    "requirements_file",
    "tools_spec",
]

READY = ".gpubox-ready"
# pip's words, as patterns compiled on first use (re keeps them): a command whose env is already built never
# reads pip's output, and compiling them all at import was ~2 ms of every `gpubox run`.
_FAILED_REQUIREMENT = (
    r"No matching distribution found for (\S+)",
    r"Could not find a version that satisfies the requirement (\S+)",
    r"Failed building wheel for (\S+)",
    r"Failed to build (\S+)",
    r"ERROR: Invalid requirement: '?([^':]+)",
)


@record
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
    """The build, as one shell script: everything it prints goes both to ``<env>.log`` on the host (kept, so the
    whole of pip's output can be read there later) and back to gpubox, which shows one line of it."""
    from gpubox.remote.session import shell_word

    build = [
        'echo "gpubox-env: creating $D"',
        f'{shlex.quote(spec.python)} -m venv --system-site-packages "$D" || exit 90',
    ]
    if spec.requirements or spec.setup:
        build.append(f"cd {shell_word(project_dir)} || exit 91")
    if spec.requirements:
        build.append(
            '"$D/bin/python" -m pip install --disable-pip-version-check --no-input --progress-bar off '
            f"-r {shlex.quote(spec.requirements)} || exit 92"
        )
    for command in spec.setup:
        build.append(
            f'echo "gpubox-env: setup: "{shlex.quote(command)}; '
            f'(. "$D/bin/activate" && sh -c {shlex.quote(command)}) || exit 93'
        )
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
        'rm -rf "$D" "$D.exit"',
        'echo "gpubox-env: log $D.log"',
        # sh has no pipefail: the build's own exit code comes back through a file beside the log.
        "{ ( " + "\n".join(build) + ' ) 2>&1; echo "$?" >"$D.exit"; } | tee "$D.log"',
        'code="$(cat "$D.exit" 2>/dev/null || echo 1)"; rm -f "$D.exit"',
        'if [ "$code" != 0 ]; then rm -rf "$D"; exit "$code"; fi',
        f'touch "$D/{READY}"',
        'echo "gpubox-env: ready $D"',
    ]
    return "\n".join(steps)


_COLLECTING = r"^(?:Collecting|Processing) (?:\S*/)?([A-Za-z0-9_.\-]+)"
_DOWNLOADING = r"^\s*Downloading (?:\S*/)?([A-Za-z0-9_.]+)-[^ ]* \(([^)]+)\)"
_BUILDING = r"^\s*Building wheels? for (?:collected packages: )?([A-Za-z0-9_.\-]+)"
_INSTALLING = r"^Installing collected packages: (.+)"
_INSTALLED = r"^Successfully installed (.+)"
_ERROR_LINE = r"^\s*(ERROR|error|Error)\b|No matching distribution|Could not find a version|Failed"


def pip_activity(line: str) -> str | None:
    """What one line of the build's output says it is doing now, in a few words; None for a line that says
    nothing new (pip's requirement details, progress, warnings)."""
    text = line.rstrip()
    if text.startswith("gpubox-env: creating"):
        return "creating the venv"
    if text.startswith("gpubox-env: setup: "):
        return "setup: " + text[len("gpubox-env: setup: ") :]
    if match := re.match(_DOWNLOADING, text):
        return f"downloading {match.group(1)} ({match.group(2)})"
    if match := re.match(_COLLECTING, text):
        name = match.group(1)
        name = name.split("-")[0] if name.endswith((".whl", ".tar.gz", ".zip")) else name
        return f"collecting {name.split('==')[0].split('>')[0].split('<')[0]}"
    if match := re.match(_BUILDING, text):
        return f"building {match.group(1)}"
    if match := re.match(_INSTALLING, text):
        names = [name.strip() for name in match.group(1).split(",") if name.strip()]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        return f"installing {len(names)} package{'s' if len(names) != 1 else ''}: {shown}"
    if match := re.match(_INSTALLED, text):
        count = len(match.group(1).split())
        return f"installed {count} package{'s' if count != 1 else ''}"
    return None


def lines_that_matter(lines: list[str], most: int = 12) -> list[str]:
    """From a failed build's output: pip's error lines, each with the indented lines that explain it (pip's
    ``× ... │ ...`` boxes around a failed build step), or the last lines when there is no error line."""
    chosen: list[int] = []
    in_error = False
    for index, line in enumerate(lines):
        if re.search(_ERROR_LINE, line):
            chosen.append(index)
            in_error = True
        elif in_error and not line.strip():
            continue  # pip's boxes have blank lines inside
        elif in_error and line[:1] in (" ", "\t", "×", "│", "╰", "╭", "|"):
            chosen.append(index)
        else:
            in_error = False
    if not chosen:
        chosen = list(range(max(0, len(lines) - 8), len(lines)))
    return [lines[i] for i in chosen[-most:] if lines[i].strip()]


_SAID_WHERE = re.compile(r"^gpubox-env: (cached|ready) (.+)$")


class _BuildOutput:
    """Reads the build's output as it streams: the log's path on the host (handed to *on_start*: the build
    begins), what it is doing now (each change handed to *on_activity*), its last lines (for a failure) and
    where the env is."""

    def __init__(
        self, on_start: Callable[[str], None] | None, on_activity: Callable[[str], None] | None
    ) -> None:
        self.on_start = on_start
        self.on_activity = on_activity
        self.log: str | None = None
        self.cached = False
        self.path: str | None = None
        """Where the env is, by its real path, as the script said (``gpubox-env: cached|ready PATH``)."""
        self.tail: deque[str] = deque(maxlen=400)
        self._partial = b""

    def write(self, data: bytes, /) -> int:
        *complete, self._partial = (self._partial + bytes(data)).split(b"\n")
        for raw in complete:
            self._line(raw.decode("utf-8", "replace").rstrip("\r"))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self._partial:
            self._line(self._partial.decode("utf-8", "replace"))
            self._partial = b""

    def _line(self, line: str) -> None:
        if line.startswith("gpubox-env: log "):
            self.log = line[len("gpubox-env: log ") :]
            if self.on_start is not None:
                self.on_start(self.log)
            return
        said = _SAID_WHERE.match(line)
        if said is not None:
            self.cached = said.group(1) == "cached"
            self.path = said.group(2).strip()
            return
        self.tail.append(line)
        activity = pip_activity(line)
        if activity is not None and self.on_activity is not None:
            self.on_activity(activity)


@record
class BuiltEnv:
    """The project's env on the host, ready."""

    path: str
    cached: bool
    """It was there already (no build)."""
    log: str | None = None
    """Where the build's whole output is kept on the host (when it was built)."""
    seconds: float = 0.0
    """How long the build took."""


class EnvBuildFailed(RemoteError):
    """The env could not be built; ``details`` holds the lines of pip's output that say why."""


def ensure_env(
    session: HostSession,
    spec: EnvSpec,
    *,
    on_start: Callable[[str], None] | None = None,
    on_activity: Callable[[str], None] | None = None,
) -> BuiltEnv:
    """Build the env if needed. *on_start* hears that a build begins, with the host path of the log that keeps
    its whole output (not for a cached env); *on_activity* what it is doing in a few words, each time that
    changes."""
    # The common case, a built env, costs one agent round trip instead of a shell on the host.
    known = calls.env_ready(session.agent, key=spec.key)
    if known.get("ready"):
        return BuiltEnv(str(known["path"]), True)
    output = _BuildOutput(on_start, on_activity)
    command = f"sh -c {shlex.quote(_script(spec, session.remote_dir))}"
    started = time.monotonic()
    code = session.connection.stream(command, None, output, output)
    output.close()
    seconds = time.monotonic() - started
    if code == 0:
        # The script names the env by its real path: everything installed into it later (tools, a pip
        # install in a run) must write that path into its scripts, not a link to it that may go away.
        if output.path is None:
            raise RemoteError(f"the env script on {session.host.name} did not say where it built the env")
        return BuiltEnv(output.path, output.cached, None if output.cached else output.log, seconds)
    lines = list(output.tail)
    log = f" (the build's log on the host: {output.log})" if output.log else ""
    host = session.host.name
    if code == 90:
        last = next((line for line in reversed(lines) if line.strip()), "no output")
        raise RemoteError(
            f"could not create a venv with {spec.python} on {host} (on Debian/Ubuntu install "
            f"python3-venv there): {last}"
        )
    if code == 91:
        raise RemoteError(f"the project folder {session.remote_dir} is missing on {host}: sync first")
    error: EnvBuildFailed
    if code == 92:
        text = "\n".join(lines)
        failed = next((m.group(1) for p in _FAILED_REQUIREMENT for m in [re.search(p, text)] if m), None)
        what = f"requirement {failed!r} could not be installed" if failed else "pip install failed"
        error = EnvBuildFailed(f"{what} from {spec.requirements} on {host}{log}")
    elif code == 93:
        # The failed command's own output: from the last "setup:" line on.
        starts = [i for i, line in enumerate(lines) if line.startswith("gpubox-env: setup: ")]
        error = EnvBuildFailed(f"an [env] setup command failed on {host}{log}")
        error.details = tuple(lines[starts[-1] if starts else 0 :][-12:])
        raise error
    else:
        tail = " | ".join(lines[-3:])
        error = EnvBuildFailed(f"building the env on {host} failed (exit {code}): {tail[-300:]}{log}")
    error.details = tuple(lines_that_matter(lines))
    raise error


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
