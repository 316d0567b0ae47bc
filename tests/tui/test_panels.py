"""The main screen's panels: each carries its id, region and help line, and the help screen lists them."""

from __future__ import annotations

from typing import get_args

from gpubox.tui.screens.details import panels_help
from gpubox.tui.screens.main.panels import PANELS
from gpubox.tui.screens.main.panels.base import Region


def test_every_panel_says_where_it_goes_and_the_help_lists_it() -> None:
    ids = [panel.PANEL_ID for panel in PANELS]
    assert len(set(ids)) == len(ids)
    assert all(panel.REGION in get_args(Region) for panel in PANELS)
    assert all(bool(panel.HELP_NAME) == bool(panel.HELP_TEXT) for panel in PANELS)
    # The text the help screen showed when it was written by hand, before the panels carried their own lines.
    assert panels_help() == (
        "  Hosts   every configured host, and those a gpubox process holds: state, GPUs (utilisation and\n"
        "          memory over the last minutes), the compatibility badge (the reasons show below the\n"
        "          table for the selected host; k has the full check), $/h, time up, spent, budget,\n"
        "          autostop countdown.\n"
        "  Runs    active runs and the last finished ones of each host that is up; select one to follow\n"
        "          its log and curves (enter opens the log full screen).\n"
        "  Log     the selected run's output as it comes; / finds, f follows again.\n"
        "  Curves  loss and metrics from the run's TensorBoard event files.\n"
        "  Bottom  live sync of the selected host (from the gpubox holding it) and the tunnels.\n"
    )
