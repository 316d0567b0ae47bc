"""What the command line and the dashboard both do to hosts and runs, without printing anything.

Each function connects (or is handed a session), acts through the rooms below (``sync``, ``train``, ``remote``,
``cost``) and returns what happened; the caller decides how to show it. ``gpubox.cli`` prints the results as
lines, ``gpubox.tui`` as rows, notifications and screens. Nothing here imports Textual.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpubox.errors import GpuboxError, UsageError
from gpubox.remote.agent import calls

if TYPE_CHECKING:
    from gpubox.config import HostConfig, HostsConfig, ProjectConfig
    from gpubox.remote.connection import AskToPin
    from gpubox.remote.gpu import CheckResult, FrameworkRelease
    from gpubox.remote.session import HostSession
    from gpubox.state import TunnelRecord
    from gpubox.sync.engine import Syncer, SyncReport
    from gpubox.sync.pull import PullReport
    from gpubox.train.runs import RunInfo

__all__ = [
    "Supervised",
    "autostop_text",
    "check_host",
    "host_rows",
    "launch_run",
    "make_syncer",
    "prepare_run",
    "project_env",
    "pull_outputs",
    "remember_runs",
    "requirements_file",
    "service_url",
    "start_supervisor",
    "stop_host_services",
    "stop_one_run",
    "sync_now",
    "take_down",
    "target",
]

Say = Callable[[str], None]


def _quiet(text: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------- hosts


def target(host: HostConfig) -> str:
    """Where a host is, in a few words: ``ubuntu@1.2.3.4:22 via jump``."""
    if host.spec.runs_own_sshd:
        return "private sshd on 127.0.0.1"
    if host.spec.rents:
        wanted = host.instance_type or f"{host.gpu_count}× {host.gpu}"
        return f"rented: {wanted}" + (f" in {host.region}" if host.region else "")
    where = host.hostname or host.name
    if host.user:
        where = f"{host.user}@{where}"
    if host.port:
        where += f":{host.port}"
    if host.proxy_jump:
        where += f" via {host.proxy_jump}"
    return where


def host_rows(hosts: HostsConfig, now: float | None = None) -> list[dict[str, Any]]:
    """Every configured host as `gpubox hosts --json` shows it: who holds it, price, spend and budgets.

    Reads only the state database; never connects."""
    from gpubox.cost import budgets_for, host_spend
    from gpubox.remote.gpu import load_rules
    from gpubox.remote.providers import host_price
    from gpubox.report import short_gpu
    from gpubox.state import open_state

    rows = []
    now = time.time() if now is None else now
    # `gpubox hosts` judges the GPUs for the newest TensorFlow gpubox knows; `gpubox check` for the project's own.
    newest = load_rules().newest("tensorflow")
    with open_state() as state:
        ledger = state.billing()
        alerts = state.budget_alerts()
        for host in hosts.hosts.values():
            record = state.host(host.name)
            supervisor = state.supervisor(host.name)
            price = host_price(host, record.probe if record else None)
            spend = host_spend((i for i in ledger if i.host == host.name), now)
            rows.append(
                {
                    "name": host.name,
                    "provider": host.provider,
                    "target": target(host),
                    "up": supervisor is not None,
                    "supervisor": None
                    if supervisor is None
                    else {
                        "pid": supervisor.pid,
                        "detached": supervisor.detached,
                        "since": supervisor.started_at,
                    },
                    "endpoint": record.endpoint if record else None,
                    "gpu": short_gpu(record.probe if record else None, release=newest),
                    "probed_at": record.probed_at if record else None,
                    "price_per_hour": price.amount,
                    "price_source": price.source,
                    "price_estimate": price.estimate,
                    "spent_usd": round(spend.spent_usd, 4),
                    "hours": round(spend.seconds / 3600, 6),
                    "billing_now": spend.billing_now,
                    "budgets": [
                        {"scope": b.scope} | b.document(alerts) for b in budgets_for(host, hosts, ledger, now)
                    ],
                    "on_budget": host.on_budget,
                    "default": host.name == hosts.default_host,
                }
            )
    return rows


def autostop_text(autostop: Mapping[str, Any] | None, minutes: float) -> str:
    """The autostop line of `gpubox status` from a monitor report's ``autostop`` part (with
    ``remaining_seconds`` counted down to now)."""
    from gpubox.fmt import format_duration

    if not minutes:
        return "off (set autostop_minutes in hosts.toml)"
    if autostop is None:
        return f"after {minutes:g} min idle (no report from the holding gpubox yet)"
    phase = autostop["state"]
    if phase == "busy":
        return f"waiting: {'; '.join(autostop['busy'])} (after {minutes:g} min idle)"
    if phase == "starting":
        return f"after {minutes:g} min idle (first look at the host pending)"
    if phase == "stopped":
        return "stopped the host"
    left = format_duration(autostop["remaining_seconds"] or 0)
    action = autostop["action"]
    if phase == "warned":
        return f"idle for {format_duration(autostop['idle_seconds'])}: {action}"
    extra = f"; last activity: {autostop['last_activity']}" if autostop.get("last_activity") else ""
    return (
        f"in {left} ({autostop['gpu']}, idle {format_duration(autostop['idle_seconds'])}{extra}) → {action}"
    )


def service_url(
    host: HostConfig, project: ProjectConfig | None, tunnel: TunnelRecord, *, show_secret: bool
) -> str:
    """The local URL of a tunnelled service (from :meth:`gpubox.state.State.live_tunnels`); Jupyter's token is
    fetched from the host, and put in the URL only when asked."""
    url = f"http://127.0.0.1:{tunnel.local_port}{tunnel.path}"
    if tunnel.service != "jupyter":
        return url
    if not show_secret or project is None:
        return url + "?token=<redacted>"
    from gpubox.remote.session import connect_host
    from gpubox.train.services import service_key

    session = connect_host(host, project.name, probe=False, launch=False)
    try:
        listed = calls.service_list(session.agent, key=service_key(session))
    finally:
        session.close()
    token = next((s.get("secret") for s in listed.get("services", []) if s.get("name") == "jupyter"), None)
    return url + (f"?token={token}" if token else "")


def requirements_file(project: ProjectConfig) -> tuple[str, str] | None:
    """(name, text) of the project's requirements file, when there is one to read a TensorFlow pin from."""
    from gpubox.errors import BadInput

    name = project.env.requirements or "requirements.txt"
    path = project.root / name
    if not path.is_file():
        return None
    try:
        return name, path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None


# ------------------------------------------------------------------------------------------ up / down


@dataclass(frozen=True)
class Supervised:
    """A background `gpubox up` that holds a host."""

    pid: int
    log_path: Path


def start_supervisor(
    host: HostConfig,
    *,
    accept_new: bool = False,
    no_sync: bool = False,
    no_services: bool = False,
    timeout: float = 60.0,
    on_line: Say | None = None,
    should_stop: Callable[[], bool] | None = None,
    cwd: Path | None = None,
) -> Supervised:
    """Start the `gpubox up` process that holds *host* from the background (its own session, log in the state
    folder) and return once it has claimed the host. *on_line* hears each line it logs meanwhile (connect,
    sync, env, services), so a caller can show the progress; *timeout* counts from its last line. It runs in
    *cwd*, the project folder (default: this process's)."""
    import subprocess

    from gpubox import paths
    from gpubox.state import open_state

    log_dir = paths.ensure_private_dir(paths.state_dir() / "logs")
    log_path = log_dir / f"up-{host.name}.log"
    command = [sys.executable, "-m", "gpubox", "up", host.name, "--no-tui", "--supervise-child"]
    if accept_new:
        command.append("--accept-new")
    if no_sync:
        command.append("--no-sync")
    if no_services:
        command.append("--no-services")
    with open(log_path, "ab") as log:
        start = log.tell()
        child = subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + timeout
    seen = start

    def follow() -> None:
        nonlocal seen, deadline
        if on_line is None:
            return
        with open(log_path, "rb") as handle:
            handle.seek(seen)
            data = handle.read()
        complete = data.rfind(b"\n") + 1
        for line in data[:complete].decode("utf-8", "replace").splitlines():
            if line.strip():
                on_line(line.rstrip())
        if complete:
            seen += complete
            deadline = time.monotonic() + timeout  # a building env is progress, not a hang

    while time.monotonic() < deadline:
        follow()
        with open_state() as state:
            holder = state.supervisor(host.name)
        if holder is not None and holder.pid == child.pid:
            follow()
            return Supervised(child.pid, log_path)
        if child.poll() is not None:
            follow()
            with open(log_path, "rb") as handle:
                handle.seek(start)
                lines = handle.read().decode("utf-8", "replace").strip().splitlines()
            raise GpuboxError(
                f"the background gpubox for {host.name} exited: {(lines[-1:] or ['no output'])[0]}"
            )
        if should_stop is not None and should_stop():
            child.terminate()
            raise GpuboxError(f"gave up bringing {host.name} up")
        time.sleep(0.05)
    raise GpuboxError(
        f"the background gpubox for {host.name} did not come up within {timeout:g} s (log {log_path})"
    )


def stop_host_services(
    host: HostConfig, project: ProjectConfig, *, every_project: bool = False, say: Say = _quiet
) -> list[str]:
    """Stop this project's services on the host (every project's, when the host itself is going down), when it
    can be reached without starting it; return the names stopped."""
    from gpubox.errors import HostError
    from gpubox.remote.providers import provider_for
    from gpubox.remote.session import connect_host
    from gpubox.train.services import service_key

    if provider_for(host).status(host).state == "stopped":
        return []
    try:
        session = connect_host(host, project.name, probe=False, launch=False)
    except HostError as exc:
        say(f"  ! could not reach {host.name} to stop its services: {exc}")
        return []
    stopped = []
    try:
        key = None if every_project else service_key(session)
        listed = calls.service_list(session.agent, key=key).get("services", [])
        for service in listed:
            if service.get("state") != "stopped":
                calls.service_stop(session.agent, key=service["key"], name=service["name"])
                stopped.append(str(service["name"]))
    finally:
        session.close()
    if stopped:
        say(f"stopped {', '.join(stopped)} on {host.name}")
    return stopped


def take_down(
    host: HostConfig,
    project: ProjectConfig,
    *,
    keep_instance: bool = False,
    say: Say = _quiet,
    pull_outputs: bool = True,
    confirm: Callable[[str], bool] | None = None,
    ask_to_pin: AskToPin | None = None,
) -> None:
    """`gpubox down`: end the process holding *host*, stop its services, stop the host where gpubox runs or
    rents it (unless *keep_instance*), and close its billing. A rented host's outputs are pulled first (unless
    not *pull_outputs*); *confirm* is asked before terminating one under active runs."""
    from gpubox.remote.providers import provider_for
    from gpubox.state import open_state
    from gpubox.supervisor import stop_supervisor

    pid = stop_supervisor(host.name)
    if pid:
        say(f"stopped gpubox process {pid} holding {host.name}")
    if host.spec.rents:
        from gpubox.provision import take_down_rented

        take_down_rented(
            host,
            project,
            keep_instance=keep_instance,
            pull_outputs=pull_outputs,
            confirm=confirm,
            say=say,
            ask_to_pin=ask_to_pin,
        )
        return
    # Stopping the local host stops its sshd, but not servers it started: stop every project's then.
    stop_host_services(host, project, every_project=host.spec.runs_own_sshd and not keep_instance, say=say)
    if keep_instance:
        say(f"kept {host.name} running (--keep-instance)")
    else:
        say(provider_for(host).terminate(host))
    with open_state() as state:
        state.close_billing(host.name)


# ------------------------------------------------------------------------------------------ sync, runs


def make_syncer(
    session: HostSession | Callable[[], HostSession], project: ProjectConfig, host: HostConfig
) -> Syncer:
    """A Syncer for *host*; given a connect callable instead of a session, it connects only if it must."""
    from gpubox.sync.engine import Syncer

    settings = project.sync
    return Syncer(
        session,
        project,
        host_name=host.name,
        remote_dir=host.remote_project_dir(project.name),
        max_delete_count=settings.max_delete_count,
        max_delete_share=settings.max_delete_share,
        trash_days=settings.trash_days,
    )


def sync_now(host: HostConfig, project: ProjectConfig, *, allow_mass_delete: bool = False) -> SyncReport:
    """One full one-way-safe pass, like `gpubox sync` (connects only when there is something to send)."""
    from gpubox.remote.session import connect_host

    sessions: list[HostSession] = []

    def connect() -> HostSession:
        sessions.append(connect_host(host, project.name, probe=False, launch=False))
        return sessions[-1]

    try:
        return make_syncer(connect, project, host).full(allow_mass_delete=allow_mass_delete)
    finally:
        for session in sessions:
            session.close()


def pull_outputs(host: HostConfig, project: ProjectConfig, paths: Sequence[str] = ()) -> PullReport:
    """`gpubox pull`: the outputs folders (or *paths*) back from the host, incrementally."""
    from gpubox.remote.session import connect_host
    from gpubox.sync.pull import pull

    session = connect_host(host, project.name, probe=False, launch=False)
    try:
        return pull(session, project, list(paths))
    finally:
        session.close()


def remember_runs(host: str, runs: Sequence[RunInfo]) -> None:
    """Cache what the host said about these runs, so `gpubox cost` can price them without connecting."""
    from gpubox.state import open_state

    with open_state() as state:
        state.cache_runs(host, runs)


def project_env(session: HostSession, project: ProjectConfig, *, show: Any = None) -> tuple[str | None, bool]:
    """Build (or reuse) the project's env on the host: (its path or None when the project needs none, whether
    it was already built)."""
    from gpubox.train.env import ensure_env, env_spec

    spec = env_spec(project, str(session.agent.hello.get("python", "")))
    if spec is None:
        return None, True
    return ensure_env(session, spec, show=show)


def prepare_run(
    session: HostSession,
    project: ProjectConfig,
    host: HostConfig,
    argv: Sequence[str],
    *,
    name: str | None = None,
    sync: bool = True,
    say: Say = _quiet,
) -> RunInfo:
    """`gpubox run` up to the start: sync (the run starts only once the host has acknowledged the project as it
    is now), build or reuse the env, start *argv* detached, and cache it."""
    from gpubox.train.env import env_spec
    from gpubox.train.runs import start_run

    if not argv:
        raise UsageError("nothing to run: give a command after `--`, or set [run] command in gpubox.toml")
    if sync:
        report = make_syncer(session, project, host).full(allow_mass_delete=False)
        if report.sent or report.deleted:
            say(f"synced {host.name}: {report.summary()}")
    spec = env_spec(project, str(session.agent.hello.get("python", "")))
    venv, cached = project_env(session, project)
    if spec is not None and not cached:
        say(f"  ✓ env    {spec.path} ({spec.requirements or 'setup commands'}, built)")
    run = start_run(session, argv, name=name, venv=venv)
    remember_runs(host.name, [run])
    return run


def launch_run(
    host: HostConfig,
    project: ProjectConfig,
    argv: Sequence[str],
    *,
    name: str | None = None,
    sync: bool = True,
    say: Say = _quiet,
) -> RunInfo:
    """:func:`prepare_run` on a connection of its own."""
    from gpubox.remote.session import connect_host

    session = connect_host(host, project.name, probe=False, launch=False)
    try:
        return prepare_run(session, project, host, argv, name=name, sync=sync, say=say)
    finally:
        session.close()


def stop_one_run(host: HostConfig, project: ProjectConfig, run_id: str, *, grace: float = 10.0) -> RunInfo:
    """`gpubox stop RUN`: SIGTERM to its process group, SIGKILL after *grace* seconds."""
    from gpubox.remote.session import connect_host
    from gpubox.train.runs import check_run_id, stop_run

    check_run_id(run_id)
    session = connect_host(host, project.name, probe=False, launch=False)
    try:
        run = stop_run(session, run_id, grace_seconds=grace)
    finally:
        session.close()
    remember_runs(host.name, [run])
    return run


# ------------------------------------------------------------------------------------------------ check


def check_host(
    host: HostConfig,
    project: ProjectConfig,
    *,
    requested: FrameworkRelease | None = None,
    accept_new: bool = False,
    ask: AskToPin | None = None,
) -> CheckResult:
    """`gpubox check HOST`: probe the host (starting only the free local one), ask its TensorFlow what it sees,
    and decide."""
    from gpubox.remote import gpu
    from gpubox.remote.session import connect_host
    from gpubox.state import open_state

    view: gpu.FrameworkView | None = None
    session = connect_host(host, project.name, accept_new=accept_new, ask=ask, launch=host.spec.runs_own_sshd)
    try:
        with open_state() as state:
            state.record_host(session.host.name, session.host.provider, session.spec.endpoint.display)
            state.record_probe(session.host.name, session.probe)
        snapshot = gpu.snapshot_from_probe(session.probe.get("nvidia_smi") or {})
        if requested is None or requested.name == "tensorflow":
            # Until projects get their own environment on the host, the interpreter gpubox runs there is where
            # an installed TensorFlow would be.
            python = (session.probe.get("python") or {}).get("executable") or host.python
            view = gpu.FrameworkView.from_agent(calls.framework(session.agent, python=python))
    finally:
        session.close()
    return gpu.run_check(
        snapshot,
        host=host.name,
        requested=requested,
        framework_view=view,
        requirements=requirements_file(project),
    )
