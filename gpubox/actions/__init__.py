"""The use cases the command line and the dashboard both call: bring a host up and hold it, take it down, rent
one, sync, start and stop runs, check a host's GPU.

Nothing here prints or imports Textual. Progress goes to a ``say`` callback that takes one finished line for the
user (the CLI prints it, the background supervisor sends it up its event channel, the dashboard shows it); what
happened comes back as return values. The core rooms (``remote``, ``sync``, ``train``, ``config``, ``state``,
``cost``) never import this package; ``cli`` and ``tui`` call it.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Say", "quiet"]

Say = Callable[[str], None]
"""Hears each line of progress meant for the user, already worded and indented as the CLI prints it."""


def quiet(line: str) -> None:
    """A ``say`` for callers that show no progress."""
