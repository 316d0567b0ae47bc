"""`gpubox down`: this project lets go of a host. It ends the process holding the host for this project and stops
the project's services; the last project out also stops every project's services and stops the host where gpubox
runs or rents it, and closes its billing. Active runs are named first, and asked about."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gpubox.actions import Say, quiet
from gpubox.actions.guardian import guardian_key
from gpubox.actions.runs import project_runs, remember_runs
from gpubox.actions.supervisor import stop_supervisor
from gpubox.actions.sync import pull_outputs as pull_outputs_of
from gpubox.errors import GpuboxError, HostError
from gpubox.provision import refuse_unpulled_stopped, take_down_rented
from gpubox.remote.agent import calls
from gpubox.remote.providers import provider_for
from gpubox.remote.session import connect_host
from gpubox.state import open_state
from gpubox.train.runs import list_runs
from gpubox.train.services import service_key, service_key_for

if TYPE_CHECKING:
    from gpubox.config import HostConfig, ProjectConfig
    from gpubox.remote.connection import AskToPin
    from gpubox.train.runs import RunInfo

__all__ = ["stop_host_services", "take_down"]


def stop_host_services(
    host: HostConfig,
    project: ProjectConfig,
    *,
    every_project: bool = False,
    last_out: bool = False,
    say: Say = quiet,
) -> list[str]:
    """Stop this project's services on the host, when it can be reached without starting it; return the names
    stopped. *every_project*: every project's (the host itself stops); *last_out*: also those of every project
    this machine has used the host for (no gpubox here holds it any more), leaving other machines' alone."""

    if provider_for(host).status(host).state == "stopped":
        if last_out and host.spec.on_this_machine:
            # The sshd is gone but the guardian, on this very machine, may still watch: end it directly.
            _release_local_guardian(host)
        return []
    try:
        session = connect_host(host, project, probe=False, launch=False)
    except HostError as exc:
        say(f"  ! could not reach {host.name} to stop its services: {exc}")
        return []
    own = service_key(session)
    ours = {own}
    if last_out:
        with open_state() as state:
            ours |= {service_key_for(folder) for folder in state.project_folders(host.name).values()}
    stopped, left = [], []
    try:
        if last_out:
            # Nobody here holds the host any more: its guardian (if any) ends with the hold.
            calls.guardian(session.agent, key=guardian_key(host), release=True, decisions=0)
        listed = calls.service_list(session.agent, key=None if every_project or last_out else own)
        for service in listed.get("services", []):
            if service.get("state") == "stopped":
                continue
            key = str(service.get("key") or "")
            label = str(service["name"]) + ("" if key == own else f" (of {key})")
            if every_project or key in ours:
                calls.service_stop(session.agent, key=key, name=service["name"])
                stopped.append(label)
            else:
                left.append(label)
    finally:
        session.close()
    if stopped:
        say(f"stopped {', '.join(stopped)} on {host.name}")
    if left:
        say(f"left {', '.join(left)} running on {host.name}: started from another machine or an older gpubox")
    return stopped


def _last_pull(host: HostConfig, project: ProjectConfig, say: Say) -> None:
    """The outputs come home before the host stops (a failure is said; the files stay on the host's disk)."""
    try:
        report = pull_outputs_of(host, project)
    except GpuboxError as exc:
        say(
            f"! outputs not pulled from {host.name} ({exc}): they stay there; `gpubox pull` after `gpubox up`"
        )
        return
    if report.fetched or report.errors or report.kept_local:
        say(f"pulled outputs from {host.name}: {report.summary()}")
    for error in report.errors:
        say(f"  ! {error}")


def _release_local_guardian(host: HostConfig) -> None:
    from pathlib import Path

    from gpubox import paths
    from gpubox.remote.agent.host import guardian_release

    home = paths.local_host_home() or Path.home()
    guardian_release(str(home / ".gpubox" / "guardian" / guardian_key(host)))


def _active_runs(host: HostConfig, project: ProjectConfig) -> tuple[list[RunInfo], list[RunInfo]] | None:
    """(every active run on the host, this project's active runs), when the host can be reached without starting
    it; None when it cannot (nothing is known, so nothing is asked)."""
    if provider_for(host).status(host).state == "stopped":
        return None
    try:
        session = connect_host(host, project, probe=False, launch=False)
    except HostError:
        return None
    try:
        runs = list_runs(session)
        mine = project_runs(session, project, runs)
    finally:
        session.close()
    known = {r.id for r in mine}
    remember_runs(host.name, [r for r in runs if r.id not in known] + mine)  # `gpubox runs` lists them after
    return [r for r in runs if not r.finished], [r for r in mine if not r.finished]


def _named(runs: Sequence[RunInfo], most: int = 3) -> str:
    shown = ", ".join(
        f"{r.id} ({r.name + ': ' if r.name else ''}{r.command if len(r.command) <= 40 else r.command[:37] + '...'})"
        for r in runs[:most]
    )
    return shown + (f" and {len(runs) - most} more" if len(runs) > most else "")


def take_down(
    host: HostConfig,
    project: ProjectConfig,
    *,
    keep_instance: bool = False,
    say: Say = quiet,
    pull_outputs: bool = True,
    confirm: Callable[[str], bool] | None = None,
    confirm_keep: Callable[[str], bool] | None = None,
    ask_to_pin: AskToPin | None = None,
    asked: bool = False,
) -> None:
    """`gpubox down` for *project*: end the process holding *host* for it and stop its services. When no other
    project holds the host, also stop every project's services, stop the host where gpubox runs or rents it
    (unless *keep_instance*; a rented one has its outputs pulled first, unless not *pull_outputs*) and close its
    billing.

    Active runs are named first. *confirm* is asked before runs would be stopped with the host (a rented one is
    terminated) and before terminating a rented host at all; *confirm_keep* when this project's runs keep running
    after it lets go. Either answering no stops here, with nothing done. *asked*: the caller has already asked
    about taking the host down (the dashboard's own question), so only runs that would stop are asked about."""

    with open_state() as state:
        holders = state.host_supervisors(host.name)
    others = [s for s in holders if s.project != project.id]
    terminating = host.spec.rents and not others and not keep_instance
    active = _active_runs(host, project)
    if terminating and pull_outputs:
        refuse_unpulled_stopped(host)
    question = None
    if active is not None and terminating and active[0]:
        question = f"{len(active[0])} run(s) on {host.name} stop with it: {_named(active[0])}; terminate {host.name}?"
    elif terminating and not asked:
        question = f"terminate {host.name} (its {host.provider} instance and everything on its disk)?"
    if question is not None and confirm is not None and not confirm(question):
        raise GpuboxError(f"nothing taken down: {host.name} keeps running")
    if active is not None and active[1] and not terminating:
        where = "on this machine" if host.spec.on_this_machine else f"on {host.name}"
        keep = (
            f"{_named(active[1])} keep{'s' if len(active[1]) == 1 else ''} running {where} after `down` "
            f"(`gpubox runs` and `gpubox logs` follow them, `gpubox stop` ends them)"
        )
        if confirm_keep is not None:
            if not confirm_keep(f"{keep}: go on?"):
                raise GpuboxError(f"nothing taken down: {host.name} keeps running")
        else:
            say(keep)

    # What the supervisor's last line says happens to the host now (not "the host keeps running").
    if others:
        next_step = "`gpubox down` let go of it for this project; other projects still hold it"
    elif keep_instance:
        next_step = "`gpubox down --keep-instance` leaves it running"
    elif host.spec.rents:
        next_step = "`gpubox down` is terminating it"
    elif host.spec.runs_own_sshd:
        next_step = "`gpubox down` is stopping it"
    else:
        next_step = "`gpubox down` stops its services; the machine keeps running"
    pid = stop_supervisor(host.name, project.id, why=next_step)
    if pid:
        say(f"stopped gpubox process {pid} holding {host.name}")
    if others:
        stop_host_services(host, project, say=say)
        names = ", ".join(sorted({o.project_name for o in others}))
        say(
            f"{host.name} keeps running: project {names} still holds it (the last project to let go of it "
            "stops the host)"
        )
        return
    if host.spec.rents:
        take_down_rented(
            host,
            project,
            keep_instance=keep_instance,
            pull_outputs=pull_outputs,
            confirm=None,  # asked above
            say=say,
            ask_to_pin=ask_to_pin,
        )
        return
    if pull_outputs and not keep_instance and host.spec.runs_own_sshd:
        _last_pull(host, project, say)
    # The last project out stops the services of every project this machine used the host for; every project's
    # when the host itself stops (stopping the local host's sshd would not stop them).
    stop_host_services(
        host, project, every_project=host.spec.runs_own_sshd and not keep_instance, last_out=True, say=say
    )
    if keep_instance:
        say(f"kept {host.name} running (--keep-instance)")
    else:
        say(provider_for(host).terminate(host))
    with open_state() as state:
        state.close_billing(host.name)
