"""A live session with one host: provider → SSH transport → agent, and the report of what the host is."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from gpubox.config import HostConfig
from gpubox.errors import HostUnreachable
from gpubox.remote.agent import calls
from gpubox.remote.backoff import Backoff, with_backoff

# paramiko (through the connection and the agent's SSH client) and the providers load only when a session opens
# a connection of its own: a command that rides the held connection's control socket never needs them.
if TYPE_CHECKING:
    from gpubox.config import ProjectConfig
    from gpubox.remote.agent.client import AgentSession
    from gpubox.remote.agent.framing import FramedAgent
    from gpubox.remote.connection import AskToPin, Connection
    from gpubox.remote.folder import HostFolder
    from gpubox.remote.providers import ConnectSpec

__all__ = ["FolderUse", "HostSession", "connect_host", "open_connection", "shell_word"]


def shell_word(path: str) -> str:
    """*path* as one shell word for the host, keeping a leading ``~`` expandable there."""
    import shlex

    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def open_connection(
    host: HostConfig, *, accept_new: bool = False, ask: AskToPin | None = None, launch: bool | None = None
) -> tuple[Connection, ConnectSpec]:
    """Open the SSH transport to *host*. ``launch`` starts the host first (default: only the free ``local``)."""
    from gpubox.remote.connection import Connection
    from gpubox.remote.providers import provider_for

    provider = provider_for(host)
    if launch if launch is not None else host.spec.runs_own_sshd:
        provider.launch(host)
    spec = provider.connect_spec(host)
    connection = Connection(
        spec.endpoint,
        accept_new=accept_new or host.accept_new,
        ask=ask,
        trusted_host_keys=spec.trusted_host_keys,
        connect_timeout=host.connect_timeout,
        keepalive_seconds=host.keepalive_seconds,
        pin_file=spec.pin_file,
    )
    return connection.open(), spec


@dataclass
class HostSession:
    """A connected host with its agent running.

    The agent is either started on an SSH connection of the session's own, or reached through the control socket
    of the process holding the host (:mod:`gpubox.remote.control`); then :attr:`connection` is opened only when
    something needs a channel of its own (a shell, an env build's output), on first use."""

    host: HostConfig
    _connection: Connection | None
    _spec: ConnectSpec | None
    agent: FramedAgent
    remote_dir: str
    folder: HostFolder | None = None
    """The project's folder as settled at connect (None when connected for a bare project name)."""
    owner: dict[str, str] | None = None
    """The project's {"id", "name"}: what runs started on this session are recorded as."""
    probe: dict[str, Any] = field(default_factory=dict)
    generation: int = 0
    """Incremented on every reconnect, so users of the session know to re-check what the host holds."""

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            self._connection, spec = open_connection(self.host, launch=False)
            self._spec = self._spec or spec
        return self._connection

    @property
    def spec(self) -> ConnectSpec:
        if self._spec is None:
            from gpubox.remote.providers import provider_for

            self._spec = provider_for(self.host).connect_spec(self.host)
        return self._spec

    @property
    def rides_holder(self) -> bool:
        """Whether the agent is reached through the holder's control socket (no SSH connection of our own)."""
        from gpubox.remote.control import ControlAgent

        return isinstance(self.agent, ControlAgent)

    def is_alive(self) -> bool:
        """Whether the session can still reach the host's agent."""
        if self._connection is not None and not self.rides_holder:
            return self._connection.is_alive()
        return self.agent.is_alive()

    def refresh_probe(self) -> dict[str, Any]:
        self.probe = dict(calls.probe(self.agent, project_dir=self.remote_dir))
        return self.probe

    def heartbeat(self) -> None:
        """One agent round trip: proves the transport, the channel and the agent are all alive."""
        calls.hello(self.agent)

    def reconnect(self, backoff: Backoff, **kwargs: Any) -> None:
        """Reopen the transport and restart the agent after the link dropped."""
        self.agent.close()

        def attempt() -> None:
            # A session that rode the holder's socket gets a connection of its own here: the holder let go.
            connection = self.connection
            connection.close()
            connection.open()
            self.agent = start_agent(connection, self.host)

        with_backoff(attempt, backoff, **kwargs)
        self.generation += 1

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.agent.close()
        if self._connection is not None:
            self._connection.close()


def start_agent(connection: Connection, host: HostConfig) -> AgentSession:
    """Start the agent, going straight to the interpreter `python` resolved to last time when it still exists.

    Only a bare command name (found on PATH, possibly through a wrapper such as a pyenv shim) is remembered; a
    configured path is always used as written, since a wrapper script there may set up what the user needs.
    """
    from gpubox.remote.agent.client import AgentSession
    from gpubox.state import open_state

    remember = "/" not in host.python
    prefer = None
    if remember:
        with open_state() as state:
            prefer = state.resolved_python(host.name, host.python)
    agent = AgentSession(connection, python=host.python, prefer=prefer).start()
    executable = agent.hello.get("executable")
    if remember and isinstance(executable, str) and executable and executable != prefer:
        with open_state() as state:
            state.record_resolved_python(host.name, host.python, executable)
    return agent


FolderUse = Literal["claim", "check", "look"]
"""What a command does with the project's folder on the host (see :func:`connect_host`)."""


def connect_host(
    host: HostConfig,
    project: ProjectConfig | str,
    *,
    accept_new: bool = False,
    ask: AskToPin | None = None,
    launch: bool = True,
    probe: bool = True,
    folder: FolderUse = "look",
    ride: bool = True,
) -> HostSession:
    """Connect to *host* with the agent running, for *project*, whose folder there is settled on the way
    (:mod:`gpubox.remote.folder`): ``claim`` makes it and records the project as its owner (commands that write
    there: up, sync, run, ssh, pull), ``check`` refuses a folder another project owns without making anything (a
    dry run), ``look`` only finds it (runs, logs, the dashboard). Given only a name (tests, tools), the folder is
    ``remote_dir`` or the older layout's ``~/gpubox/<name>``, unchecked.

    With *ride* (the default), a project's command reaches the agent through the control socket of the process
    that holds the host for that project, when one does; the holder itself, and what holds a host for long on
    its own (a sweep's lanes), pass ``ride=False``."""
    if ride and not isinstance(project, str):
        from gpubox.remote.control import open_control_agent

        held = open_control_agent(host.name, project.id)
        if held is not None:
            try:
                return _session_with(host, project, None, None, held, probe=probe, folder=folder)
            except HostUnreachable:
                held.close()  # the holder let go mid-way: connect directly
    connection, spec = open_connection(host, accept_new=accept_new, ask=ask, launch=launch)
    try:
        return _session_with(
            host, project, connection, spec, start_agent(connection, host), probe=probe, folder=folder
        )
    except BaseException:
        connection.close()
        raise


def _session_with(
    host: HostConfig,
    project: ProjectConfig | str,
    connection: Connection | None,
    spec: ConnectSpec | None,
    agent: FramedAgent,
    *,
    probe: bool,
    folder: FolderUse,
) -> HostSession:
    """The session on a started *agent*, with the project's folder settled and the host probed if asked."""
    try:
        settled = None
        owner = None
        if isinstance(project, str):
            remote_dir = host.remote_project_dir(project)
        else:
            from gpubox.remote.folder import settle_folder

            settled = settle_folder(agent, host, project, claim=folder == "claim", strict=folder != "look")
            remote_dir = settled.folder
            owner = {"id": project.id, "name": project.name}
        session = HostSession(host, connection, spec, agent, remote_dir, folder=settled, owner=owner)
        if probe:
            session.refresh_probe()
        return session
    except BaseException:
        agent.close()
        raise
