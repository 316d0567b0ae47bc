"""`gpubox check HOST`: probe the host and judge whether the project's framework can use its GPUs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpubox.actions.framework import env_framework_view
from gpubox.remote import gpu
from gpubox.remote.session import connect_host
from gpubox.state import open_state
from gpubox.train.env import requirements_file

if TYPE_CHECKING:
    from gpubox.config import HostConfig, ProjectConfig
    from gpubox.remote.connection import AskToPin
    from gpubox.remote.gpu import CheckResult, FrameworkRelease

__all__ = ["check_host"]


def check_host(
    host: HostConfig,
    project: ProjectConfig,
    *,
    requested: FrameworkRelease | None = None,
    accept_new: bool = False,
    ask: AskToPin | None = None,
) -> CheckResult:
    """`gpubox check HOST`: probe the host (starting only the free local one), ask the TensorFlow of the project's
    env there what it sees, and decide."""

    view: gpu.FrameworkView | None = None
    session = connect_host(host, project, accept_new=accept_new, ask=ask, launch=host.spec.runs_own_sshd)
    try:
        with open_state() as state:
            state.record_host(session.host.name, session.host.provider, session.spec.endpoint.display)
            state.record_probe(session.host.name, session.probe)
        snapshot = gpu.probe_snapshot(session.probe)
        if requested is None or requested.name == "tensorflow":
            # Where the project's runs start: its env on the host, else the interpreter gpubox runs there.
            python = (session.probe.get("python") or {}).get("executable") or host.python
            view = env_framework_view(session, project, python)
    finally:
        session.close()
    return gpu.run_check(
        snapshot,
        host=host.name,
        requested=requested,
        framework_view=view,
        requirements=requirements_file(project),
    )
