"""`gpubox check HOST`: probe the host and judge whether the project's framework can use its GPUs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpubox.remote import gpu
from gpubox.remote.agent import calls
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
    """`gpubox check HOST`: probe the host (starting only the free local one), ask its TensorFlow what it sees,
    and decide."""

    view: gpu.FrameworkView | None = None
    session = connect_host(host, project, accept_new=accept_new, ask=ask, launch=host.spec.runs_own_sshd)
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
