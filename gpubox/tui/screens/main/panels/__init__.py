"""The panels of the main screen, one file each, in the order they are laid out and listed on the help screen.

To add a panel: write its file here, a widget that is also a :class:`~.base.Panel` (its id, region, border
title, help line, and :meth:`~.base.Panel.show`, which draws it from each snapshot), and put it in
:data:`PANELS`; the main screen places it, draws it and lists its help. Give it rules in gpubox.tcss (by its
id) when its own DEFAULT_CSS is not enough.
"""

from __future__ import annotations

from gpubox.tui.screens.main.panels.base import Panel
from gpubox.tui.screens.main.panels.curves import CurvesPanel
from gpubox.tui.screens.main.panels.host_detail import HostDetailPanel
from gpubox.tui.screens.main.panels.hosts import HostsPanel
from gpubox.tui.screens.main.panels.log import LogPanel
from gpubox.tui.screens.main.panels.runs import RunsPanel
from gpubox.tui.screens.main.panels.status import StatusPanel
from gpubox.tui.screens.main.panels.title import TitleBar

__all__ = ["PANELS"]

PANELS: tuple[type[Panel], ...] = (
    TitleBar,
    HostsPanel,
    HostDetailPanel,
    RunsPanel,
    LogPanel,
    CurvesPanel,
    StatusPanel,
)
