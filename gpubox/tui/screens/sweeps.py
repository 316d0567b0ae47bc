"""The sweeps screen: every sweep, the chosen one's trials (best first or by number) and its best-so-far curve,
with keys to open a trial's log and to stop the sweep. Read every few seconds in a thread worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static

from gpubox.config import HostsConfig, ProjectConfig
from gpubox.dashboard.sweeps import SweepDetail, SweepsView, read_sweeps, sorted_trials
from gpubox.errors import GpuboxError
from gpubox.tui.components.plot import plot_lines
from gpubox.tui.components.sweep_tables import SweepsTable, TrialsTable
from gpubox.tui.components.tables import SnapshotTable
from gpubox.tui.screens.details import LinesScreen
from gpubox.tui.screens.modals import ConfirmScreen
from gpubox.tui.workers import interruptible

__all__ = ["SweepsScreen", "TrialLogScreen"]

REFRESH_SECONDS = 2.0
NARROW_BELOW = 110
CURVE_HEIGHT = 8


class TrialLogScreen(LinesScreen):
    """The last lines of a trial's run log, read from its host (r reads again)."""

    def __init__(
        self, hosts: HostsConfig, project: ProjectConfig, host: str, run_id: str, title: str
    ) -> None:
        super().__init__(f"{title} · {run_id} on {host} (r reads again)")
        self.hosts = hosts
        self.project = project
        self.host = host
        self.run_id = run_id

    def produce(self) -> list[str]:
        from gpubox.actions.sweep import trial_log_tail

        return trial_log_tail(self.project, self.hosts, self.host, self.run_id) or ["(the log is empty)"]


class SweepsScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "back", "Back"),
        Binding("b", "toggle_order", "Best first/by number"),
        Binding("l", "trial_log", "Trial log"),
        Binding("s", "stop_sweep", "Stop sweep"),
        Binding("r", "reload", "Reload"),
    ]

    @dataclass
    class Read(Message, bubble=False):
        view: SweepsView

    @dataclass
    class Stopped(Message, bubble=False):
        text: str
        error: bool

    def __init__(self, hosts: HostsConfig, project: ProjectConfig, *, live: bool = True) -> None:
        super().__init__()
        self.hosts = hosts
        self.project = project
        self.live = live
        self.view = SweepsView()
        self.chosen: str | None = None
        self.best_first = True

    def compose(self) -> ComposeResult:
        yield Static("Sweeps", id="sweeps-title", classes="screen-title")
        yield SweepsTable(id="sweeps-list")
        with Horizontal(id="sweep-panel"):
            yield TrialsTable(id="sweep-trials")
            yield Static(id="sweep-curve")
        yield Static(id="sweep-status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(SweepsTable).border_title = "Sweeps"
        self.query_one(TrialsTable).border_title = "Trials"
        self.query_one("#sweep-curve", Static).border_title = "Best so far"
        self.query_one(TrialsTable).focus()
        self.on_resize()
        if self.live:
            self.action_reload()
            self.set_interval(REFRESH_SECONDS, self.action_reload)

    def on_resize(self) -> None:
        width = self.app.size.width
        narrow = width < NARROW_BELOW
        self.set_class(narrow, "-narrow")
        self.query_one(SweepsTable).fit(width)
        self.query_one(TrialsTable).fit(width - (30 if narrow else 38))

    # -- reading

    def action_reload(self) -> None:
        self._read(self.chosen)

    @work(thread=True, exclusive=True, exit_on_error=False, name="sweeps", group="sweeps")
    def _read(self, chosen: str | None) -> None:
        from gpubox.train.sweep.record import sweep_name_for

        view = interruptible(lambda: read_sweeps(chosen, sweep_name_for(self.project.name)))
        self.post_message(self.Read(view))

    @on(Read)
    def _got(self, message: Read) -> None:
        self.show(message.view)

    def show(self, view: SweepsView) -> None:
        """Draw *view* (the worker's, or a test's)."""
        self.view = view
        listed = self.query_one(SweepsTable)
        listed.show_views(view.sweeps, keep=self.chosen)
        detail = view.detail
        if detail is not None:
            self.chosen = detail.name
            listed.select_key(detail.name)
        self._show_detail(detail)
        title = f"Sweeps · {len(view.sweeps)} known"
        if detail is not None:
            title += f" · {detail.name}: {detail.direction} {detail.metric} · {detail.state}"
        self.query_one("#sweeps-title", Static).update(title)
        status = view.error or (detail.reason if detail is not None else None)
        if not view.sweeps and not view.error:
            status = "no sweeps yet: add [sweep] to gpubox.toml, then `gpubox sweep`"
        self.query_one("#sweep-status", Static).update(Text(status or "", style="dim"))

    def _show_detail(self, detail: SweepDetail | None) -> None:
        trials = self.query_one(TrialsTable)
        curve = self.query_one("#sweep-curve", Static)
        if detail is None:
            trials.show_views([])
            curve.update("")
            return
        trials.show_views(sorted_trials(detail, best_first=self.best_first), keep=trials.selected_key)
        order = "best first" if self.best_first else "by number"
        trials.border_title = f"Trials · {len(detail.trials)} · {order} (b)"
        width = max(10, curve.size.width - 2 if curve.size.width else 34)
        lines = plot_lines([("best", "green", list(detail.best_curve))], width, CURVE_HEIGHT)
        best = detail.best_curve[-1][1] if detail.best_curve else None
        head = Text(f"best {'' if best is None else format(best, '.4g')} · trial {detail.best_number}\n")
        curve.update(
            Text("\n").join([head, *lines])
            if best is not None
            else Text("no complete trial yet", style="dim")
        )

    @on(SnapshotTable.RowHighlighted, "#sweeps-list")
    def _sweep_highlighted(self, event: SnapshotTable.RowHighlighted) -> None:
        event.stop()
        if event.row_key != self.chosen and self.query_one(SweepsTable).is_current(event.cursor_row):
            self.chosen = event.row_key
            if self.live:
                self._read(self.chosen)

    @on(SnapshotTable.RowSelected, "#sweep-trials")
    def _trial_chosen(self, event: SnapshotTable.RowSelected) -> None:
        event.stop()
        self.action_trial_log()

    # -- acting

    def action_back(self) -> None:
        self.dismiss(None)

    def action_toggle_order(self) -> None:
        self.best_first = not self.best_first
        self._show_detail(self.view.detail)

    def action_trial_log(self) -> None:
        detail = self.view.detail
        key = self.query_one(TrialsTable).selected_key
        trial = next((t for t in detail.trials if str(t.number) == key), None) if detail else None
        if detail is None or trial is None:
            self.notify("no trial selected", severity="warning")
            return
        if trial.host is None or trial.run is None:
            self.notify(f"trial {trial.number} has no run yet", severity="warning")
            return
        self.app.push_screen(
            TrialLogScreen(
                self.hosts, self.project, trial.host, trial.run, f"{detail.name} trial {trial.number}"
            )
        )

    def action_stop_sweep(self) -> None:
        detail = self.view.detail
        if detail is None:
            self.notify("no sweep selected", severity="warning")
            return
        running = sum(1 for t in detail.trials if t.state == "running")
        name = detail.name

        def answered(yes: bool | None) -> None:
            if yes:
                self.notify(f"stopping sweep {name}…")
                self._stop(name)

        self.app.push_screen(
            ConfirmScreen(
                f"Stop sweep {name}?",
                f"No more trials start, and its {running} running trial{'s' if running != 1 else ''} "
                "are stopped (`gpubox sweep` resumes it later).",
                yes="Stop",
            ),
            answered,
        )

    @work(thread=True, name="stop-sweep", group="stop-sweep", exit_on_error=False)
    def _stop(self, name: str) -> None:
        from gpubox.actions.sweep import stop_sweep

        try:
            stopped = interruptible(lambda: stop_sweep(self.project, self.hosts, name))
        except GpuboxError as exc:
            self.post_message(self.Stopped(f"stopping {name} failed: {exc}", True))
            return
        text = f"sweep {name} stopped"
        if stopped.unreachable:
            text += f"; {len(stopped.unreachable)} trial(s) on hosts that did not answer still run"
        self.post_message(self.Stopped(text, bool(stopped.unreachable)))

    @on(Stopped)
    def _stopped(self, message: Stopped) -> None:
        self.notify(message.text, severity="error" if message.error else "information")
        self.action_reload()
