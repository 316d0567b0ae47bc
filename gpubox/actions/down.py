"""`gpubox down`: end the process holding a host, stop its services, stop or terminate the host, close its
billing."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gpubox.actions import Say, quiet
from gpubox.actions.supervisor import stop_supervisor
from gpubox.errors import HostError
from gpubox.provision import take_down_rented
from gpubox.remote.agent import calls
from gpubox.remote.providers import provider_for
from gpubox.remote.session import connect_host
from gpubox.state import open_state
from gpubox.train.services import service_key

if TYPE_CHECKING:
    from gpubox.config import HostConfig, ProjectConfig
    from gpubox.remote.connection import AskToPin

__all__ = ["stop_host_services", "take_down"]


def stop_host_services(
    host: HostConfig, project: ProjectConfig, *, every_project: bool = False, say: Say = quiet
) -> list[str]:
    """Stop this project's services on the host (every project's, when the host itself is going down), when it
    can be reached without starting it; return the names stopped."""

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
    say: Say = quiet,
    pull_outputs: bool = True,
    confirm: Callable[[str], bool] | None = None,
    ask_to_pin: AskToPin | None = None,
) -> None:
    """`gpubox down`: end the process holding *host*, stop its services, stop the host where gpubox runs or
    rents it (unless *keep_instance*), and close its billing. A rented host's outputs are pulled first (unless
    not *pull_outputs*); *confirm* is asked before terminating one under active runs."""

    # What the supervisor's last line says happens to the host now (not "the host keeps running").
    if keep_instance:
        next_step = "`gpubox down --keep-instance` leaves it running"
    elif host.spec.rents:
        next_step = "`gpubox down` is terminating it"
    elif host.spec.runs_own_sshd:
        next_step = "`gpubox down` is stopping it"
    else:
        next_step = "`gpubox down` stops its services; the machine keeps running"
    pid = stop_supervisor(host.name, why=next_step)
    if pid:
        say(f"stopped gpubox process {pid} holding {host.name}")
    if host.spec.rents:
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
