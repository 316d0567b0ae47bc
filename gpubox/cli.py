"""The ``gpubox`` command line: parse, call into the rooms of the package, print.

Kept light on purpose: ``gpubox --help`` must not import paramiko, textual, watchdog or tensorflow, so every
heavy import happens inside the command that needs it. argparse (stdlib) rather than click or typer for the
same reason: it costs nothing at import time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from gpubox import __version__
from gpubox.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, GpuboxError, UsageError

if TYPE_CHECKING:
    import threading

    from gpubox.config import HostConfig, HostsConfig, ProjectConfig
    from gpubox.monitor import SyncStatus
    from gpubox.remote.session import HostSession
    from gpubox.state import TunnelRecord
    from gpubox.sync.engine import Syncer, SyncReport
    from gpubox.sync.watch import LiveSync
    from gpubox.train.runs import RunInfo
    from gpubox.train.services import ServiceState

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse, but bad usage is one line and exit 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _seconds(text: str) -> float:
    """A number of seconds for an option: finite and not negative (argparse turns the error into usage)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _out(text: str = "") -> None:
    print(text, flush=True)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _json(document: Any) -> None:
    print(json.dumps(document, indent=2, sort_keys=False))


# ------------------------------------------------------------------------------------------- loading


def _project() -> ProjectConfig:
    from gpubox.config import load_project

    return load_project()


def _hosts(project: ProjectConfig | None = None) -> HostsConfig:
    from gpubox.config import load_hosts

    return load_hosts((project or _project()).root)


def _ask_to_pin() -> Callable[[str, str, str], bool] | None:
    """On a terminal, ask before pinning an unknown host key; elsewhere refuse (the caller says how to accept)."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None

    def ask(host: str, key_type: str, fingerprint: str) -> bool:
        _err(f"The authenticity of host {host} can't be established.")
        _err(f"{key_type} key fingerprint is {fingerprint}.")
        try:
            answer = input("Pin this key and connect? [y/N] ")
        except EOFError:
            return False
        return answer.strip().lower() in ("y", "yes")

    return ask


def _confirm(question: str, *, yes: bool) -> bool:
    """Ask a yes/no question on the terminal; ``--yes`` answers it. Without a terminal and without ``--yes``,
    refuse clearly instead of guessing."""
    from gpubox.errors import UsageError

    if yes:
        _out(f"  {question} yes (--yes)")
        return True
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise UsageError(f"{question.rstrip('?')}: asking needs a terminal; pass --yes to go ahead")
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _step(text: str) -> None:
    _out(f"  {text}" if text.startswith("! ") else f"  · {text}")


# ------------------------------------------------------------------------------------------ commands


def cmd_init(args: argparse.Namespace) -> int:
    from importlib.resources import files

    from gpubox.config import HOSTS_FILE, PROJECT_FILE

    folder = os.getcwd()
    written, kept = [], []
    for name, template in ((PROJECT_FILE, "gpubox.example.toml"), (HOSTS_FILE, "hosts.example.toml")):
        target = os.path.join(folder, name)
        if os.path.exists(target):
            kept.append(name)
            continue
        text = files("gpubox.data").joinpath(template).read_text()
        tmp = target + ".tmp"
        with open(tmp, "x") as handle:
            handle.write(text)
        os.replace(tmp, target)
        written.append(name)
    for name in written:
        _out(f"wrote {name}")
    for name in kept:
        _out(f"kept {name} (already there)")
    if HOSTS_FILE in written:
        _out("edit hosts.toml to add your machines; `gpubox up` works right away on the built-in local host")
    return 0


def _host_rows(hosts: HostsConfig) -> list[dict[str, Any]]:
    from gpubox.actions import host_rows

    return host_rows(hosts)


def _target(host: HostConfig) -> str:
    from gpubox.actions import target

    return target(host)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    from gpubox.fmt import columns

    for line in columns([h.upper() for h in headers], rows):
        _out(line)


def _price(amount: float | None) -> str:
    from gpubox.fmt import format_usd

    return "?" if amount is None else format_usd(amount)


def _orphan_check(hosts: HostsConfig) -> tuple[list[dict[str, Any]], list[dict[str, str]], list[str]]:
    """Ask each configured cloud provider for instances gpubox launched that no gpubox holds: (orphans as
    JSON, providers that could not be asked, lines to print)."""
    from gpubox.provision import configured_providers, describe_orphans, find_orphans

    if not configured_providers(hosts):
        return [], [], []
    report = find_orphans(hosts)
    orphans = [
        {
            "provider": o.provider,
            "instance_id": o.instance.instance_id,
            "name": o.instance.name,
            "host": o.host,
            "price_per_hour": o.instance.price_per_hour,
            "started_at": o.instance.started_at,
            "gpu": o.instance.gpu,
            "status": o.instance.status_text,
            "recorded": o.recorded,
            "why": o.why,
        }
        for o in report.orphans
    ]
    problems = [{"provider": name, "problem": problem} for name, problem in report.problems]
    return orphans, problems, describe_orphans(report)


def cmd_hosts(args: argparse.Namespace) -> int:
    hosts = _hosts()
    orphans, problems, orphan_lines = _orphan_check(hosts)
    rows = _host_rows(hosts)
    if args.json:
        _json(
            {
                "config": str(hosts.path) if hosts.path else None,
                "hosts": rows,
                "orphans": orphans,
                "provider_problems": problems,
            }
        )
        return 0
    source = f"from {hosts.path}" if hosts.path else "no hosts.toml found: only the built-in local host"
    _out(f"hosts ({source})")
    _table(
        ["name", "provider", "target", "state", "gpu", "$/h"],
        [
            [
                r["name"] + (" *" if r["default"] else ""),
                r["provider"],
                r["target"],
                "up" if r["up"] else "billing, not held" if r["billing_now"] else "down",
                r["gpu"],
                ("~" if r["price_estimate"] else "") + _price(r["price_per_hour"]),
            ]
            for r in rows
        ],
    )
    for line in orphan_lines:
        _out(line)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import time

    from gpubox.fmt import format_duration, format_usd
    from gpubox.remote.providers import provider_for
    from gpubox.state import open_state

    hosts = _hosts()
    orphans, problems, orphan_lines = _orphan_check(hosts)
    rows = _host_rows(hosts)
    now = time.time()
    with open_state() as state:
        for row in rows:
            host = hosts.hosts[row["name"]]
            instance = provider_for(host).status(host)
            row["instance"] = {"state": instance.state, "detail": instance.detail}
            seen = state.monitor(host.name) if row["up"] else None
            autostop = (seen[1].get("autostop") if seen else None) or None
            if autostop and autostop.get("stops_at") is not None:
                # The supervisor wrote this up to a few seconds ago: count down from now.
                autostop["remaining_seconds"] = round(max(0.0, autostop["stops_at"] - now), 1)
            row["autostop"] = autostop
            row["autostop_minutes"] = host.autostop_minutes
            row["services"] = [
                {"name": tunnel.service, "host_port": tunnel.host_port, "tunnel": tunnel}
                for tunnel in state.live_tunnels(host.name)
            ]
    project = _project() if args.show_secrets else None
    for row in rows:
        for service in row["services"]:
            tunnel = service.pop("tunnel")
            host = hosts.hosts[row["name"]]
            service["url"] = _service_url(host, project, tunnel, show_secret=project is not None)
    if args.json:
        _json({"hosts": rows, "orphans": orphans, "provider_problems": problems})
        return 0
    up = [r for r in rows if r["up"] or r["instance"]["state"] in ("running", "unknown")]
    if not up:
        _out("nothing is up: `gpubox up` starts the built-in local host, `gpubox up HOST` another")
        for line in orphan_lines:
            _out(line)
        return 0
    for row in up:
        sup = row["supervisor"]
        held = (
            f"held by gpubox pid {sup['pid']} ({'detached' if sup['detached'] else 'foreground'}) "
            f"for {format_duration(now - sup['since'])}"
            if sup
            else "not held by any gpubox process"
        )
        _out(f"{row['name']}  [{row['provider']}]  {held}")
        if row["instance"]["detail"]:
            _out(f"    instance  {row['instance']['detail']}")
        if row["endpoint"]:
            _out(f"    endpoint  {row['endpoint']}")
        _out(f"    gpu       {row['gpu']}")
        price = "?" if row["price_per_hour"] is None else format_usd(row["price_per_hour"])
        tilde = "~" if row["price_estimate"] else ""
        line = (
            f"    cost      {tilde}{price}/h ({row['price_source']}) · {format_usd(row['spent_usd'])} so far"
        )
        for budget in row["budgets"]:
            whose = "total budget" if budget["scope"] == "*" else "budget"
            line += f" · {budget['percent']:.0f} % of {whose} {format_usd(budget['budget_usd'])}"
        _out(line)
        if row["up"]:
            _out(f"    autostop  {_autostop_text(row['autostop'], row['autostop_minutes'])}")
        for service in row["services"]:
            _out(f"    {service['name']:<9} {service['url']}")
    for line in orphan_lines:
        _out(line)
    return 0


def _autostop_text(autostop: dict[str, Any] | None, minutes: float) -> str:
    from gpubox.actions import autostop_text

    return autostop_text(autostop, minutes)


def _print_report(session: HostSession, elapsed: float) -> None:
    from gpubox.fmt import format_usd
    from gpubox.remote.gpu import load_rules
    from gpubox.remote.providers import host_price
    from gpubox.report import host_report

    endpoint = session.spec.endpoint
    how = "host key made by gpubox" if session.spec.trusted_host_keys else "host key checked"
    _out(f"  ✓ connected {endpoint.display} ({how}) in {elapsed:.2f} s")
    # `up` judges the GPUs for the newest TensorFlow gpubox knows; `gpubox check` for the project's own.
    newest = load_rules().newest("tensorflow")
    for line in host_report(session.probe, session.agent.hello, release=newest):
        _out(line.render())
    host = session.host
    money = [host_price(host, session.probe).label()]
    if host.budget_usd is not None:
        money.append(f"budget {format_usd(host.budget_usd)} (at 100 %: {host.on_budget})")
    if host.autostop_minutes:
        money.append(f"autostop after {host.autostop_minutes:g} min idle")
    _out("    " + " · ".join(money))


def _record_session(session: HostSession) -> None:
    from gpubox.state import open_state

    with open_state() as state:
        state.record_host(session.host.name, session.host.provider, session.spec.endpoint.display)
        state.record_probe(session.host.name, session.probe)


def cmd_up(args: argparse.Namespace) -> int:
    import time

    from gpubox.remote.session import connect_host
    from gpubox.supervisor import stop_supervisor

    project = _project()
    hosts = _hosts(project)
    host = hosts.pick(args.host)
    if args.stop:
        pid = stop_supervisor(host.name)
        _out(
            f"stopped gpubox process {pid} holding {host.name}"
            if pid
            else f"nothing was holding {host.name} up"
        )
        return 0
    # On a terminal `up` holds the host from the background and opens the dashboard on it.
    tui = (
        not (args.no_tui or args.detach or args.supervise_child)
        and sys.stdin.isatty()
        and sys.stdout.isatty()
    )
    if tui:
        args.detach = True
    if not args.supervise_child:
        from gpubox.state import open_state

        with open_state() as state:
            holder = state.supervisor(host.name)
        if holder is not None:
            raise UsageError(
                f"{host.name} is already up in gpubox process {holder.pid}: `gpubox status` shows it, "
                f"`gpubox up {host.name} --stop` ends it"
            )
        from gpubox.cost import over_budget

        with open_state() as state:
            spent = over_budget(host, hosts, state)
        if spent is not None:
            raise GpuboxError(spent)
    started = time.monotonic()
    if not args.supervise_child:
        _out(f"gpubox up {host.name}")
        if host.spec.rents:
            from gpubox.provision import ensure_instance

            ensure_instance(host, confirm=lambda question: _confirm(question, yes=args.yes), progress=_step)
            started = time.monotonic()
    session = connect_host(
        host, project.name, accept_new=args.accept_new, ask=None if args.supervise_child else _ask_to_pin()
    )
    try:
        _record_session(session)
        _print_report(session, time.monotonic() - started)
        syncer = None
        report = None
        if not args.no_sync:
            syncer = _syncer(session, project, host)
            report = _full_sync(
                syncer, allow_mass_delete=args.allow_mass_delete, quiet=args.supervise_child, verify=True
            )
            _out(f"  ✓ sync   {report.summary()}" + ("" if args.detach else "; watching for changes"))
            _tell_held_back(report)
        venv = _ensure_env(session, project, quiet=args.supervise_child) if not args.no_sync else None
        services = []
        if not args.no_services:
            services = _start_services(session, project, venv, quiet=args.supervise_child)
        if args.detach:
            session.close()
            code = _detach(args, host, expect_tunnels=bool(services))
            return _dashboard(project, hosts, focus=host.name) if tui and code == 0 else code
        return _hold(
            session,
            host,
            detached=args.supervise_child,
            syncer=syncer,
            hosts=hosts,
            services=services,
            first_sync=report,
        )
    finally:
        session.close()


def cmd_dash(args: argparse.Namespace) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError(
            "the dashboard needs a terminal; `gpubox status` and `gpubox runs` print the same facts"
        )
    project = _project()
    return _dashboard(project, _hosts(project), focus=args.host)


def _dashboard(project: ProjectConfig, hosts: HostsConfig, *, focus: str | None = None) -> int:
    """Run the dashboard until it is quit; then say what keeps running (quitting stops nothing)."""
    from gpubox.state import open_state
    from gpubox.tui.app import GpuboxApp

    if focus is not None:
        hosts.get(focus)
    GpuboxApp(hosts, project, focus_host=focus).run()
    with open_state() as state:
        held = [supervisor.host for supervisor in state.supervisors()]
    if len(held) == 1:
        _out(f"left the dashboard: {held[0]} and its runs keep going; `gpubox down {held[0]}` stops it")
    elif held:
        _out(f"left the dashboard: {', '.join(held)} and their runs keep going; `gpubox down HOST` stops one")
    else:
        _out("left the dashboard: no host is held up; runs already started keep going on their hosts")
    return 0


def _start_services(
    session: HostSession, project: ProjectConfig, venv: str | None, *, quiet: bool
) -> list[ServiceState]:
    """Jupyter, TensorBoard and custom services on the host, inside the env (built for them if need be)."""
    from gpubox.train.env import ensure_env, tools_spec
    from gpubox.train.services import ensure_services, ensure_tools

    enabled = [s for s in project.services.values() if s.enabled]
    if not enabled:
        return []
    if venv is None:
        venv, _cached = ensure_env(session, tools_spec(project, str(session.agent.hello.get("python", ""))))
    installed = ensure_tools(session, venv, enabled)
    if installed and not quiet:
        _out(f"  ✓ tools  installed {', '.join(installed)} into the env")
    states = ensure_services(session, project, venv)
    if not quiet:
        for state in states:
            how = "reused" if state.reused else "started"
            _out(f"  ✓ {state.name:<12} {how} on the host's 127.0.0.1:{state.host_port}")
    return states


def _hold(
    session: HostSession,
    host: HostConfig,
    *,
    detached: bool,
    syncer: Syncer | None = None,
    hosts: HostsConfig | None = None,
    services: Sequence[ServiceState] = (),
    first_sync: SyncReport | None = None,
) -> int:
    import os
    import threading
    import time

    from gpubox.fmt import format_duration
    from gpubox.monitor import HostMonitor, SyncActivity, SyncStatus
    from gpubox.remote.tunnels import Tunnel
    from gpubox.state import open_state
    from gpubox.supervisor import claim_host, stop_on_signals, supervise

    def log(text: str) -> None:
        _out(f"  {text}" if text.startswith("! ") else f"  · {text}")

    stop = threading.Event()
    wake = threading.Event()
    started = time.monotonic()
    activity = SyncActivity()
    sync_status = SyncStatus()
    if first_sync is not None:
        sync_status.batch(first_sync, "start")
    with stop_on_signals(stop, wake), claim_host(host, detached=detached, probe=session.probe) as billing:
        live = (
            _start_live_sync(syncer, session, wake, on_change=activity.touch, status=sync_status)
            if syncer is not None
            else None
        )
        tunnels = [
            (state, Tunnel(lambda: session.connection.transport, state.host_port, name=state.name).start())
            for state in services
        ]
        with open_state() as database:
            database.record_tunnels(
                host.name,
                os.getpid(),
                [(state.name, tunnel.local_port, state.host_port, state.path) for state, tunnel in tunnels],
            )
        for state, tunnel in tunnels:
            hint = "  (`gpubox open jupyter` opens it with its token)" if state.secret else ""
            _out(f"  ✓ {state.name:<12} {state.url(tunnel.local_port, show_secret=False)}{hint}")
        if not detached:
            _out(f"  holding {host.name}: Ctrl-C leaves it running (`gpubox down {host.name}` stops it)")
        monitor = HostMonitor(
            session,
            host,
            stop=stop,
            log=log,
            billing=billing,
            hosts=hosts,
            activity=activity,
            sync=sync_status,
        )
        if host.spec.rents:
            monitor.before_terminate = lambda: _pull_before_terminate(session)
        try:
            supervise(session, stop=stop, wake=wake, log=log, monitor=monitor)
        finally:
            if live is not None:
                live.stop()
            for _state, tunnel in tunnels:
                tunnel.stop()
            with open_state() as database:
                database.clear_tunnels(host.name, os.getpid())
    held = format_duration(time.monotonic() - started)
    if monitor.outcome is not None:
        _out(f"  left {host.name} after {held}: {monitor.outcome}")
    else:
        _out(f"  left {host.name} after {held}; the host keeps running")
    return 0


def _pull_before_terminate(session: HostSession) -> str:
    """Autostop or a spent budget is about to terminate a rented host: its outputs come home first."""
    from gpubox.sync.pull import pull

    report = pull(session, _project(), [])
    if report.errors:
        raise GpuboxError(f"pulling its outputs failed ({report.errors[0]})")
    return f"pulled outputs: {report.summary()}"


def _start_live_sync(
    syncer: Syncer,
    session: HostSession,
    wake: threading.Event,
    on_change: Callable[[], None] | None = None,
    status: SyncStatus | None = None,
) -> LiveSync:
    """Live sync for a held host; *on_change* hears of every batch that changed the host (activity), *status*
    of every batch and problem (the monitor report publishes it for the dashboard)."""
    from gpubox.sync.watch import LiveSync

    def reported(report: SyncReport, why: str) -> None:
        if status is not None:
            status.batch(report, why)
        if on_change is not None and (report.sent or report.deleted):
            on_change()
        if report.sent or report.deleted or report.conflicts or report.errors or report.kept_on_host:
            _out(f"  · sync ({why}): {report.summary()}")
        for conflict in report.conflicts:
            _out(f"  ! conflict: the host's copy was kept as {conflict}")
        for error in report.errors:
            _out(f"  ! sync error: {error}")

    def problem(text: str) -> None:
        if status is not None:
            status.problem(text)
        _out(f"  ! {text}")

    live = LiveSync(
        syncer,
        on_report=reported,
        on_problem=problem,
        on_link_lost=wake.set,
        link_generation=lambda: session.generation,
    ).start()
    if status is not None:
        status.watching = live.watching
        # LiveSync has no public count of the paths waiting for the next batch; these two sets are it.
        status.pending = lambda: live.pending
    return live


def _print_tunnels(host: HostConfig, pid: int) -> None:
    """The background process opens the tunnels; wait briefly for it to record them, then show them."""
    import time

    from gpubox.state import open_state

    deadline = time.monotonic() + 30
    rows: list[TunnelRecord] = []
    while time.monotonic() < deadline:
        with open_state() as state:
            rows = [r for r in state.live_tunnels(host.name) if r.pid == pid]
        if rows or not _holder_alive(host, pid):
            break
        time.sleep(0.05)
    for row in rows:
        hint = "  (`gpubox open jupyter` opens it with its token)" if row.service == "jupyter" else ""
        _out(f"  ✓ {row.service:<12} {_service_url(host, None, row, show_secret=False)}{hint}")


def _holder_alive(host: HostConfig, pid: int) -> bool:
    from gpubox.state import open_state

    with open_state() as state:
        holder = state.supervisor(host.name)
    return holder is not None and holder.pid == pid


def _detach(args: argparse.Namespace, host: HostConfig, *, expect_tunnels: bool = False) -> int:
    from gpubox.actions import start_supervisor

    started = start_supervisor(
        host, accept_new=args.accept_new, no_sync=args.no_sync, no_services=args.no_services
    )
    _out(f"  running in the background (pid {started.pid}, log {started.log_path})")
    if expect_tunnels:
        _print_tunnels(host, started.pid)
    _out(f"  `gpubox status` shows it · `gpubox up {host.name} --stop` ends it · `gpubox down {host.name}`")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from gpubox.actions import take_down

    project = _project()
    hosts = _hosts(project)
    if args.orphans:
        if args.host:
            raise UsageError("give HOST or --orphans, not both")
        return _down_orphans(hosts, yes=args.yes)
    host = hosts.pick(args.host)
    take_down(
        host,
        project,
        keep_instance=args.keep_instance,
        say=_out,
        pull_outputs=not args.no_pull,
        confirm=lambda question: _confirm(question, yes=args.yes),
        ask_to_pin=_ask_to_pin(),
    )
    return 0


def _down_orphans(hosts: HostsConfig, *, yes: bool) -> int:
    from gpubox.provision import find_orphans, terminate_orphans

    report = find_orphans(hosts)
    for name, problem in report.problems:
        _out(f"  ! {name}: {problem}")
    if not report.asked:
        _out("no cloud provider is configured: nothing to look for")
        return 0
    if not report.orphans:
        _out(f"no orphaned instances ({', '.join(report.asked)} checked)")
        return 1 if report.problems else 0
    _out(f"{len(report.orphans)} instance(s) billing with no gpubox holding them:")
    for orphan in report.orphans:
        _out(f"  {orphan.describe()}")
    if not _confirm(f"terminate these {len(report.orphans)} instance(s)?", yes=yes):
        raise GpuboxError("nothing terminated")
    failures = terminate_orphans(hosts, report.orphans, _step)
    for failure in failures:
        _err(f"gpubox: could not terminate {failure}")
    return 1 if failures or report.problems else 0


def cmd_ssh(args: argparse.Namespace) -> int:
    import shlex

    from gpubox.remote.session import open_connection, shell_word

    project = _project()
    host = _hosts(project).get(args.host)
    command = list(args.command_args)
    connection, _spec = open_connection(host, accept_new=args.accept_new, ask=_ask_to_pin())
    cd = f"cd {shell_word(host.remote_project_dir(project.name))} 2>/dev/null; "
    shell_recorded = False
    try:
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
        if interactive:
            # While it is open, an interactive session keeps the host from idling out (see autostop_minutes).
            from gpubox.state import open_state

            with open_state() as state:
                state.add_shell(host.name, os.getpid())
            shell_recorded = True
        if not command:
            if not interactive:
                raise UsageError("an interactive shell needs a terminal: give a command after `--`")
            result = connection.fabric.run(
                cd + 'exec "${SHELL:-/bin/sh}" -l', pty=True, warn=True, in_stream=sys.stdin, hide=False
            )
            return int(result.exited)
        # One argument is a shell line (like ssh); several are an exact argv.
        remote = command[0] if len(command) == 1 else shlex.join(command)
        if interactive:
            result = connection.fabric.run(cd + remote, pty=True, warn=True, in_stream=sys.stdin, hide=False)
            return int(result.exited)
        stdin = None if sys.stdin is None or sys.stdin.closed else sys.stdin.buffer
        return connection.stream(cd + remote, stdin, sys.stdout.buffer, sys.stderr.buffer)
    finally:
        connection.close()
        if shell_recorded:
            from gpubox.state import open_state

            with open_state() as state:
                state.remove_shell(os.getpid())


def _syncer(
    session: HostSession | Callable[[], HostSession], project: ProjectConfig, host: HostConfig
) -> Syncer:
    """A Syncer for *host*; given a connect callable instead of a session, it connects only if it must."""
    from gpubox.actions import make_syncer

    return make_syncer(session, project, host)


def _progress_bar(enabled: bool) -> Any:
    """A rich progress bar on a terminal (files, bytes, rate, ETA); nothing elsewhere."""
    import contextlib

    if not enabled or not sys.stdout.isatty():
        return contextlib.nullcontext(None)
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
    )


def _full_sync(
    syncer: Syncer,
    *,
    allow_mass_delete: bool,
    quiet: bool = False,
    dry_run: bool = False,
    verify: bool | None = None,
) -> SyncReport:
    from gpubox.sync.engine import BatchProgress, MassDeletionRefused

    with _progress_bar(not quiet and not dry_run) as bar:
        task = None

        def progress(step: BatchProgress) -> None:
            nonlocal task
            if bar is None:
                return
            if task is None:
                task = bar.add_task("sync", total=step.bytes_total or 1)
            bar.update(task, completed=step.bytes_done, total=step.bytes_total or 1)

        try:
            return syncer.full(
                allow_mass_delete=allow_mass_delete, dry_run=dry_run, verify=verify, progress=progress
            )
        except MassDeletionRefused as exc:
            if quiet or not (sys.stdin.isatty() and sys.stdout.isatty()):
                raise
            if bar is not None:
                bar.stop()
            _err(f"gpubox: {exc}")
            try:
                answer = input(
                    f"Delete those {exc.deleting} files on the host (they go to its trash)? [y/N] "
                )
            except EOFError:
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                raise
            return syncer.full(allow_mass_delete=True, dry_run=dry_run, verify=verify, progress=progress)


def _shown(path: str) -> str:
    """A file name as one printable line: control characters and bytes that are not UTF-8 are escaped (and the
    name quoted), so a name with a newline cannot pass for two files and an undecodable one cannot crash."""
    if path.isprintable():
        return path
    escaped = "".join(
        f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else c if c.isprintable() else repr(c)[1:-1]
        for c in path
    )
    return f"'{escaped}'"


def _tell_held_back(report: SyncReport) -> None:
    if report.held_back:
        shown = ", ".join(map(_shown, report.held_back[:5])) + (" ..." if len(report.held_back) > 5 else "")
        _out(
            f"    held back {len(report.held_back)} secret file(s): {shown} (name them in [sync] include to send)"
        )
    for path, size in report.too_large[:5]:
        _out(
            f"    skipped {_shown(path)} ({size / 1e6:.0f} MB, over max_file_size_mb; list it in [sync] include to send)"
        )
    for path, target in report.outside_links[:5]:
        _out(f"    skipped symlink {_shown(path)} -> {_shown(target)} (points outside the project)")
    for path, error in report.unreadable[:5]:
        _out(f"    could not read {_shown(path)}: {error}")
    for conflict in report.conflicts:
        _out(f"  ! conflict: the host's copy was kept as {_shown(conflict)}")
    for path in report.host_changed[:10]:
        _out(
            f"  ! {_shown(path)} changed on the host since gpubox wrote it; local is unchanged, so it was left alone"
        )
    for error in report.errors:
        _out(f"  ! sync error: {_shown(error)}")


def _report_document(host: str, report: SyncReport, *, dry_run: bool) -> dict[str, Any]:
    document: dict[str, Any] = {
        "host": host,
        "dry_run": dry_run,
        "sent": report.sent,
        "bytes_sent": report.bytes_sent,
        "deleted": report.deleted,
        "already_there": report.in_sync,
        "seconds": round(report.seconds, 3),
        "conflicts": report.conflicts,
        "host_changed": report.host_changed,
        "kept_on_host": report.kept_on_host,
        "errors": report.errors,
        "held_back": report.held_back,
        "too_large": [{"path": p, "bytes": n} for p, n in report.too_large],
        "outside_links": [{"path": p, "target": t} for p, t in report.outside_links],
        "unreadable": [{"path": p, "error": e} for p, e in report.unreadable],
    }
    if dry_run:
        document["would_send"] = [op.path for op in report.planned if op.kind in ("w", "l", "d")]
        document["would_delete"] = [op.path for op in report.planned if op.kind in ("rm", "rmdir")]
    return document


def cmd_sync(args: argparse.Namespace) -> int:
    import threading

    project = _project()
    host = _hosts(project).pick(args.host)
    if args.watch and (args.dry_run or args.json):
        raise UsageError("--watch keeps running; it cannot be combined with --dry-run or --json")
    sessions: list[HostSession] = []

    def connect() -> HostSession:
        from gpubox.remote.session import connect_host

        sessions.append(
            connect_host(host, project.name, accept_new=args.accept_new, ask=_ask_to_pin(), probe=False)
        )
        return sessions[-1]

    try:
        syncer = _syncer(connect, project, host)
        report = _full_sync(
            syncer,
            allow_mass_delete=args.allow_mass_delete,
            quiet=args.json,
            dry_run=args.dry_run,
            verify=True if args.verify else None,
        )
        if args.json:
            _json(_report_document(host.name, report, dry_run=args.dry_run))
            return 0
        if args.dry_run:
            for op in report.planned:
                verb = "delete" if op.kind in ("rm", "rmdir") else "send  "
                _out(f"{verb} {_shown(op.path)}{'/' if op.kind in ('d', 'rmdir') else ''}")
            _out(f"dry run: {len(report.planned)} changes for {host.name}, nothing was sent")
            _tell_held_back(report)
            return 0
        _out(f"sync {host.name}: {report.summary()}")
        _tell_held_back(report)
        if not args.watch:
            return 1 if report.errors else 0
        from gpubox.supervisor import stop_on_signals, supervise

        session = syncer.session
        stop = threading.Event()
        wake = threading.Event()
        with stop_on_signals(stop, wake):
            live = _start_live_sync(syncer, session, wake)
            _out(f"watching {project.root} → {host.name}:{session.remote_dir} (Ctrl-C stops)")
            try:
                supervise(session, stop=stop, wake=wake, log=lambda text: _out(f"  · {text}"))
            finally:
                live.stop()
        return 0
    finally:
        for opened in sessions:
            opened.close()


def cmd_pull(args: argparse.Namespace) -> int:
    from gpubox.remote.session import connect_host
    from gpubox.sync.pull import normalise_paths, pull

    project = _project()
    hosts = _hosts(project)
    paths = list(args.paths)
    first = args.host
    # `gpubox pull checkpoints/` names a path, not a host: HOST is optional and comes first.
    if first and first not in hosts.hosts and ("/" in first or os.path.exists(first)):
        paths.insert(0, first)
        first = None
    host = hosts.pick(first)
    normalise_paths(paths, project.root)  # a path outside the project is refused before anything starts
    session = connect_host(host, project.name, accept_new=args.accept_new, ask=_ask_to_pin(), probe=False)
    try:
        report = pull(session, project, paths)
    finally:
        session.close()
    _out(f"pull {host.name}: {report.summary()}")
    for kept in report.kept_local:
        _out(f"  kept your newer local copy: {kept}")
    for path in report.skipped_links:
        _out(f"  skipped symlink {path}")
    for error in report.errors:
        _out(f"  ! {error}")
    return 1 if report.errors else 0


def _requirements_file(project: ProjectConfig) -> tuple[str, str] | None:
    """(name, text) of the project's requirements file, when there is one to read a TensorFlow pin from."""
    from gpubox.actions import requirements_file

    return requirements_file(project)


def _nvidia_smi_file(name: str) -> str:
    from gpubox.errors import BadInput

    limit = 16 << 20  # nvidia-smi -q -x for 8 GPUs is ~200 KB: more is another file, not to be read whole
    try:
        if name == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(name, "rb") as handle:
                data = handle.read(limit + 1)
    except OSError as exc:
        raise BadInput(f"cannot read {name}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise BadInput(f"{name}: over 16 MiB, far more than any nvidia-smi output (is it the right file?)")
    return data.decode("utf-8", errors="replace")


def cmd_check(args: argparse.Namespace) -> int:
    from gpubox.errors import EXIT_FAILED, BadInput
    from gpubox.remote import gpu

    if args.host and args.nvidia_smi:
        raise UsageError("give a HOST or --nvidia-smi FILE, not both")
    requested = gpu.parse_framework_spec(args.framework) if args.framework else None
    project = _project()
    if args.nvidia_smi:
        snapshot = gpu.parse_nvidia_smi(_nvidia_smi_file(args.nvidia_smi))
        if snapshot.state == "query_rejected":
            raise BadInput(
                f"{args.nvidia_smi}: this nvidia-smi refused the query ({snapshot.message}); query again "
                "without that field (gpubox finds the compute capability from the GPU name)"
            )
        if snapshot.state == "unrecognized":
            raise BadInput(f"{args.nvidia_smi}: {snapshot.message}")
        host_name = None
        result = gpu.run_check(
            snapshot, host=None, requested=requested, requirements=_requirements_file(project)
        )
    else:
        from gpubox.actions import check_host

        host = _hosts(project).pick(args.host)
        host_name = host.name
        # Only the free local host is started: renting a machine just to inspect it is `gpubox up`'s call.
        result = check_host(host, project, requested=requested, accept_new=args.accept_new, ask=_ask_to_pin())
        snapshot = result.snapshot
    if args.json:
        _json(result.document)
    else:
        _out(f"gpubox check {host_name or args.nvidia_smi} (nvidia-smi {snapshot.format})")
        for line in gpu.render_check(result):
            _out(line)
    return EXIT_FAILED if result.verdict.level == "fail" else 0


def cmd_offers(args: argparse.Namespace) -> int:
    from gpubox.fmt import either, format_usd
    from gpubox.provision import collect_offers
    from gpubox.remote.providers.registry import CLOUD_NAMES, provider_spec

    if args.max_price is not None and not args.max_price > 0:
        raise UsageError(f"--max-price must be a number above 0, got {args.max_price:g}")
    project = _project()
    hosts = _hosts(project)
    report = collect_offers(
        hosts,
        project,
        provider=args.provider,
        gpu=args.gpu,
        max_price=args.max_price,
        compatible_only=args.compatible,
        gpu_count=args.count,
    )
    if not report.asked:
        raise UsageError(
            f"no cloud provider is configured: add a {either([f'[providers.{name}]' for name in CLOUD_NAMES])} "
            "table (or a host using one) to hosts.toml, or export "
            + either([provider_spec(name).api_key_env for name in CLOUD_NAMES])
        )
    if report.problems and len(report.problems) == len(report.asked):
        # No provider answered: that is a failure, not an empty market.
        raise _offers_failure(report.problems, report.failures)
    if args.json:
        _json(
            {
                "framework": report.framework,
                "providers": report.asked,
                "seconds": report.seconds,
                "offers": [
                    {
                        "provider": r.offer.provider,
                        "offer_id": r.offer.offer_id,
                        "gpu": r.offer.gpu,
                        "gpu_count": r.offer.gpu_count,
                        "gpu_memory_gb": r.offer.gpu_memory_gb,
                        "region": r.offer.region,
                        "price_per_hour": r.offer.price_per_hour,
                        "instance_type": r.offer.instance_type,
                        "compute_capability": r.offer.compute_capability,
                        "driver_version": r.offer.driver_version,
                        "cuda_max": r.offer.cuda_max,
                        "detail": r.offer.detail,
                        "verdict": r.verdict,
                        "reasons": list(r.reasons),
                        "host": r.host,
                    }
                    for r in report.offers
                ],
                "problems": [{"provider": name, "problem": text} for name, text in report.problems],
            }
        )
        return 0
    _out(f"offers from {', '.join(report.asked)}, cheapest first; verdicts for {report.framework}")
    if report.offers:
        _table(
            ["provider", "gpu", "n", "memory", "region", "$/h", "verdict", "launch as"],
            [
                [
                    r.offer.provider,
                    r.offer.gpu,
                    str(r.offer.gpu_count),
                    f"{r.offer.gpu_memory_gb:g} GB" if r.offer.gpu_memory_gb else "?",
                    r.offer.region or "-",
                    format_usd(r.offer.price_per_hour),
                    r.verdict,
                    r.host or "-",
                ]
                for r in report.offers
            ],
        )
        shown = {r.verdict for r in report.offers}
        if shown & {"warn", "fail", "unknown"}:
            _out("  `gpubox offers --json` gives each verdict's reasons; --compatible hides the failing ones")
    else:
        _out("  nothing matches" + (" (try without --compatible)" if args.compatible else ""))
    for name, problem in report.problems:
        _out(f"  ! {name}: {problem}")
    return 0


def _offers_failure(
    problems: Sequence[tuple[str, str]], failures: Mapping[str, BaseException]
) -> GpuboxError:
    """One error for 'no provider answered': the provider's own when only one was asked, else one line naming
    each, with the exit code they share (bad input 2, unreachable or refused 3, else 1)."""
    from gpubox.errors import BadInput, HostError, HostUnreachable

    errors = [failures.get(name) for name, _problem in problems]
    if len(problems) == 1 and isinstance(errors[0], GpuboxError):
        return errors[0]
    text = "; ".join(f"{name}: {problem}" for name, problem in problems)
    if all(isinstance(error, BadInput) for error in errors):
        return BadInput(f"no provider could be asked: {text}")
    if all(error is None or isinstance(error, HostError) for error in errors):
        return HostUnreachable(f"no provider answered: {text}")
    return GpuboxError(f"no provider answered: {text}")


def cmd_cost(args: argparse.Namespace) -> int:
    from gpubox.cost import cost_report, parse_since, render_cost
    from gpubox.remote.providers import host_price
    from gpubox.state import open_state

    since = parse_since(args.since) if args.since is not None else None
    hosts = _hosts()
    with open_state() as state:
        document = cost_report(state, hosts, host_price, since=since)
    if args.json:
        _json(document)
        return 0
    for line in render_cost(document):
        _out(line)
    return 0


def _remember_runs(host: str, runs: Sequence[RunInfo]) -> None:
    """Cache what the host said about these runs, so `gpubox cost` can price them without connecting."""
    from gpubox.actions import remember_runs

    remember_runs(host, runs)


def _run_host(args: argparse.Namespace, project: ProjectConfig) -> HostConfig:
    return _hosts(project).pick(getattr(args, "host", None))


def _ensure_env(session: HostSession, project: ProjectConfig, *, quiet: bool) -> str | None:
    """Build (or reuse) the project's env on the host; return its path, None when the project needs none."""
    from gpubox.train.env import ensure_env, env_spec

    spec = env_spec(project, str(session.agent.hello.get("python", "")))
    if spec is None:
        return None
    show = None if quiet else sys.stdout.buffer
    if not quiet:
        _out(f"  · env    {spec.path} ({spec.requirements or 'setup commands'})")
    path, cached = ensure_env(session, spec, show=show)
    if not quiet or not cached:
        _out(
            f"  ✓ env    {spec.path} ({spec.requirements or 'setup commands'}{', cached' if cached else ', built'})"
        )
    return path


# ---------------------------------------------------------------------------------- multi-host runs


def _run_on_hosts(args: argparse.Namespace) -> int:
    """`gpubox run --hosts a,b`: one worker per host with TF_CONFIG set (see gpubox/train/multihost/)."""
    from gpubox.train.multihost import pick_hosts, run_on_hosts

    project = _project()
    hosts = pick_hosts(args.hosts, _hosts(project), single=args.host)
    argv = list(args.command_args) or ([project.run.command] if project.run.command else [])
    if not argv:
        raise UsageError("nothing to run: give a command after `--`, or set [run] command in gpubox.toml")

    def prepare(session: HostSession, host: HostConfig) -> str | None:
        if not args.no_sync:
            report = _full_sync(_syncer(session, project, host), allow_mass_delete=False, quiet=True)
            if report.sent or report.deleted:
                _out(f"synced {host.name}: {report.summary()}")
        return _ensure_env(session, project, quiet=True)

    return run_on_hosts(
        hosts,
        argv,
        project_name=project.name,
        project_root=str(project.root),
        name=args.name,
        follow=args.follow,
        accept_new=args.accept_new,
        ask=_ask_to_pin(),
        prepare=prepare,
        out=_out,
        err=_err,
        stream=sys.stdout.buffer,
    )


def _multi_logs(args: argparse.Namespace) -> int:
    from gpubox.remote.pool import SessionPool
    from gpubox.train import multihost

    project = _project()
    run = multihost.load_run(args.run)
    hosts = _hosts(project)
    links = SessionPool(
        [hosts.get(name) for name in run.hosts], project.name, deadline=None if args.follow else 30.0
    )
    try:
        offsets = None
        if args.tail is not None:
            offsets = multihost.tail_offsets(run, links, max(0, args.tail), sys.stdout.buffer)
            if not args.follow:
                return 0
        status = multihost.follow_logs(
            run, links, sys.stdout.buffer, follow=args.follow, say=_err, offsets=offsets
        )
    finally:
        links.close()
    return multihost.exit_code(status, _err) if args.follow else 0


def _multi_stop(args: argparse.Namespace) -> int:
    from gpubox.remote.pool import SessionPool
    from gpubox.train import multihost

    project = _project()
    run = multihost.load_run(args.run)
    hosts = _hosts(project)
    links = SessionPool([hosts.get(name) for name in run.hosts], project.name)
    try:
        status = multihost.stop_multi(run, links, grace=args.grace)
    finally:
        links.close()
    code = "" if status.exit_code is None else f" (exit {status.exit_code})"
    _out(f"{run.id} on {', '.join(run.hosts)}: {status.state}{code}")
    for part, info in zip(run.parts, status.parts, strict=True):
        state = "unknown" if info is None else info.state
        code = "" if info is None or info.exit_code is None else f" (exit {info.exit_code})"
        _out(f"  worker {part.index}: {part.host} {part.run_id} {state}{code}")
    return 0


def _multi_listing(
    host: HostConfig, runs: list[RunInfo], project: ProjectConfig, everything: bool
) -> tuple[list[RunInfo], list[Any]]:
    """The host's own runs without the parts of multi-host runs, and the states of those multi-host runs."""
    from gpubox.train import multihost

    single, records = multihost.split_listing(host.name, runs)
    if not records:
        return single, []
    found = multihost.statuses(records, host.name, runs, _hosts(project), project.name)
    if not everything:
        found = [s for s in found if not s.finished] + [s for s in found if s.finished][-10:]
        found.sort(key=lambda s: int(s.run.id[2:]))
    return single, found


def cmd_run(args: argparse.Namespace) -> int:
    from gpubox.actions import prepare_run
    from gpubox.remote.session import connect_host

    if args.hosts is not None:
        return _run_on_hosts(args)
    project = _project()
    host = _run_host(args, project)
    argv = list(args.command_args) or ([project.run.command] if project.run.command else [])
    if not argv:
        raise UsageError("nothing to run: give a command after `--`, or set [run] command in gpubox.toml")
    session = connect_host(host, project.name, accept_new=args.accept_new, ask=_ask_to_pin(), probe=False)
    try:
        # The flush barrier: the run starts only after the host acknowledged the project as it is now.
        run = prepare_run(session, project, host, argv, name=args.name, sync=not args.no_sync, say=_out)
        _out(f"started {run.id} on {host.name}: {run.command}")
        if not args.follow:
            _out(f"  follow it: gpubox logs {run.id} -f    stop it: gpubox stop {run.id}")
            return 0
        # Follow on the same connection: the first line shows up without a second SSH handshake.
        return _stream_log(host, project, run.id, follow=True, offset=0, session=session)
    finally:
        session.close()


def _stream_log(
    host: HostConfig,
    project: ProjectConfig,
    run_id: str,
    *,
    follow: bool,
    offset: int,
    session: HostSession | None = None,
) -> int:
    """Copy the run's log to stdout; with *follow*, until the run ends, across dropped links.

    From offset 0 the log goes through a local copy (``state/runs/HOST/RUN.log``): what it holds is printed
    first and fetching resumes at its size, so a gpubox killed mid-stream and started again neither drops nor
    repeats a byte.
    """
    from gpubox import paths
    from gpubox.remote.pool import SessionPool
    from gpubox.train.runs import follow_log

    pool = SessionPool(
        [host],
        project.name,
        sessions={host.name: session} if session is not None else None,
        deadline=None if follow else 30.0,
    )

    def session_for() -> HostSession:
        return pool.get(host.name)

    def gap(exc: Exception) -> None:
        _err(f"gpubox: link to {host.name} lost ({exc}); reconnecting, the log resumes where it stopped")

    out = sys.stdout.buffer
    cache = None
    cache_path = None
    if offset == 0:
        cache_path = paths.state_dir() / "runs" / host.name / f"{run_id}.log"
        if cache_path.exists():
            cache = open(cache_path, "a+b")  # noqa: SIM115 (closed in finally)
            cache.seek(0)
            while chunk := cache.read(1 << 20):
                out.write(chunk)
            offset = cache.tell()
            out.flush()
    info = None
    try:
        for chunk, latest in follow_log(session_for, run_id, offset=offset, follow=follow, on_gap=gap):
            info = latest
            if chunk:
                if cache is None and cache_path is not None:
                    # Made with the first byte: asking for a run that does not exist leaves nothing behind.
                    paths.ensure_private_dir(cache_path.parent)
                    cache = open(cache_path, "a+b")  # noqa: SIM115 (closed in finally)
                if cache is not None:
                    cache.write(chunk)
                    cache.flush()
                out.write(chunk)
                out.flush()
    finally:
        if cache is not None:
            cache.close()
        pool.close()
    if info is not None:
        _remember_runs(host.name, [info])
    if not follow or info is None:
        return 0
    if info.state == "lost":
        _err(f"gpubox: run {run_id} was lost on {host.name} (its process vanished without an exit code)")
        return 1
    return info.exit_code if info.exit_code is not None else 1


def cmd_logs(args: argparse.Namespace) -> int:
    from gpubox.train.runs import check_run_id

    if args.run.startswith("m-"):
        return _multi_logs(args)
    project = _project()
    host = _run_host(args, project)
    run_id = check_run_id(args.run)
    if args.tail is not None:
        return _tail_then_follow(host, project, run_id, max(0, args.tail), args.follow)
    return _stream_log(host, project, run_id, follow=args.follow, offset=0)


def _tail_then_follow(host: HostConfig, project: ProjectConfig, run_id: str, lines: int, follow: bool) -> int:
    """Print the last *lines* lines (looked for in the last MiB of the log), then follow if asked."""
    from gpubox.remote.agent import calls
    from gpubox.remote.session import connect_host

    window = 1 << 20
    session = connect_host(host, project.name, probe=False, launch=False)
    try:
        head, _ = calls.run_log(session.agent, run_id=run_id, offset=0, max_bytes=1)
        size = int(head.get("size", 0))
        start = max(0, size - window)
        _, data = calls.run_log(session.agent, run_id=run_id, offset=start, max_bytes=window)
    finally:
        session.close()
    kept = b"".join(data.splitlines(keepends=True)[-lines:]) if lines else b""
    sys.stdout.buffer.write(kept)
    sys.stdout.buffer.flush()
    if not follow:
        return 0
    return _stream_log(host, project, run_id, follow=True, offset=start + len(data))


def cmd_runs(args: argparse.Namespace) -> int:
    import time

    from gpubox.fmt import format_duration
    from gpubox.remote.session import connect_host
    from gpubox.train.runs import list_runs

    project = _project()
    host = _run_host(args, project)
    session = connect_host(host, project.name, probe=False, launch=False)
    try:
        runs = list_runs(session)
    finally:
        session.close()
    _remember_runs(host.name, runs)
    runs, multi = _multi_listing(host, runs, project, args.all)
    if not args.all:
        active = [r for r in runs if not r.finished]
        runs = active + [r for r in runs if r.finished][-10:]
        runs.sort(key=lambda r: int(r.id[2:]))
    now = time.time()
    if args.json:
        _json(
            {
                "runs": [
                    {
                        "id": r.id,
                        "host": r.host,
                        "name": r.name,
                        "command": r.command,
                        "state": r.state,
                        "started_at": r.started_at,
                        "ended_at": r.ended_at,
                        "duration_seconds": r.duration(now),
                        "exit_code": r.exit_code,
                        "log_bytes": r.log_bytes,
                        "progress": r.progress,
                    }
                    for r in runs
                ]
                + [m.to_json(now) for m in multi]
            }
        )
        return 0
    if not runs and not multi:
        _out(f"no runs on {host.name} yet: `gpubox run -- python train.py` starts one")
        return 0
    _table(
        ["id", "host", "state", "started", "duration", "exit", "progress", "command"],
        [
            [
                r.id,
                r.host,
                r.state,
                time.strftime("%m-%d %H:%M", time.localtime(r.started_at)) if r.started_at else "",
                format_duration(r.duration(now) or 0),
                "" if r.exit_code is None else str(r.exit_code),
                r.progress_text(),
                r.command if len(r.command) <= 60 else r.command[:57] + "...",
            ]
            for r in runs
        ],
    )
    if multi:
        from gpubox.train.multihost import table_lines

        _out()
        for line in table_lines(multi, now):
            _out(line)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from gpubox.actions import stop_one_run

    if args.run.startswith("m-"):
        return _multi_stop(args)
    project = _project()
    host = _run_host(args, project)
    run = stop_one_run(host, project, args.run, grace=args.grace)
    _out(
        f"{run.id} on {host.name}: {run.state}"
        + ("" if run.exit_code is None else f" (exit {run.exit_code})")
    )
    return 0


def _service_url(
    host: HostConfig, project: ProjectConfig | None, tunnel: TunnelRecord, *, show_secret: bool
) -> str:
    """The local URL of a tunnelled service; Jupyter's token is fetched from the host, and shown only if asked."""
    from gpubox.actions import service_url

    return service_url(host, project, tunnel, show_secret=show_secret)


def cmd_open(args: argparse.Namespace) -> int:
    import webbrowser

    from gpubox.state import open_state

    project = _project()
    host = _hosts(project).pick(args.host)
    with open_state() as state:
        rows = {row.service: row for row in state.live_tunnels(host.name)}
    if args.service not in rows:
        known = ", ".join(sorted(rows)) or "none"
        raise GpuboxError(
            f"{args.service} is not tunnelled from {host.name} (tunnelled now: {known}); "
            f"`gpubox up {host.name}` starts the services and their tunnels"
        )
    url = _service_url(host, project, rows[args.service], show_secret=True)
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        browser = None
    if (
        browser is None
        or args.print_only
        or (not os.environ.get("DISPLAY") and sys.platform.startswith("linux"))
    ):
        _out(url)
        return 0
    browser.open(url)
    _out(f"opened {url.split('?')[0]}")
    return 0


def cmd_ssh_config(args: argparse.Namespace) -> int:
    from gpubox import paths
    from gpubox.remote.ssh_config import write_ssh_config

    path, names = write_ssh_config(_hosts())
    _out(f"wrote {path} ({', '.join('gpubox-' + n for n in names)})")
    _out("add this line near the top of ~/.ssh/config (before any `Host *` block) to use them from")
    _out("VS Code Remote-SSH, JetBrains Gateway or plain ssh:")
    _out(f"    Include {paths.ssh_config_file()}")
    return 0


# -------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from gpubox.remote.providers.registry import CLOUD_NAMES

    parser = _Parser(
        prog="gpubox",
        description="A rented GPU machine that feels like part of your laptop.",
        epilog="Exit codes: 0 ok, 1 failed, 2 bad input, 3 cannot reach or trust the host, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"gpubox {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    add("init", cmd_init, "write gpubox.toml and hosts.toml for this project")

    hosts = add("hosts", cmd_hosts, "configured hosts: provider, state, GPU, $/h")
    hosts.add_argument("--json", action="store_true", help="one JSON document on stdout")

    status = add("status", cmd_status, "what is up now, its tunnels, and what it costs")
    status.add_argument("--json", action="store_true", help="one JSON document on stdout")
    status.add_argument(
        "--show-secrets", action="store_true", help="include Jupyter's token in its URL (asks the host)"
    )

    up = add("up", cmd_up, "connect to a host (starting it if needed), probe it and hold it")
    up.add_argument(
        "host", nargs="?", metavar="HOST", help="default: [defaults] host, the only host, or local"
    )
    up.add_argument(
        "--no-tui", action="store_true", help="plain lines in the foreground until Ctrl-C (no dashboard)"
    )
    up.add_argument("--detach", action="store_true", help="hold the host from a background process")
    up.add_argument("--no-sync", action="store_true", help="do not mirror the project folder")
    up.add_argument("--no-services", action="store_true", help="do not start Jupyter and TensorBoard")
    up.add_argument("--accept-new", action="store_true", help="pin an unknown host key without asking")
    up.add_argument(
        "--yes", action="store_true", help="rent without asking (a rented host shows its price first)"
    )
    up.add_argument(
        "--allow-mass-delete", action="store_true", help="let the first sync delete many host files at once"
    )
    up.add_argument(
        "--stop", action="store_true", help="end the gpubox process holding the host (host keeps running)"
    )
    up.add_argument("--supervise-child", action="store_true", help=argparse.SUPPRESS)

    down = add("down", cmd_down, "stop holding a host; pull outputs and terminate a rented one")
    down.add_argument("host", nargs="?", metavar="HOST")
    down.add_argument("--keep-instance", action="store_true", help="leave the machine running")
    down.add_argument("--yes", action="store_true", help="do not ask before stopping")
    down.add_argument(
        "--no-pull", action="store_true", help="terminate a rented host without pulling outputs"
    )
    down.add_argument(
        "--orphans",
        action="store_true",
        help="terminate instances gpubox launched that nobody holds (asks first)",
    )

    ssh = add("ssh", cmd_ssh, "a shell on the host, or run one command there (its exit code is returned)")
    ssh.add_argument("host", metavar="HOST")
    ssh.add_argument(
        "command_args", nargs="*", metavar="CMD", help="after `--`: the command and its arguments"
    )
    ssh.add_argument("--accept-new", action="store_true", help="pin an unknown host key without asking")

    sync = add(
        "sync", cmd_sync, "mirror the project folder to the host now (one-way-safe); --watch keeps going"
    )
    sync.add_argument("host", nargs="?", metavar="HOST")
    sync.add_argument("--watch", action="store_true", help="keep the host in step as you edit, until Ctrl-C")
    sync.add_argument(
        "--dry-run", action="store_true", help="list what would be sent and deleted; send nothing"
    )
    sync.add_argument("--json", action="store_true", help="one JSON document on stdout")
    sync.add_argument(
        "--verify", action="store_true", help="also compare with the host's files (finds changes made there)"
    )
    sync.add_argument(
        "--allow-mass-delete", action="store_true", help="delete many host files without asking"
    )
    sync.add_argument("--accept-new", action="store_true", help="pin an unknown host key without asking")

    pull = add("pull", cmd_pull, "bring outputs (or the named paths) back from the host, incrementally")
    pull.add_argument("host", nargs="?", metavar="HOST")
    pull.add_argument("paths", nargs="*", metavar="PATH", help="default: the [sync] outputs folders")
    pull.add_argument("--accept-new", action="store_true", help="pin an unknown host key without asking")

    check = add("check", cmd_check, "can the framework use this host's GPU? exits 1 when it cannot")
    check.add_argument("host", nargs="?", metavar="HOST", help="default: like `gpubox up`")
    check.add_argument(
        "--nvidia-smi",
        metavar="FILE",
        help="offline: a saved nvidia-smi table, `-q -x` XML or --query-gpu CSV (- reads stdin)",
    )
    check.add_argument(
        "--framework",
        metavar="SPEC",
        help="tensorflow==2.21 or torch==2.10 (default: installed on the host, the requirements pin, "
        "or the newest release gpubox knows)",
    )
    check.add_argument("--json", action="store_true", help="one JSON document on stdout")
    check.add_argument("--accept-new", action="store_true", help="pin an unknown host key without asking")

    offers = add(
        "offers", cmd_offers, "rentable machines from the configured clouds, cheapest first, with verdict"
    )
    offers.add_argument("--provider", choices=CLOUD_NAMES, help="ask only this provider")
    offers.add_argument("--gpu", metavar="GPU", help='a GPU model, loosely matched: "A100", "RTX 4090"')
    offers.add_argument("--count", type=int, metavar="N", help="exactly N GPUs")
    offers.add_argument(
        "--max-price", type=float, metavar="USD", help="at most this many US dollars per hour"
    )
    offers.add_argument(
        "--compatible", action="store_true", help="only machines the project's TensorFlow can use"
    )
    offers.add_argument("--json", action="store_true", help="one JSON document on stdout")

    cost = add("cost", cmd_cost, "what each host has cost: $/h, hours, spent, budgets; totals")
    cost.add_argument(
        "--since",
        metavar="DATE",
        help="only time from DATE on: 2026-11-01, 2026-11-01T09:30, or 7d / 12h / 30m",
    )
    cost.add_argument("--json", action="store_true", help="one JSON document on stdout")

    run = add("run", cmd_run, "sync, then start a command on the host, detached; prints its run id")
    run.add_argument(
        "command_args", nargs="*", metavar="CMD", help="after `--`: the command and its arguments"
    )
    run.add_argument("--host", metavar="HOST", help="default: [defaults] host, the only host, or local")
    run.add_argument(
        "--hosts", metavar="H1,H2", help="one worker per host, TF_CONFIG set (MultiWorkerMirroredStrategy)"
    )
    run.add_argument("--name", help="a label for the run")
    run.add_argument("-f", "--follow", action="store_true", help="stream its log; exit with its exit code")
    run.add_argument("--no-sync", action="store_true", help="start without syncing first")
    run.add_argument("--accept-new", action="store_true", help="pin an unknown host key without asking")

    runs = add("runs", cmd_runs, "runs on the host: state, duration, exit code")
    runs.add_argument("--host", metavar="HOST")
    runs.add_argument("--all", action="store_true", help="every run, not only active and the last 10")
    runs.add_argument("--json", action="store_true", help="one JSON document on stdout")

    logs = add("logs", cmd_logs, "a run's log; -f follows it to the end (and survives a dropped link)")
    logs.add_argument("run", metavar="RUN")
    logs.add_argument("--host", metavar="HOST")
    logs.add_argument("-f", "--follow", action="store_true", help="keep streaming until the run ends")
    logs.add_argument("--tail", type=int, metavar="N", help="start with the last N lines")

    stop = add("stop", cmd_stop, "stop a run: SIGTERM to its process group, SIGKILL after a grace period")
    stop.add_argument("run", metavar="RUN")
    stop.add_argument("--host", metavar="HOST")
    stop.add_argument("--grace", type=_seconds, default=10.0, help="seconds between SIGTERM and SIGKILL")

    open_ = add(
        "open", cmd_open, "open a tunnelled service (jupyter, tensorboard or a custom one) in the browser"
    )
    open_.add_argument(
        "service", metavar="SERVICE", help="jupyter, tensorboard or a [services.NAME] from gpubox.toml"
    )
    open_.add_argument("host", nargs="?", metavar="HOST")
    open_.add_argument("--print", dest="print_only", action="store_true", help="print the URL instead")

    dash = add("dash", cmd_dash, "the dashboard: hosts, runs, GPUs, sync, tunnels and money, live")
    dash.add_argument("host", nargs="?", metavar="HOST", help="the host to select first")

    add("ssh-config", cmd_ssh_config, "write `Host gpubox-NAME` entries for VS Code, JetBrains and ssh")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    # Everything after `--` belongs to the remote command, never to gpubox's own options.
    trailing: list[str] | None = None
    if "--" in arguments:
        split = arguments.index("--")
        arguments, trailing = arguments[:split], arguments[split + 1 :]
    debug = "--debug" in arguments
    for stream in (sys.stdout, sys.stderr):
        # A locale that encodes strictly must not turn a file name that is not UTF-8 into a crash.
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        args = build_parser().parse_args(arguments)
        if trailing is not None:
            if not hasattr(args, "command_args"):
                raise UsageError("`--` starts a remote command, which this command does not take")
            args.command_args = [*args.command_args, *trailing]
        if not getattr(args, "handler", None):
            build_parser().print_help()
            return EXIT_BAD_INPUT if arguments else 0
        return int(args.handler(args))
    except GpuboxError as exc:
        if debug:
            raise
        _err(f"gpubox: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _err("gpubox: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`gpubox hosts | head`); point stdout at /dev/null so the exit flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if debug:
            raise
        _err(
            f"gpubox: internal error: {type(exc).__name__}: {exc} (run again with --debug for the traceback)"
        )
        return 1
