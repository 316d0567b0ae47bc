"""`gpubox up`: the one sequence that brings a host up and holds it.

    check_free  → nothing holds the host yet and its budget is not spent
    rent        → a rented host is launched (after the price is asked) or found running
    connect     → SSH, the agent, the probe; the host report
    prepare     → the first sync, the project's env, Jupyter / TensorBoard / custom services
    hold        → claim the host, live sync, tunnels, the money and idle monitor, until stopped

The foreground ``gpubox up --no-tui`` runs it all in its own process. ``gpubox up`` on a terminal, ``--detach`` and
the dashboard run the first two steps where the user is (they may ask), then start the background supervisor
(:func:`gpubox.actions.supervisor.start_supervisor`), which runs ``connect`` → ``prepare`` → ``hold`` and reports
its progress up a structured channel; nothing is done twice.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpubox import paths
from gpubox.actions import Say
from gpubox.actions.env import build_env, ensure_built
from gpubox.actions.framework import project_framework
from gpubox.actions.guardian import cannot_stop_why, guarded, guardian_can_act, self_stop_mode
from gpubox.actions.monitor import HostMonitor, SyncActivity, SyncStatus
from gpubox.actions.runmoney import RunMoneyWatch
from gpubox.actions.services import ServiceWatch
from gpubox.actions.supervisor import claim_host, stop_note, stop_on_signals, supervise
from gpubox.actions.sync import held_lines, host_changed_lines, too_large_line
from gpubox.actions.sync import make_syncer as syncer_for
from gpubox.cost import over_budget
from gpubox.errors import GpuboxError, UsageError
from gpubox.fmt import format_duration, format_usd
from gpubox.remote.control import FLUSH_WAIT, ControlServer, control_path
from gpubox.remote.folder import moved_here_lines
from gpubox.remote.providers import host_price
from gpubox.remote.session import connect_host
from gpubox.remote.tunnels import Tunnel
from gpubox.report import host_report
from gpubox.state import open_state
from gpubox.sync.follow import OutputsFollower
from gpubox.sync.pull import pull
from gpubox.sync.report import report_document
from gpubox.sync.watch import LiveSync
from gpubox.train.env import tools_spec
from gpubox.train.services import ensure_services, ensure_tools, service_key

if TYPE_CHECKING:
    from gpubox.config import HostConfig, HostsConfig, ProjectConfig
    from gpubox.remote.connection import AskToPin
    from gpubox.remote.session import HostSession
    from gpubox.sync.engine import Syncer, SyncReport
    from gpubox.train.services import ServiceState

__all__ = [
    "Prepared",
    "UpOptions",
    "check_free",
    "connect",
    "hold",
    "prepare",
    "rent",
    "tunnel_line",
]


@dataclass(frozen=True)
class UpOptions:
    """What `gpubox up` was asked to do beyond holding the host."""

    sync: bool = True
    services: bool = True
    accept_new: bool = False
    allow_mass_delete: bool = False


@dataclass
class Prepared:
    """A connected host after the first sync, the env and the services: ready to be held."""

    session: HostSession
    syncer: Syncer | None = None
    first_sync: SyncReport | None = None
    venv: str | None = None
    services: list[ServiceState] = field(default_factory=list)
    service_venv: str | None = None
    """The env the services run in (the project's, or one of their own)."""


def check_free(host: HostConfig, hosts: HostsConfig, project: ProjectConfig) -> None:
    """Refuse to bring up a host this project already holds up, or one whose budget is spent. Other projects
    may hold the same host at the same time."""
    with open_state() as state:
        supervisor = state.supervisor(host.name, project.id)
        spent = over_budget(host, hosts, state)
    if supervisor is not None:
        raise UsageError(
            f"{host.name} is already up in gpubox process {supervisor.pid}: `gpubox status` shows it, "
            f"`gpubox up {host.name} --stop` ends it"
        )
    if spent is not None:
        raise GpuboxError(spent)


def rent(host: HostConfig, *, confirm: Callable[[str], bool], say: Say) -> None:
    """A rented host: launch it (after *confirm* agrees to the price) unless an instance is already running."""
    if host.spec.rents:
        from gpubox.provision import ensure_instance

        ensure_instance(host, confirm=confirm, say=say)


def self_stop_question(host: HostConfig, hosts: HostsConfig) -> str | None:
    """The question `up` asks once for a rented host whose cloud gives an instance no key of its own (Lambda),
    when it has an autostop, a budget or a deadline and hosts.toml records no answer yet; None otherwise."""
    if not (host.spec.rents and guarded(host, hosts)) or self_stop_mode(host) is not None:
        return None
    if hosts.path is None or host.spec.self_stop is None:
        return None
    loses = (
        ""
        if host.spec.self_stop.keeps_disk
        else f" ({host.provider} cannot stop one: what is on its disk goes)"
    )
    return (
        f"{host.provider} gives {host.name} no key of its own to stop itself with: may its guardian use your "
        f"{host.provider} API key (${host.provider_settings().api_key_env}), kept on the host in a file only you "
        f"can read, to terminate it if this laptop goes away{loses}? (recorded in {hosts.path.name} as "
        "self_stop; no: it keeps billing while the laptop is away)"
    )


def record_self_stop(host: HostConfig, hosts: HostsConfig, agreed: bool, say: Say) -> None:
    """Write the answer to :func:`self_stop_question` into hosts.toml (its comments kept): never asked again."""
    from gpubox.config.writer import set_host_key

    assert hosts.path is not None
    value = "key" if agreed else "off"
    set_host_key(
        hosts.path, host.name, "self_stop", value, f"answered at `gpubox up` on {time.strftime('%Y-%m-%d')}"
    )
    say(f'recorded self_stop = "{value}" for {host.name} in {hosts.path}')


def connect(
    host: HostConfig,
    project: ProjectConfig,
    *,
    options: UpOptions,
    say: Say,
    ask: AskToPin | None = None,
    started: float | None = None,
) -> HostSession:
    """Open the host (starting the local one), probe it, record it, and say the host report. *started* is when
    the user's wait began (for the connect time shown)."""
    started = time.monotonic() if started is None else started
    # Never through a control socket: this process becomes the holder.
    session = connect_host(host, project, accept_new=options.accept_new, ask=ask, folder="claim", ride=False)
    try:
        with open_state() as state:
            state.record_host(host.name, host.provider, session.spec.endpoint.display)
            state.record_probe(host.name, session.probe)
            others = [s for s in state.host_supervisors(host.name) if s.project != project.id]
        _say_report(session, project, time.monotonic() - started, say)
        if session.folder is not None:
            say(f"  ✓ folder {session.folder.describe()}")
            for line in moved_here_lines(session.folder):
                say(f"  · {line}")
        for other in others:
            say(
                f"  · shared with project {other.project_name} ({other.root or '?'}), held by gpubox process {other.pid}"
            )
    except BaseException:
        session.close()
        raise
    return session


def _say_report(session: HostSession, project: ProjectConfig, elapsed: float, say: Say) -> None:
    endpoint = session.spec.endpoint
    how = "host key made by gpubox" if session.spec.trusted_host_keys else "host key checked"
    say(f"  ✓ connected {endpoint.display} ({how}) in {elapsed:.2f} s")
    # The one rule of `gpubox check` (the project's pin, else the newest), without asking the env (check does).
    framework = project_framework(project)
    for line in host_report(
        session.probe, session.agent.hello, release=framework.release, chosen_by=framework.chosen_by
    ):
        say(line.render())
    host = session.host
    money = [host_price(host, session.probe).label()]
    if host.budget_usd is not None:
        money.append(f"budget {format_usd(host.budget_usd)} (at 100 %: {host.on_budget})")
    if host.autostop_minutes:
        money.append(f"autostop after {host.autostop_minutes:g} min idle")
    if host.max_hours:
        money.append(f"stopped {host.max_hours:g} h after up (max_hours)")
    say("    " + " · ".join(money))
    if guarded(host, None) and not guardian_can_act(host):
        billing = " and billing" if host.spec.rents else ""
        say(f"  ! if this laptop goes away, {host.name} keeps running{billing}: {cannot_stop_why(host)}")


def prepare(
    session: HostSession,
    project: ProjectConfig,
    *,
    options: UpOptions,
    say: Say,
    first_sync: Callable[[Syncer], SyncReport],
    make_syncer: Callable[[HostSession], Syncer],
    env_activity: Callable[[str], None] | None = None,
    watching: bool = True,
    tell_sync: Callable[[SyncReport], None] | None = None,
) -> Prepared:
    """The first sync (through *first_sync*, which may show a progress bar or ask about a mass deletion), the
    project's env (what its build is doing to *env_activity*) and the services. *tell_sync* hears the first
    sync's report after its summary line (the CLI lists what was held back)."""
    prepared = Prepared(session)
    if options.sync:
        prepared.syncer = make_syncer(session)
        report = first_sync(prepared.syncer)
        prepared.first_sync = report
        say(f"  ✓ sync   {report.summary()}" + ("; watching for changes" if watching else ""))
        if tell_sync is not None:
            tell_sync(report)
        prepared.venv = build_env(session, project, say=say, activity=env_activity)
    if options.services:
        prepared.services, prepared.service_venv = start_services(
            session, project, prepared.venv, say=say, env_activity=env_activity
        )
    return prepared


def start_services(
    session: HostSession,
    project: ProjectConfig,
    venv: str | None,
    *,
    say: Say,
    env_activity: Callable[[str], None] | None = None,
) -> tuple[list[ServiceState], str | None]:
    """Jupyter, TensorBoard and custom services on the host, inside the env (one of their own for a project
    that needs none, built the first time); and that env."""
    enabled = [s for s in project.services.values() if s.enabled]
    if not enabled:
        return [], venv
    if venv is None:
        spec = tools_spec(project, str(session.agent.hello.get("python", "")))
        venv = ensure_built(
            session, spec, "for the services", say=say, activity=env_activity, quiet_when_cached=True
        )
    installed = ensure_tools(session, venv, enabled, say=say)
    if installed:
        say(f"  ✓ tools  installed {', '.join(installed)} into the env")
    states = ensure_services(session, project, venv)
    for state in states:
        how = "reused" if state.reused else "started"
        say(f"  ✓ {state.name:<12} {how} on the host's 127.0.0.1:{state.host_port}")
    return states, venv


def tunnel_line(service: str, url: str) -> str:
    """The line that shows a service's tunnel (the same in the foreground, the background and `status`)."""
    hint = "  (`gpubox open jupyter` opens it with its token)" if service == "jupyter" else ""
    return f"  ✓ {service:<12} {url}{hint}"


@dataclass(frozen=True)
class Ready:
    """The host is claimed, live sync runs and the tunnels listen: what the background supervisor reports once."""

    pid: int
    tunnels: Sequence[tuple[str, str]]
    """(service, URL without secrets) for each tunnel."""


def hold(
    prepared: Prepared,
    project: ProjectConfig,
    hosts: HostsConfig,
    *,
    detached: bool,
    say: Say,
    on_ready: Callable[[Ready], None] | None = None,
) -> str:
    """Hold the host until a signal, ``gpubox down`` or the monitor (autostop, budget) ends it: claim it with
    billing running, live sync, tunnels, the monitor and the reconnecting heartbeat. Returns the last line."""
    session = prepared.session
    host = session.host
    stop = threading.Event()
    wake = threading.Event()
    started = time.monotonic()
    activity = SyncActivity()
    sync_status = SyncStatus()
    if prepared.first_sync is not None:
        sync_status.batch(prepared.first_sync, "start")
    with (
        stop_on_signals(stop, wake),
        claim_host(
            host, project, folder=session.remote_dir, detached=detached, probe=session.probe
        ) as billing,
    ):
        live = (
            start_live_sync(
                prepared.syncer, session, wake, say=say, on_change=activity.touch, status=sync_status
            )
            if prepared.syncer is not None
            else None
        )
        remembered = _tunnel_ports(project, host.name)
        tunnels = [
            (
                state,
                Tunnel(
                    lambda: session.connection.transport,
                    state.host_port,
                    local_port=remembered.get(state.name),
                    name=state.name,
                    on_link_lost=wake.set,
                    on_failure=lambda text: say(_step(f"! {text}")),
                ).start(),
            )
            for state in prepared.services
        ]
        _remember_tunnel_ports(project, host.name, {state.name: t.local_port for state, t in tunnels})
        ServiceWatch(
            session,
            project,
            prepared.service_venv,
            {state.name: tunnel for state, tunnel in tunnels},
            say=lambda text: say(_step(text)),
            stop=stop,
        ).start()
        with open_state() as database:
            database.record_tunnels(
                host.name,
                os.getpid(),
                [(state.name, tunnel.local_port, state.host_port, state.path) for state, tunnel in tunnels],
                project=project.id,
                service_key=service_key(session),
            )
        shown = [(state.name, state.url(tunnel.local_port, show_secret=False)) for state, tunnel in tunnels]
        for name, url in shown:
            say(tunnel_line(name, url))
        if not detached:
            watched = (
                ", its guardian still watching" if guarded(host, hosts) and guardian_can_act(host) else ""
            )
            say(
                f"  holding {host.name}: Ctrl-C leaves it running{watched} (`gpubox down {host.name}` stops it)"
            )
        control = _serve_control(session, project, say, live)
        if on_ready is not None:
            on_ready(Ready(os.getpid(), shown))
        monitor = HostMonitor(
            session,
            host,
            stop=stop,
            say=lambda text: say(_step(text)),
            billing=billing,
            hosts=hosts,
            activity=activity,
            sync=sync_status,
            project=project,
        )
        follower = None
        if prepared.syncer is not None and project.sync.pull_outputs_seconds > 0:
            # Its own Syncer: the follower's thread must not share live sync's caches.
            follower = OutputsFollower(
                session,
                project,
                syncer_for(session, project, host),
                every=project.sync.pull_outputs_seconds,
                say=lambda text: say(_step(text)),
            ).start()
            monitor.published["outputs"] = follower.document
            monitor.before_stop = follower.final
        elif host.spec.rents:
            monitor.before_stop = lambda: _pull_before_terminate(session, project)
        money = RunMoneyWatch(
            session, project, hosts, billing.price, say=lambda text: say(_step(text))
        ).start()
        monitor.published["runs"] = money.document
        try:
            supervise(session, stop=stop, wake=wake, say=lambda text: say(_step(text)), monitor=monitor)
        finally:
            if control is not None:
                control.close()
            money.stop()
            if follower is not None:
                follower.stop()
            if live is not None:
                live.stop()
            for _state, tunnel in tunnels:
                tunnel.stop()
            with open_state() as database:
                database.clear_tunnels(host.name, os.getpid())
    held = format_duration(time.monotonic() - started)
    if monitor.outcome is not None:
        return f"  left {host.name} after {held}: {monitor.outcome}"
    next_step = stop_note()
    if next_step is not None:
        return f"  left {host.name} after {held}: {next_step}"
    return f"  left {host.name} after {held}; the host keeps running"


def _serve_control(
    session: HostSession, project: ProjectConfig, say: Say, live: LiveSync | None
) -> ControlServer | None:
    """Let this project's one-shot commands ride the held connection, and use *live*'s flush barrier instead of
    a sync of their own (see :mod:`gpubox.remote.control`)."""
    from gpubox.remote.session import start_agent

    host = session.host
    path = control_path(host.name, project.id)
    flush = None
    if live is not None:
        flush = functools.partial(_flush_for_command, live)
    try:
        return ControlServer(
            path, lambda: start_agent(session.connection, host), label=host.name, flush=flush
        ).start()
    except OSError as exc:
        say(
            _step(
                f"! other commands connect on their own: no control socket at {path} ({exc.strerror or exc})"
            )
        )
        return None


def _flush_for_command(live: LiveSync, verify: bool) -> dict[str, Any]:
    """A command's flush barrier (`gpubox run`, `gpubox sync`), answered for the control socket: everything saved
    before it asked is on the host; with *verify*, the host's listing was compared too (what `run` reports of
    files edited on the host, and a file removed there sent again)."""
    outcome = live.flush(timeout=FLUSH_WAIT)
    if isinstance(outcome, str):
        return {"ok": False, "error": outcome}
    if verify:
        checked = live.syncer.paths((), verify=True)
        if checked.sent or checked.deleted or checked.moved or checked.conflicts or checked.errors:
            live.on_report(checked, "a command's check of the host")
        outcome.then(checked)
        outcome.host_changed, outcome.verified = checked.host_changed, True
    return {"ok": True, "report": report_document(outcome)}


def _tunnel_ports_file() -> Path:
    return paths.state_dir() / "tunnel-ports.json"


def _tunnel_ports(project: ProjectConfig, host: str) -> dict[str, int]:
    """The local port each service's tunnel had last time for this project and host: used again when free, so
    bookmarked URLs keep working across `down` and `up`."""
    try:
        known = json.loads(_tunnel_ports_file().read_text()).get(project.id, {}).get(host, {})
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(known, dict):
        return {}
    return {str(name): port for name, port in known.items() if isinstance(port, int) and 0 < port < 65536}


def _remember_tunnel_ports(project: ProjectConfig, host: str, ports: dict[str, int]) -> None:
    path = _tunnel_ports_file()
    try:
        known = json.loads(path.read_text())
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    known.setdefault(project.id, {})[host] = ports
    with contextlib.suppress(OSError):
        paths.ensure_private_dir(path.parent)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(known, indent=1, sort_keys=True))
        os.replace(temporary, path)


def _step(text: str) -> str:
    """A progress line as `up` shows it: problems marked ``!``, the rest ``·``."""
    return f"  {text}" if text.startswith("! ") else f"  · {text}"


def _pull_before_terminate(session: HostSession, project: ProjectConfig) -> str:
    """Autostop or a spent budget is about to terminate a rented host: its outputs come home first."""
    report = pull(session, project, [])
    if report.errors:
        raise GpuboxError(f"pulling its outputs failed ({report.errors[0]})")
    return f"pulled outputs: {report.summary()}"


def start_live_sync(
    syncer: Syncer,
    session: HostSession,
    wake: threading.Event,
    *,
    say: Say,
    on_change: Callable[[], None] | None = None,
    status: SyncStatus | None = None,
) -> LiveSync:
    """Live sync for a held host; *on_change* hears of every batch that changed the host (activity), *status*
    of every batch and problem (the monitor report publishes it for the dashboard)."""

    told_large: set[str] = set()
    told_changed: set[str] = set()
    told_held: list[int] = [0]
    host = session.host.name
    limit_mb = syncer.project.sync.max_file_size_mb

    def reported(report: SyncReport, why: str) -> None:
        if status is not None:
            status.batch(report, why)
        if on_change is not None and (report.sent or report.deleted or report.moved):
            on_change()
        if (
            report.sent
            or report.deleted
            or report.moved
            or report.conflicts
            or report.errors
            or report.kept_on_host
        ):
            say(f"  · sync ({why}): {report.summary()}")
        for conflict in report.conflicts:
            say(f"  ! conflict: the host's copy was kept as {conflict}")
        for error in report.errors:
            say(f"  ! sync error: {error}")
        # What sync did not do is said once, not at every rescan.
        kept = set(report.too_large_kept)
        for path, size in report.too_large:
            if path not in told_large:
                told_large.add(path)
                say("  ! " + too_large_line(path, size, limit_mb, kept=path in kept))
        held = len(report.held_deletions)
        if held != told_held[0]:
            if held:
                for line in held_lines(held, report.held_reason, host):
                    say(f"  {line}")
            else:
                say(f"  · sync: no deletions held back on {host} any more")
            told_held[0] = held
        if report.verified:
            fresh = [path for path in report.host_changed if path not in told_changed]
            told_changed.intersection_update(report.host_changed)
            told_changed.update(fresh)
            for line in host_changed_lines(fresh, host):
                say(f"  {line}")

    def problem(text: str) -> None:
        if status is not None:
            status.problem(text)
        say(f"  ! {text}")

    live = LiveSync(
        syncer,
        on_report=reported,
        on_problem=problem,
        # A dropped link is said, not counted: `status` counts errors, and a day of Wi-Fi blips is not one.
        on_paused=lambda text: say(f"  ! {text}"),
        on_link_lost=wake.set,
        link_generation=lambda: session.generation,
    ).start()
    if status is not None:
        status.watching = live.watching
        status.pending = lambda: live.pending
    return live
