"""Jupyter, TensorBoard and custom servers on the host, reached through tunnels from this machine.

Every service listens on the host's 127.0.0.1 only (never its public address) and runs inside the project's env;
Jupyter keeps a random token. The agent starts them detached, reuses one that still runs and answers, restarts
one that does not, and keeps their logs.
"""

from __future__ import annotations

import hashlib
import secrets
import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING

from gpubox.errors import RemoteError
from gpubox.record import record
from gpubox.remote.agent import calls

if TYPE_CHECKING:
    from gpubox.config import ProjectConfig, ServiceConfig
    from gpubox.remote.session import HostSession

__all__ = ["ServiceState", "ensure_services", "ensure_tools", "local_url", "service_key", "service_key_for"]

TOOLS = {"jupyter": ("jupyterlab", "jupyterlab"), "tensorboard": ("tensorboard", "tensorboard")}
"""For each built-in service: (module to import, package to install) when the env lacks it."""


@record
class ServiceState:
    name: str
    host_port: int
    state: str
    reused: bool
    secret: str | None
    """Jupyter's token: shown only in the URL `gpubox open` uses."""
    path: str = "/"

    def url(self, local_port: int, *, show_secret: bool) -> str:
        query = ""
        if self.secret:
            query = f"?token={self.secret if show_secret else '<redacted>'}"
        return f"http://127.0.0.1:{local_port}{self.path}{query}"


def service_key(session: HostSession) -> str:
    """One folder per project on the host, so two projects' TensorBoards never clash."""
    return service_key_for(session.remote_dir)


def service_key_for(remote_dir: str) -> str:
    """The service key of the project whose folder on the host is *remote_dir* (as gpubox names it)."""
    digest = hashlib.sha1(remote_dir.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    base = remote_dir.rstrip("/").rsplit("/", 1)[-1] or "project"
    return f"{base}-{digest}"


def _command(service: ServiceConfig, remote_dir: str) -> str:
    from gpubox.remote.session import shell_word

    project = shell_word(remote_dir)
    if service.command is not None:
        return service.command
    # `python -m`, not the console scripts: a script's first line names the env by the path it was installed
    # through, and an env reached through a link that later changes (~/.gpubox/envs on another disk) keeps
    # working only this way.
    if service.name == "tensorboard":
        return f"python -m tensorboard.main --logdir {project}/logs --host 127.0.0.1 --port {{port}} --reload_interval 2"
    if service.name == "jupyter":
        # The token comes from JUPYTER_TOKEN in the environment: the command stays the same across restarts
        # (so a running Jupyter is recognised and reused) and the token never shows in `ps`.
        # Rented boxes often log you in as root, which Jupyter refuses without --allow-root.
        return (
            f"python -m jupyterlab --no-browser --ip=127.0.0.1 --port={{port}} --port-retries=0 --ServerApp.root_dir={project}"
            ' $([ "$(id -u)" -eq 0 ] && echo --allow-root)'
        )
    raise RemoteError(f"service {service.name} has no command")


def ensure_tools(
    session: HostSession,
    venv: str,
    services: list[ServiceConfig],
    *,
    say: Callable[[str], None] | None = None,
) -> list[str]:
    """Install the built-in services' packages into the env when it lacks them (saying so first, to *say*);
    return what was installed.

    A package counts as there when it imports *and* its command is found the way the service will look for it
    (the env's ``bin/`` first, then the PATH). The install holds the env's build lock: two gpubox processes
    sharing an env never run pip into it at once, and the second finds the first's work."""
    python = shlex.quote(venv + "/bin/python")
    path = shlex.quote(venv + "/bin") + ':"$PATH"'

    def lacking(module: str, command: str) -> str:
        found = f"PATH={path} command -v {shlex.quote(command)} >/dev/null"
        return f"{{ {python} -c 'import {module}' 2>/dev/null && {found}; }}"

    wanted = [(s.name, *TOOLS[s.name]) for s in services if s.name in TOOLS]
    missing = [
        package
        for name, module, package in wanted
        if not session.connection.run(lacking(module, name), timeout=120).ok
    ]
    if missing:
        if say is not None:
            say(f"  · tools  installing {', '.join(missing)} into the env (once per env)")
        lock = shlex.quote(venv + ".lock")
        checks = " && ".join(lacking(module, name) for name, module, package in wanted if package in missing)
        install = session.connection.run(
            f"exec 9>{lock}; command -v flock >/dev/null 2>&1 && flock 9; {checks} || "
            f"{python} -m pip install --disable-pip-version-check --no-input "
            + " ".join(shlex.quote(p) for p in missing),
            timeout=900,
        )
        if not install.ok:
            tail = install.stdout.decode(errors="replace").strip().splitlines()[-3:]
            raise RemoteError(
                f"could not install {', '.join(missing)} on {session.host.name}: {' | '.join(tail)}"
            )
    return missing


def ensure_services(
    session: HostSession, project: ProjectConfig, venv: str | None, names: list[str] | None = None
) -> list[ServiceState]:
    """Start (or reuse) every enabled service of the project; return where each listens on the host."""
    key = service_key(session)
    chosen = [s for s in project.services.values() if s.enabled and (names is None or s.name in names)]
    states = []
    # Jupyter's token stays what it was (kept with the service on the host, also once stopped): a bookmarked
    # URL keeps working across `down` and `up`.
    before = {
        str(row.get("name")): row.get("secret")
        for row in calls.service_list(session.agent, key=key)["services"]
        if isinstance(row.get("secret"), str) and row.get("secret")
    }
    for service in chosen:
        token = None
        if service.name == "jupyter" and service.command is None:
            token = str(before.get(service.name) or secrets.token_hex(24))
        # A reused Jupyter keeps its token: the agent returns the one stored with it on the host.
        answer = calls.service_ensure(
            session.agent,
            key=key,
            name=service.name,
            command=_command(service, session.remote_dir),
            port=service.port,
            cwd=session.remote_dir,
            venv=venv,
            secret=token,
            env={"JUPYTER_TOKEN": token} if token else {},
            wait=90,
        )
        path = "/lab" if service.name == "jupyter" and service.command is None else "/"
        states.append(
            ServiceState(
                name=service.name,
                host_port=int(answer["port"]),
                state=str(answer["state"]),
                reused=bool(answer.get("reused")),
                secret=answer.get("secret"),
                path=path,
            )
        )
    return states


def local_url(state: ServiceState, local_port: int, *, show_secret: bool = False) -> str:
    return state.url(local_port, show_secret=show_secret)
