"""One typed function per agent op: the only place the client side of gpubox names an op.

Each function takes the request's fields as keyword arguments and returns the agent's answer as it came (the
TypedDicts below say what it holds; ``NotRequired`` keys are there only in some answers). Ops that carry bytes
alongside the JSON take them as ``blob`` and return ``(answer, bytes)``. The fields and their meaning are in
PROTOCOL.md next to this file; the agent's side of each op is the handler of the same name in ``host.py``.

A field passed as ``None`` is left out of the request: the agent reads every field with a default, so an absent
field and a null one mean the same, and the agent's own default applies.

This module imports no paramiko, so code that only names calls stays light.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, NotRequired, TypeVar, cast

if TYPE_CHECKING:
    from typing import TypedDict

    from gpubox.remote.agent.framing import FramedAgent
else:

    class TypedDict(dict):  # type: ignore[type-arg]
        """The answers' types at run time: nothing but names. An answer is the plain dict the agent sent (the
        functions below only cast it), and typing's TypedDict would compile every key's annotation when this
        module loads (~3 ms of each one-shot command, for types only mypy reads)."""

        def __init_subclass__(cls, *, total: bool = True, **kwargs: Any) -> None:
            super().__init_subclass__(**kwargs)


__all__ = [
    "ActiveRun",
    "ApplyAnswer",
    "DashAnswer",
    "DashRun",
    "EnvReady",
    "Framework",
    "Hello",
    "Idle",
    "Manifest",
    "NodeInfo",
    "NvidiaSmi",
    "Probe",
    "ProjectFolder",
    "ProjectOwner",
    "Projects",
    "ReadAnswer",
    "RunList",
    "RunLog",
    "RunProject",
    "RunRow",
    "RunState",
    "ServiceList",
    "ServiceRow",
    "StartedService",
    "apply",
    "apply_batches",
    "dash",
    "env_ready",
    "flush",
    "framework",
    "hello",
    "idle",
    "manifest",
    "node_info",
    "probe",
    "project_folder",
    "projects",
    "prune_trash",
    "read",
    "run_list",
    "run_log",
    "run_start",
    "run_stop",
    "service_ensure",
    "service_list",
    "service_stop",
    "stage",
]


def _fields(**given: Any) -> dict[str, Any]:
    return {name: value for name, value in given.items() if value is not None}


# ------------------------------------------------------------------------------------------------ the host


class Hello(TypedDict, total=False):
    protocol: int
    agent_version: str
    python: str
    executable: str
    pid: int
    home: str
    boot_id: str | None
    """Changes when the host boots again (None where the agent cannot tell): writes not flushed may be lost."""


def hello(agent: FramedAgent, *, client_protocol: int | None = None) -> Hello:
    """The agent's versions and where it runs. With *client_protocol* the agent checks it against its own and
    refuses a different one (error kind ``protocol-mismatch``); without, it is a plain round trip (a heartbeat)."""
    return cast(Hello, agent.request("hello", _fields(client_protocol=client_protocol)))


class NvidiaSmi(TypedDict):
    """The raw output of nvidia-smi, or why there is none; the client parses it (gpubox.remote.gpu)."""

    available: bool
    output: str
    reason: NotRequired[str]
    exit_code: NotRequired[int]
    path: NotRequired[str]


class Probe(TypedDict, total=False):
    hostname: str
    os: str
    kernel: str
    arch: str
    python: dict[str, str]
    """{"version", "executable"}"""
    cpu_count: int | None
    memory: dict[str, int | None]
    """{"total_bytes", "available_bytes"}"""
    disk: dict[str, Any]
    """{"path", "exists", "free_bytes", "total_bytes"}, or {"path", "error"}"""
    nvidia_smi: NvidiaSmi
    gpu_query: NvidiaSmi | None
    """``--query-gpu=index,pci.bus_id,name,compute_cap --format=csv`` (without compute_cap where this nvidia-smi
    refuses it); None when nvidia-smi itself gave no answer. Absent from agents before it."""


def probe(agent: FramedAgent, *, project_dir: str) -> Probe:
    """What the host is: OS, Python, CPUs, memory, free disk where the project is (or will be), nvidia-smi."""
    return cast(Probe, agent.request("probe", {"project_dir": project_dir}))


class Framework(TypedDict, total=False):
    python: str
    framework: str
    installed: bool | None
    """None: the python did not answer (timed out, crashed); ``reason`` says why."""
    reason: str
    version: str | None
    gpus: list[str] | None
    built_with_cuda: bool | None


def framework(agent: FramedAgent, *, python: str, timeout: float | None = None) -> Framework:
    """What TensorFlow installed in *python* on the host reports (the only framework asked about today)."""
    return cast(Framework, agent.request("framework", _fields(python=python, timeout=timeout)))


class Idle(TypedDict):
    time: float
    nvidia_smi: NvidiaSmi | None
    ttys: list[dict[str, Any]]
    """[{"tty": "pts/3", "idle_seconds": 12.5}, ...]: this user's terminals"""
    runs: int
    active: NotRequired[list[ActiveRun]]
    """The runs counted in ``runs`` (an agent from before project ids leaves this out)."""
    kernels: int


class ActiveRun(TypedDict):
    id: str
    project: str | None
    """The id of the project that started it (None for a run from before project ids)."""
    project_name: str | None
    progress_at: NotRequired[float | None]
    """When it last showed progress (host clock): its start, its log's last write, its newest TensorBoard file."""


def idle(agent: FramedAgent, *, gpu: bool = True, ttys: bool = True) -> Idle:
    """What the host is doing, for idle autostop: GPU use, terminals, active runs, busy Jupyter kernels."""
    return cast(Idle, agent.request("idle", {"gpu": gpu, "ttys": ttys}))


class Guardian(TypedDict):
    running: bool
    pid: int | None
    started: bool
    """A guardian was started by this call (not adopted)."""
    previous: dict[str, Any] | None
    """With ``start``: the stop record of an earlier guardian nobody had seen yet ({at, reason, why, done})."""
    acted: dict[str, Any] | None
    """With ``stop``: the stop record, or {"ok": false, "error"}."""
    status: dict[str, Any] | None
    """The guardian's latest look at the host (PROTOCOL.md, "The guardian")."""
    stopped: dict[str, Any] | None
    decisions: list[dict[str, Any]]
    time: float


def guardian(
    agent: FramedAgent,
    *,
    key: str,
    config: Mapping[str, Any] | None = None,
    start: bool = False,
    beat: Mapping[str, Any] | None = None,
    stop: Mapping[str, str] | None = None,
    release: bool = False,
    decisions: int = 10,
    api_key: str | None = None,
) -> Guardian:
    """Start or adopt the host's guardian (*start*), update its *config*, beat for the laptop, ask it to *stop*
    the host now (once, whoever asks first), or *release* it; answers its latest view and decisions. *api_key*:
    the user's cloud key, kept on the host in a 0600 file for a guardian with ``self_stop = "key"``."""
    fields = _fields(
        key=key,
        config=None if config is None else dict(config),
        start=start or None,
        beat=None if beat is None else dict(beat),
        stop=None if stop is None else dict(stop),
        release=release or None,
        decisions=decisions,
        api_key=api_key,
    )
    return cast(Guardian, agent.request("guardian", fields))


class NodeInfo(TypedDict):
    address: str | None
    ports: list[int]
    hostname: str


def node_info(agent: FramedAgent, *, toward: str | None, ports: int = 1) -> NodeInfo:
    """For a multi-host run: the address this host sends from toward *toward*, and *ports* free TCP ports."""
    return cast(NodeInfo, agent.request("node_info", {"toward": toward, "ports": ports}))


# ------------------------------------------------------------------------------------------------- sync


class Manifest(TypedDict):
    count: int
    root: str


def manifest(
    agent: FramedAgent, *, root: str, skip: list[str] | None = None, only: list[str] | None = None
) -> tuple[Manifest, bytes]:
    """Every entry under *root* (or under the *only* subtrees), less *skip*; the rows come zlib-compressed in
    the bytes (gpubox.sync.scan.decode_manifest reads them)."""
    answer, blob = agent.request_with_blob("manifest", _fields(root=root, skip=skip, only=only))
    return cast(Manifest, answer), blob


class ApplyAnswer(TypedDict):
    results: list[list[str]]
    """One per op, in order: ["ok"] (a deletion: ["ok", where in the trash]), ["same"], ["gone"], ["kept"],
    ["conflict", note], ["miss", why] (a move whose origin is not the content named), ["refused", why],
    ["error", why]."""
    conflicts: list[str]
    """"path -> name it was set aside as", one per host file kept aside."""


def apply(
    agent: FramedAgent, *, root: str, trash: str, ops: list[dict[str, Any]], blob: bytes = b""
) -> ApplyAnswer:
    """One batch of writes, links, folders and deletions, each checked against what the client last saw; the
    written files' bytes come one after another in *blob* (or were staged before, see :func:`stage`)."""
    answer, _ = agent.request_with_blob("apply", {"root": root, "trash": trash, "ops": ops}, blob)
    return cast(ApplyAnswer, answer)


def apply_batches(
    agent: FramedAgent,
    batches: Iterable[tuple[list[dict[str, Any]], bytes]],
    *,
    root: str,
    trash: str,
    depth: int,
) -> Iterator[ApplyAnswer]:
    """:func:`apply` for each (ops, bytes) batch, up to *depth* ahead of their answers; answers in order. Every
    batch but the last says ``more``: the host keeps its staging folder for the next (PROTOCOL.md)."""
    requests = (
        ("apply", {"root": root, "trash": trash, "ops": ops, **({"more": True} if more else {})}, blob)
        for (ops, blob), more in _marking_more(batches)
    )
    answers = agent.pipeline(requests, depth)
    try:
        for answer, _ in answers:
            yield cast(ApplyAnswer, answer)
    finally:
        answers.close()  # a consumer that stops early: the pipeline reads the answers still due


T = TypeVar("T")


def _marking_more(items: Iterable[T]) -> Iterator[tuple[T, bool]]:
    """Each item with whether another follows (one item of lookahead)."""
    iterator = iter(items)
    for previous in iterator:
        for item in iterator:
            yield previous, True
            previous = item
        yield previous, False


class FlushAnswer(TypedDict):
    files: int
    how: str
    """"syncfs" (the whole filesystem at once), "fsync" (each file and its folders) or "nothing"."""


def flush(agent: FramedAgent, *, root: str, paths: list[str] | None = None) -> FlushAnswer:
    """Make durable on the host's disk what this agent wrote under *root* since the last flush, and *paths*
    (written by an earlier agent whose flush was never answered)."""
    return cast(FlushAnswer, agent.request("flush", _fields(root=root, paths=paths)))


def stage(agent: FramedAgent, *, root: str, name: str | None, offset: int, blob: bytes) -> str:
    """Write one piece of a file too large for one frame into the host's staging folder; returns the staged
    file's name (a new one when *name* is None), which the finishing :func:`apply` op names as ``s``."""
    answer = agent.request("stage", {"root": root, "name": name, "offset": offset}, blob)
    return str(answer.get("name") or "")


def discard_staged(agent: FramedAgent, *, root: str, name: str) -> None:
    """Remove a file staged by :func:`stage` that will not be applied (it grew past the size limit)."""
    agent.request("stage", {"root": root, "name": name, "offset": 0, "discard": True})


class ReadAnswer(TypedDict):
    files: list[list[Any]]
    """One per file asked: [path, [size, mtime_ns, executable] or None, error or None, bytes in the blob]."""


def read(agent: FramedAgent, *, root: str, files: list[list[Any]]) -> tuple[ReadAnswer, bytes]:
    """Byte ranges of files under *root*: *files* is [[path, offset, length], ...]; the bytes follow in order."""
    answer, blob = agent.request_with_blob("read", {"root": root, "files": files})
    return cast(ReadAnswer, answer), blob


def prune_trash(agent: FramedAgent, *, trash: str, days: float) -> int:
    """Remove this project's trash batches older than *days* on the host; returns how many went."""
    answer = agent.request("prune_trash", {"trash": trash, "days": days})
    return int(answer.get("removed", 0))


# ------------------------------------------------------------------------------------------ runs and envs

RunState = Literal["starting", "running", "succeeded", "failed", "stopped", "lost"]


class RunProject(TypedDict, total=False):
    id: str
    name: str
    folder: str
    """The project's folder on the host (the run's cwd may be a subfolder of it)."""


class RunRow(TypedDict):
    id: str
    command: str
    name: str | None
    cwd: str | None
    state: RunState
    pid: int | None
    started_at: float | None
    ended_at: float | None
    exit_code: int | None
    log_bytes: int
    project: NotRequired[RunProject | None]
    """The project that started it (None, or absent from an older agent, for runs from before project ids)."""
    progress: dict[str, Any] | None
    """Of a running run: {"epoch", "epochs", "epochs_logged", "metrics", "eta_seconds"}, each when known."""
    mine: NotRequired[bool]
    """In a dash answer asked for a project: whether the run is that project's."""


def run_start(
    agent: FramedAgent,
    *,
    project: str,
    shell: str,
    name: str | None,
    env: dict[str, str],
    venv: str | None,
    owner: dict[str, str] | None = None,
    cwd: str | None = None,
    outputs: list[str] | None = None,
) -> RunRow:
    """Start *shell* detached in the host's folder *project* (in its subfolder *cwd* when given, inside *venv*
    when given), recorded as a run of the project *owner* ({"id", "name"}); *outputs* are the project's output
    folders (relative to *project*), where the run's TensorBoard event files are looked for."""
    request = {"project": project, "shell": shell, "name": name, "env": env, "venv": venv}
    return cast(
        RunRow, agent.request("run_start", request | _fields(owner=owner, cwd=cwd or None, outputs=outputs))
    )


class RunList(TypedDict):
    runs: list[RunRow]


def run_list(agent: FramedAgent, *, ids: list[str] | None = None) -> RunList:
    """The runs *ids* (an unknown one is a ``no-such-run`` error), or every run on the host, oldest first."""
    return cast(RunList, agent.request("run_list", {"ids": ids}))


class RunLog(TypedDict):
    run: RunRow
    size: int


def run_log(
    agent: FramedAgent, *, run_id: str, offset: int = 0, max_bytes: int = 1 << 20
) -> tuple[RunLog, bytes]:
    """Up to *max_bytes* of the run's log from byte *offset*, with the run's row (read first: once it says the
    run ended, every byte it wrote is in the file) and the log's size."""
    answer, blob = agent.request_with_blob("run_log", {"id": run_id, "offset": offset, "max": max_bytes})
    return cast(RunLog, answer), blob


def run_stop(agent: FramedAgent, *, run_id: str, grace: float = 10.0) -> RunRow:
    """SIGTERM the run's process group, SIGKILL it after *grace* seconds; the row once it ended."""
    return cast(RunRow, agent.request("run_stop", {"id": run_id, "grace": grace}))


class EnvReady(TypedDict):
    ready: bool
    path: str


def env_ready(agent: FramedAgent, *, key: str) -> EnvReady:
    """Whether the project env ``~/.gpubox/envs/<key>`` is built (its marker is written last)."""
    return cast(EnvReady, agent.request("env_ready", {"key": key}))


# --------------------------------------------------------------------------------------------- services


class ServiceRow(TypedDict):
    name: str
    state: Literal["running", "starting", "stopped"]
    pid: int | None
    """None unless its process lives."""
    port: int | None
    """None only for a folder whose spec.json is missing or unreadable."""
    secret: str | None
    command: str | None
    log: str
    key: NotRequired[str]
    """In a service_list answer: the project key the service belongs to."""
    rss_bytes: NotRequired[int | None]
    """In a service_list answer: the resident memory of its process group (None when it is not running)."""


class StartedService(TypedDict):
    """A service_ensure answer: the row of a service that answers on its port."""

    name: str
    state: Literal["running", "starting", "stopped"]
    """"running" but for a race: the answer's row is read again after the port answered."""
    pid: int | None
    port: int
    secret: str | None
    command: str
    log: str
    reused: bool
    """Whether the same service already ran and answered (and was kept, with its secret)."""


def service_ensure(
    agent: FramedAgent,
    *,
    key: str,
    name: str,
    command: str,
    port: int,
    cwd: str,
    venv: str | None,
    secret: str | None,
    env: dict[str, str],
    wait: float = 60,
) -> StartedService:
    """Start the service unless the same one already runs and answers; wait up to *wait* s for its port."""
    request = {
        "key": key,
        "name": name,
        "command": command,
        "port": port,
        "cwd": cwd,
        "venv": venv,
        "secret": secret,
        "env": env,
        "wait": wait,
    }
    return cast(StartedService, agent.request("service_ensure", request))


class ServiceList(TypedDict):
    services: list[ServiceRow]


def service_list(agent: FramedAgent, *, key: str | None) -> ServiceList:
    """The services of the project *key*, or of every project on the host when *key* is None."""
    return cast(ServiceList, agent.request("service_list", {"key": key}))


def service_stop(agent: FramedAgent, *, key: str, name: str) -> ServiceRow:
    return cast(ServiceRow, agent.request("service_stop", {"key": key, "name": name}))


# --------------------------------------------------------------------------------------------- projects


class ProjectOwner(TypedDict, total=False):
    """Who a folder on the host belongs to, as recorded there."""

    id: str
    name: str
    root: str
    """The project's folder on the machine that claimed it."""
    machine: str
    folder: str
    claimed_at: float


class ProjectFolder(TypedDict):
    folder: str
    """The folder settled on, as asked (``folder``, or ``legacy`` when that was adopted)."""
    path: str
    """Its real path on the host."""
    exists: bool
    created: bool
    adopted: bool
    """A folder of an older gpubox that no project owned, now this project's."""
    owner: ProjectOwner | None
    mine: bool


def project_folder(
    agent: FramedAgent,
    *,
    folder: str,
    owner: dict[str, str],
    legacy: str | None = None,
    claim: bool = False,
    take_over: str | None = None,
) -> ProjectFolder:
    """Settle the project's folder on the host: *folder* (or *legacy*, an older gpubox's folder no project owns,
    when *folder* does not exist yet) and its owner; with *claim*, make it and record *owner* unless another
    project owns it (then ``mine`` is false and ``owner`` says whose it is); with *take_over* too (the id of
    its owner, a project gone from its machine), the folder becomes this project's."""
    request = _fields(folder=folder, owner=owner, legacy=legacy, claim=claim, take_over=take_over)
    return cast(ProjectFolder, agent.request("project_folder", request))


class Projects(TypedDict):
    projects: list[ProjectOwner]


def projects(agent: FramedAgent) -> Projects:
    """Every project folder on the host with its owner."""
    return cast(Projects, agent.request("projects", {}))


# ------------------------------------------------------------------------------------------- dashboard


class DashRun(TypedDict):
    id: str
    offset: int
    size: int
    scalars: dict[str, dict[str, Any]]
    """{"train/epoch_loss": {"from": n, "points": [[step, value], ...]}, ...}: the points after the n the
    client already has."""


class DashAnswer(TypedDict):
    time: float
    nvidia_smi: NvidiaSmi | None
    runs: list[RunRow]
    run: DashRun | None


def dash(
    agent: FramedAgent,
    *,
    gpu: bool = True,
    recent: int = 10,
    project: str | None = None,
    owner: str | None = None,
    run: str | None = None,
    log_offset: int | None = None,
    scalars: dict[str, int] | None = None,
    points: int | None = None,
    log_tail: int | None = None,
    log_max: int | None = None,
) -> tuple[DashAnswer, bytes]:
    """One dashboard refresh of one host: GPUs, the runs going and the *recent* latest ended of the project (its id
    *owner*, or its folder *project* for runs from before project ids), and for the selected *run* its new
    scalar points and the next piece of its log (the bytes)."""
    request = _fields(
        gpu=gpu,
        recent=recent,
        project=project,
        owner=owner,
        run=run,
        log_offset=log_offset,
        scalars=scalars,
        points=points,
        log_tail=log_tail,
        log_max=log_max,
    )
    answer, blob = agent.request_with_blob("dash", request)
    return cast(DashAnswer, answer), blob
