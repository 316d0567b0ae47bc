"""Which framework release a project is judged for, and what its env on a host says: the one rule behind
`gpubox check`, `up`'s report, `gpubox hosts` and the dashboard (see :mod:`gpubox.remote.gpu.frameworks`).

Light on purpose: `gpubox hosts` and the dashboard read it without connecting, so nothing here imports SSH.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpubox.errors import GpuboxError
from gpubox.remote import gpu
from gpubox.remote.agent import calls
from gpubox.train.env import env_spec, requirements_file

if TYPE_CHECKING:
    from gpubox.config import ProjectConfig
    from gpubox.remote.session import HostSession

__all__ = ["ENV_PLACE", "env_framework_view", "project_framework"]

ENV_PLACE = "the project's env"


def project_framework(project: ProjectConfig) -> gpu.FrameworkChoice:
    """The release judged where the host is not asked: the project's pin, else the newest gpubox knows. A pin
    gpubox has no rules for (or an unreadable requirements file) falls back to the newest, and says why."""
    try:
        return gpu.choose_framework(None, None, requirements_file(project))
    except GpuboxError as exc:
        return gpu.FrameworkChoice(gpu.load_rules().newest("tensorflow"), f"{gpu.NEWEST}: {exc}")


def env_framework_view(session: HostSession, project: ProjectConfig, host_python: str) -> gpu.FrameworkView:
    """What TensorFlow says where the project's runs start: in its env on the host when it has one (built by
    `gpubox up` or `gpubox run`), else in the host's *host_python*. An env not built yet is not asked."""
    spec = env_spec(project, str(session.agent.hello.get("python", "")))
    if spec is None:
        return gpu.FrameworkView.from_agent(calls.framework(session.agent, python=host_python))
    built = calls.env_ready(session.agent, key=spec.key)
    python = f"{built['path']}/bin/python"
    if not built.get("ready"):
        return gpu.FrameworkView(
            python=python,
            installed=None,
            reason=f"not built on {session.host.name} yet (`gpubox up` builds it from {spec.requirements or 'its setup'})",
            place=ENV_PLACE,
        )
    return gpu.FrameworkView.from_agent(calls.framework(session.agent, python=python), place=ENV_PLACE)
