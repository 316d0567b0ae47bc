"""What the dashboard's thread workers post back to the UI thread (each carries everything its handler needs)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from gpubox.dashboard.read import HostSample, StateSample

__all__ = ["ActionDone", "HostPolled", "ProgressLine", "StateRead"]


@dataclass
class StateRead(Message, bubble=False):
    """The state database was read (hosts, holders, monitor reports, ledger, tunnels)."""

    sample: StateSample

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StateRead)


@dataclass
class HostPolled(Message, bubble=False):
    """One host answered a refresh (or did not: ``sample.ok`` is False)."""

    sample: HostSample
    selection: int = 0
    """The model's run selection when the poll was asked for (an answer about an older one is not fed)."""


@dataclass
class ActionDone(Message, bubble=False):
    """An action finished: say so, and refresh what it changed."""

    action: str
    title: str
    message: str
    severity: str = "information"
    host: str | None = None
    run_id: str | None = None
    """A run the action started (the dashboard selects it)."""


@dataclass
class ProgressLine(Message, bubble=False):
    """A line of progress from a long action (bringing a host up, launching an instance)."""

    text: str
    done: bool = False
    failed: bool = False
