"""The project's env on the host, for a run, a sweep's trials or `up`: built once per requirements, then reused.

Apart from `up` (which loads the live sync, tunnels and the monitor) so that `gpubox run` under a held host loads
only what a run needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gpubox.actions import Say
from gpubox.fmt import format_duration
from gpubox.train.env import ensure_env, env_spec

if TYPE_CHECKING:
    from gpubox.config import ProjectConfig
    from gpubox.remote.session import HostSession
    from gpubox.train.env import EnvSpec

__all__ = ["build_env", "ensure_built"]


def build_env(
    session: HostSession,
    project: ProjectConfig,
    *,
    say: Say,
    activity: Callable[[str], None] | None = None,
    quiet_when_cached: bool = False,
) -> str | None:
    """Build (or reuse) the project's env on the host; its path, None when the project needs none.

    A build is said when it starts (with where pip's whole output is kept on the host) and when it ends;
    *activity* hears what it is doing meanwhile, in a few words. A cached env is one line, or none with
    *quiet_when_cached* (`gpubox run`)."""
    spec = env_spec(project, str(session.agent.hello.get("python", "")))
    if spec is None:
        return None
    what = spec.requirements or "setup commands"
    return ensure_built(session, spec, what, say=say, activity=activity, quiet_when_cached=quiet_when_cached)


def ensure_built(
    session: HostSession,
    spec: EnvSpec,
    what: str,
    *,
    say: Say,
    activity: Callable[[str], None] | None,
    quiet_when_cached: bool,
) -> str:
    def started(log: str) -> None:
        say(f"  · env    building {spec.path} ({what}); pip's log on the host: {log}")

    built = ensure_env(session, spec, on_start=started, on_activity=activity)
    if not built.cached:
        say(f"  ✓ env    {spec.path} ({what}, built in {format_duration(built.seconds)})")
    elif not quiet_when_cached:
        say(f"  ✓ env    {spec.path} ({what}, cached)")
    return built.path
