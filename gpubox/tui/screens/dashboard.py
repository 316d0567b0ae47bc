"""The main screen: hosts, runs, the selected run's log and curves, live sync and tunnels."""

from __future__ import annotations

import time
from typing import ClassVar

from rich.console import RenderableType
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from gpubox.dashboard import DashboardSnapshot, HostView, RunView
from gpubox.fmt import format_duration, format_usd
from gpubox.tui.components.hosts_table import VERDICT_STYLES, HostsTable, host_cells
from gpubox.tui.components.log_view import RunLog
from gpubox.tui.components.plot import CurvesPanel
from gpubox.tui.components.runs_table import RUN_STYLES, RunsTable, run_cells
from gpubox.tui.components.tables import SnapshotTable

__all__ = ["DashboardScreen", "host_detail", "status_lines"]

NARROW_BELOW = 120
TALL_FROM = 40


def _clock(moment: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(moment))


def host_detail(host: HostView | None) -> Text:
    """Two lines about the selected host (each cut to the width): where it is, what it costs, how long it has
    been up, its GPU memory and autostop; then the verdict and its reasons, or since when it does not answer."""
    if host is None:
        return Text("no host selected", style="dim")
    text = Text()
    text.append(host.name, style="bold")
    text.append(f" · {host.provider}")
    if host.endpoint:
        text.append(f" · {host.endpoint}")
    if host.price_per_hour is not None:
        price = "free" if host.price_per_hour == 0 else f"{format_usd(host.price_per_hour)}/h"
        text.append(f" · {'~' if host.price_estimate else ''}{price}")
        if host.price_source:
            text.append(f" ({host.price_source})", style="dim")
    if host.held_by is None:
        text.append(" · down (u brings it up)", style="dim")
    else:
        if host.up_seconds is not None:
            text.append(f" · up {format_duration(host.up_seconds)}")
        memory, total = host.memory_used_mib, host.memory_total_mib
        if memory is not None and total:
            text.append(f" · GPU memory {memory / 1024:.1f}/{total / 1024:.0f} GiB")
        if host.autostop_text:
            text.append(f" · autostop {host.autostop_text}")
        text.append(f" · held by gpubox pid {host.held_by}", style="dim")
    text.append("\n")
    if host.state == "unreachable":
        since = _clock(host.unreachable_since) if host.unreachable_since is not None else "?"
        text.append(f"✗ unreachable since {since}", style="bold red")
        if host.problem:
            text.append(f": {host.problem}", style="red")
        text.append(" (retrying; the rest keeps updating)", style="dim")
        return text
    badge = {"cpu": "cpu", "unknown": "not checked yet"}.get(host.verdict, host.verdict)
    text.append(f"check {badge}", style=VERDICT_STYLES.get(host.verdict, ""))
    if host.verdict_text:
        text.append(f": {host.verdict_text}")
    reasons = [r for r in host.verdict_reasons if r != host.verdict_text]
    if reasons:
        text.append(" · " + " · ".join(reasons), style="dim")
    return text


def status_lines(snapshot: DashboardSnapshot, host: HostView | None) -> Text:
    """The sync line of the selected host (or the first one up) and every tunnel with its local URL."""
    text = Text()
    shown = host if host is not None and host.is_up else next((h for h in snapshot.hosts if h.is_up), None)
    text.append("sync ", style="bold")
    if shown is None:
        text.append("nothing is up", style="dim")
    elif shown.sync is None:
        text.append(f"{shown.name}: ", style="bold")
        text.append("not syncing (up with --no-sync, or no report yet)", style="dim")
    else:
        text.append(f"{shown.name}: ", style="bold")
        sync = shown.sync
        text.append(sync.text(), style="red" if sync.errors or sync.conflicts else "")
        if sync.recent_errors:
            text.append(f" · last: {sync.recent_errors[-1]}", style="red")
    text.append("\n")
    text.append("tunnels ", style="bold")
    # The selected host's tunnels (all of them when one host has any); a count for the others.
    holders = sorted({t.host for t in snapshot.tunnels})
    mine = [t for t in snapshot.tunnels if shown is not None and t.host == shown.name]
    tunnels = mine if mine or len(holders) > 1 else list(snapshot.tunnels)
    if not tunnels:
        text.append("none (up starts Jupyter and TensorBoard)", style="dim")
    for index, tunnel in enumerate(tunnels):
        if index:
            text.append(" · ")
        text.append(f"{tunnel.service} ", style="bold")
        text.append(tunnel.url.removesuffix("?token=<redacted>"), style="underline")
    others = len([h for h in holders if not tunnels or h != tunnels[0].host])
    if others and tunnels:
        text.append(f" · {others} more host{'s' if others > 1 else ''} with tunnels", style="dim")
    return text


class TitleBar(Static):
    """The top line: the project, what is up and what it costs (clicking it opens the command palette).

    Textual's Header would lay the whole screen out again each time its subtitle changes, which the money
    figures do on every refresh; this line keeps its height and only repaints."""

    def on_click(self) -> None:
        self.app.action_command_palette()


class DashboardScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "find", "Find", show=False),
        Binding("f", "follow", "Follow log", show=False),
        Binding("escape", "close_find", "Close find", show=False),
    ]

    def __init__(self) -> None:
        super().__init__(id="dashboard")
        self._shown: dict[str, object] = {}
        self._run_cells: dict[str, tuple[RunView, dict[str, RenderableType]]] = {}

    def compose(self) -> ComposeResult:
        yield TitleBar(id="title-bar")
        with Vertical(id="main"):
            yield HostsTable(id="hosts")
            yield Static(id="host-detail")
            yield RunsTable(id="runs")
            with Horizontal(id="run-panel"):
                with Vertical(id="log-box"):
                    yield RunLog(id="log")
                    yield Input(placeholder="find in the log (enter: next match, esc: close)", id="find")
                yield CurvesPanel(id="curves")
            yield Static(id="status-line")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#find", Input).display = False
        self.query_one("#hosts", HostsTable).border_title = "Hosts"
        self.query_one("#runs", RunsTable).border_title = "Runs"
        self.query_one("#log-box").border_title = "Log"
        self.query_one("#curves").border_title = "Curves"
        self._fit(self.app.size.width)
        self.query_one("#hosts", HostsTable).focus()
        refresh = getattr(self.app, "refresh_view", None)
        if refresh is not None:
            refresh()  # the first snapshot, drawn as soon as the panels exist

    def on_resize(self, event: Resize) -> None:
        self._fit(event.size.width, event.size.height)

    def _fit(self, width: int, height: int | None = None) -> None:
        self.set_class(width < NARROW_BELOW, "-narrow")
        self.set_class((height if height is not None else self.app.size.height) >= TALL_FROM, "-tall")
        self.query_one("#hosts", HostsTable).fit(width)
        self.query_one("#runs", RunsTable).fit(width)

    # -- selection

    @property
    def selected_host(self) -> str | None:
        return self.query_one("#hosts", HostsTable).selected_key

    @property
    def selected_run(self) -> tuple[str, str] | None:
        key = self.query_one("#runs", RunsTable).selected_key
        if key is None:
            return None
        host, _, run_id = key.rpartition("/")
        return host, run_id

    @on(SnapshotTable.RowHighlighted, "#hosts")
    def host_highlighted(self, event: SnapshotTable.RowHighlighted) -> None:
        if self.query_one("#hosts", HostsTable).is_current(event.cursor_row):
            select = getattr(self.app, "select_host", None)
            if select is not None:
                select(event.row_key)

    @on(SnapshotTable.RowHighlighted, "#runs")
    def run_highlighted(self, event: SnapshotTable.RowHighlighted) -> None:
        if self.query_one("#runs", RunsTable).is_current(event.cursor_row):
            host, _, run_id = event.row_key.rpartition("/")
            select = getattr(self.app, "select_run", None)
            if select is not None:
                select(host, run_id)

    @on(SnapshotTable.RowSelected, "#runs")
    def run_chosen(self, event: SnapshotTable.RowSelected) -> None:
        self.app.call_later(self.app.run_action, "logs")

    def show_run(self, host: str, run_id: str) -> None:
        self.query_one("#runs", RunsTable).select_key(f"{host}/{run_id}")

    def show_host(self, name: str) -> None:
        self.query_one("#hosts", HostsTable).select_key(name)

    # -- the log's find

    def action_find(self) -> None:
        field = self.query_one("#find", Input)
        field.display = True
        field.focus()

    def action_close_find(self) -> None:
        field = self.query_one("#find", Input)
        if field.display:
            field.display = False
            self.query_one(RunLog).end_search()
            self.query_one("#runs", RunsTable).focus()

    def action_follow(self) -> None:
        self.query_one(RunLog).follow()

    @on(Input.Submitted, "#find")
    def find_next(self, event: Input.Submitted) -> None:
        log = self.query_one(RunLog)
        number, total = log.search(event.value)
        box = self.query_one("#log-box")
        if total:
            box.border_subtitle = f"match {number}/{total} · enter: next · esc: close · f: follow"
        else:
            box.border_subtitle = f"no match for {event.value!r}"

    # -- drawing

    def apply_snapshot(self, snapshot: DashboardSnapshot) -> None:
        hosts_table = self.query_one("#hosts", HostsTable)
        runs_table = self.query_one("#runs", RunsTable)
        hosts_table.show_rows([(h.name, host_cells(h)) for h in snapshot.hosts])
        runs_table.show_rows(
            [(r.key, self._cells_of(r)) for r in snapshot.runs],
            keep=snapshot.selected.key if snapshot.selected is not None else None,
        )
        up = sum(1 for h in snapshot.hosts if h.is_up)
        self._set_title(hosts_table, f"Hosts · {up} up of {len(snapshot.hosts)}")
        active = sum(1 for r in snapshot.runs if not r.finished)
        self._set_title(runs_table, f"Runs · {active} active · {len(snapshot.runs)} shown")
        selected_host = snapshot.host(hosts_table.selected_key) if hosts_table.selected_key else None
        self._update("#host-detail", host_detail(selected_host))
        selected = snapshot.selected
        log = self.query_one(RunLog)
        log.show(selected)
        box = self.query_one("#log-box")
        if selected is None:
            self._set_title(box, "Log")
        else:
            title = Text(f"{selected.run_id} on {selected.host} · ")
            title.append(selected.state, style=RUN_STYLES.get(selected.state, ""))
            title.append(f" · {selected.command}")
            self._set_title(box, title)
            if not log.query_text:
                box.border_subtitle = "" if log.following else "paused · f follows"
        curves = self.query_one(CurvesPanel)
        curves.show(
            selected.curves if selected is not None else (),
            placeholder="no TensorBoard scalars yet"
            if selected is not None
            else "select a run to see its curves",
        )
        self._set_title(curves, f"Curves · {selected.run_id}" if selected is not None else "Curves")
        self._update("#status-line", status_lines(snapshot, selected_host))
        money = f"{format_usd(snapshot.per_hour)}/h · {format_usd(snapshot.total_spent_usd)} spent"
        if snapshot.total_budget_usd:
            money += f" of {format_usd(snapshot.total_budget_usd)}"
        title = Text("▣ ", style="bold")
        title.append(f"gpubox · {snapshot.project}", style="bold")
        title.append(f" — {up} up · {money}")
        if snapshot.problems:
            title.append(f"  ! {snapshot.problems[0]}", style="bold yellow")
        self._update("#title-bar", title)

    def _cells_of(self, run: RunView) -> dict[str, RenderableType]:
        """The run's cells, made again only when its view changed (most runs have ended and never change)."""
        cached = self._run_cells.get(run.key)
        if cached is not None and cached[0] == run:
            return cached[1]
        cells = run_cells(run)
        self._run_cells[run.key] = (run, cells)
        return cells

    def _set_title(self, widget: object, title: str | Text) -> None:
        key = f"title:{getattr(widget, 'id', '')}"
        if self._shown.get(key) != title:
            self._shown[key] = title
            widget.border_title = title  # type: ignore[attr-defined]

    def _update(self, selector: str, content: Text) -> None:
        before = self._shown.get(selector)
        if before != content:
            self._shown[selector] = content
            # A new layout (the whole screen drawn again) only when the number of lines changes.
            same_height = isinstance(before, Text) and before.plain.count("\n") == content.plain.count("\n")
            self.query_one(selector, Static).update(content, layout=not same_height)
