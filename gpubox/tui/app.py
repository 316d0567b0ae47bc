"""The gpubox dashboard: a Textual app that watches every host that is up and acts on them.

It only renders and dispatches. What it shows comes from :mod:`gpubox.dashboard` (state reads and one agent
round trip per host per refresh); what it does goes through :mod:`gpubox.actions`, the functions the command
line uses too. Every blocking call runs in a named thread worker that posts a message back; each poll is one
worker, re-armed when it has finished (dolphie style; :class:`gpubox.dashboard.poller.Polls` says when), so
polls never pile up and a slow host only slows itself. Screens and panels say what the user did with messages
(``@on`` handlers below); the app hands them what they show.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from textual import on, work
from textual.app import App
from textual.binding import BindingType
from textual.css.query import NoMatches
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.timer import Timer
from textual.worker import Worker, WorkerState, get_current_worker

from gpubox.config import HostsConfig, ProjectConfig
from gpubox.dashboard.model import Dashboard
from gpubox.dashboard.poller import HostPoller, PollRequest, Polls
from gpubox.dashboard.views import DashboardSnapshot
from gpubox.errors import GpuboxError
from gpubox.remote.providers.registry import provider_spec
from gpubox.tui.keys import ActionsProvider, bindings
from gpubox.tui.messages import ActionDone, HostPolled, ProgressLine, StateRead
from gpubox.tui.screens.details import CheckScreen, CostScreen, HelpScreen
from gpubox.tui.screens.logs import LogsScreen
from gpubox.tui.screens.main.panels.hosts import HostsPanel
from gpubox.tui.screens.main.panels.runs import RunsPanel
from gpubox.tui.screens.main.screen import MainScreen
from gpubox.tui.screens.modals import ConfirmScreen, HostPickerScreen, ProgressScreen, RunCommandScreen
from gpubox.tui.screens.offers import OffersScreen
from gpubox.tui.screens.sweeps import SweepsScreen
from gpubox.tui.workers import Abandoned, interruptible

__all__ = ["GpuboxApp", "open_in_browser"]

"""How long bringing a host up may go without a line of progress before the dashboard gives up waiting."""
Opener = Callable[[str], str]


def open_in_browser(url: str) -> str:
    """Open *url* in the browser; say what happened (where there is no browser, the URL itself, as
    `gpubox open` prints it)."""
    import webbrowser

    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        browser = None
    graphical = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if browser is None or (not graphical and sys.platform.startswith("linux")):
        return f"no browser here, open {url}"
    browser.open(url)
    return f"opened {url.split('?')[0]}"


class GpuboxApp(App[None]):
    """The dashboard. ``live=False`` shows the model's snapshots without reading or polling anything (tests,
    benchmarks); ``opener`` opens service URLs (default: the browser)."""

    CSS_PATH = Path(__file__).with_name("gpubox.tcss")
    TITLE = "gpubox"
    COMMANDS = App.COMMANDS | {ActionsProvider}
    BINDINGS: ClassVar[list[BindingType]] = bindings()

    def __init__(
        self,
        hosts: HostsConfig,
        project: ProjectConfig,
        *,
        model: Dashboard | None = None,
        live: bool = True,
        opener: Opener | None = None,
        refresh_seconds: float = 1.5,
        state_seconds: float = 1.0,
        focus_host: str | None = None,
    ) -> None:
        super().__init__()
        self.hosts_config = hosts
        self.project = project
        self.model = model or Dashboard(hosts, project)
        self.live = live
        self.opener: Opener = opener or open_in_browser
        self.polls = Polls(hosts, project, refresh_seconds=refresh_seconds, state_seconds=state_seconds)
        self.focus_host = focus_host
        self.title = f"gpubox · {project.name}"
        self.snapshot: DashboardSnapshot = self.model.snapshot()
        self._poll_timers: dict[str, Timer] = {}
        self._busy: set[str] = set()
        self._view_pending = False
        self._worker_errors: set[str] = set()
        self.said: list[ActionDone] = []
        """Every action result shown, newest last (what the notifications said)."""
        self.progress_lines: list[str] = []
        """Every line of progress shown by long actions (bringing a host up, renting one)."""
        self.selected_host: str | None = focus_host

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """A notification; plain text unless *markup* (commands, paths and errors hold brackets)."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    # -- set-up

    def get_default_screen(self) -> Screen[Any]:
        return MainScreen(draw=self.refresh_view)

    @property
    def main_screen(self) -> MainScreen:
        screen = self.screen_stack[0]
        assert isinstance(screen, MainScreen)
        return screen

    def on_mount(self) -> None:
        if self.live:
            self._read_state()
        # Everything loaded so far (Textual, Rich, gpubox) lives as long as the dashboard: keep it out of the
        # garbage collector's full passes, which otherwise walk it every few refreshes.
        gc.freeze()

    def on_unmount(self) -> None:
        for timer in self._poll_timers.values():
            timer.stop()
        for poller in self.polls.pollers.values():
            # Closing a session can wait on a dead link: never on the way out.
            threading.Thread(target=poller.close, name="gpubox close", daemon=True).start()

    # -- reading and polling

    @work(thread=True, name="read-state", group="state", exclusive=True, exit_on_error=False)
    def _read_state(self) -> None:
        self.post_message(StateRead(self.polls.state.read()))

    @on(StateRead)
    def _state_read(self, message: StateRead) -> None:
        self.model.apply_state(message.sample)
        self._sync_pollers()
        self._schedule_view()

    def _sync_pollers(self) -> None:
        started, stopped = self.polls.follow(self.model.polled_hosts())
        for name in started:
            self._start_poll(name)
        for name, poller in stopped:
            timer = self._poll_timers.pop(name, None)
            if timer is not None:
                timer.stop()
            self.workers.cancel_group(self, f"poll:{name}")
            threading.Thread(target=poller.close, name="gpubox close", daemon=True).start()

    def poll_now(self, name: str) -> None:
        """Refresh *name* at once (or as soon as its poll in flight has answered)."""
        if self.polls.poll_soon(name):
            self._start_poll(name)

    def _start_poll(self, name: str) -> None:
        poller = self.polls.begin(name)
        if poller is None:
            return
        timer = self._poll_timers.pop(name, None)
        if timer is not None:
            timer.stop()
        request = self.model.request_for(name)
        self.run_worker(
            partial(self._poll_host, poller, request, self.model.selection),
            name=f"poll {name}",
            group=f"poll:{name}",
            thread=True,
            exclusive=True,
            exit_on_error=False,
        )

    def _poll_host(self, poller: HostPoller, request: PollRequest, selection: int) -> None:
        sample = interruptible(lambda: poller.poll(request))
        self.post_message(HostPolled(sample, selection))

    @on(HostPolled)
    def _host_polled(self, message: HostPolled) -> None:
        self.model.apply_host(message.sample, selection=message.selection)
        self._schedule_view()

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        worker, state = event.worker, event.state
        if state not in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        group = worker.group
        failed = state == WorkerState.ERROR and not isinstance(worker.error, Abandoned)
        if failed and worker.name not in self._worker_errors:
            self._worker_errors.add(worker.name)  # the same failure every few seconds is said once
            self.notify(f"{worker.error}", title=f"{worker.name} failed", severity="error", timeout=10)
        if group == "state":
            if self.live and state != WorkerState.CANCELLED:
                self.set_timer(self.polls.state_read(failed=failed), self._read_state)
        elif group.startswith("poll:"):
            name = group.split(":", 1)[1]
            delay = self.polls.answered(name, failed=failed, cancelled=state == WorkerState.CANCELLED)
            if delay is not None:
                self._poll_timers[name] = self.set_timer(delay, partial(self._start_poll, name))
        elif group.startswith("action:"):
            self._busy.discard(group.split(":", 1)[1])
            if state == WorkerState.SUCCESS:
                self._worker_errors.discard(worker.name)

    # -- drawing

    def _schedule_view(self) -> None:
        if not self._view_pending:
            self._view_pending = True
            self.set_timer(0.05, self.refresh_view)

    def refresh_view(self) -> None:
        """Take a snapshot of the model and draw it on every screen that shows one; say what happened."""
        self._view_pending = False
        snapshot = self.model.snapshot()
        if self._auto_select(snapshot):
            snapshot = self.model.snapshot()
        self.show_snapshot(snapshot)
        for event in self.model.take_events():
            self.notify(event.message, title=event.title, severity=event.severity, timeout=8)  # type: ignore[arg-type]

    def show_snapshot(self, snapshot: DashboardSnapshot) -> None:
        self.snapshot = snapshot
        if not self.is_running:
            return  # on the way out: the screens are being taken apart
        for screen in self.screen_stack:
            if not isinstance(screen, MainScreen | LogsScreen):
                continue
            try:
                screen.apply_snapshot(snapshot)
            except NoMatches:
                continue  # a screen still composing (or being removed) shows the next snapshot
        if self.focus_host and snapshot.host(self.focus_host) is not None:
            self.main_screen.show_host(self.focus_host)
            self.focus_host = None

    def _auto_select(self, snapshot: DashboardSnapshot) -> bool:
        """Follow the newest active run (else the newest) when none is selected, or when the selected one is
        gone: its host answered without it, or is no longer up. A run just started is kept selected until its
        host has answered once."""
        selected = self.model.selected
        if selected is not None:
            host = snapshot.host(selected[0])
            if not self.model.selected_missing and host is not None and host.is_up:
                return False
            if not self.model.selected_missing and not self.live:
                return False
        if not snapshot.runs:
            if selected is not None:
                self.model.select_run(None, None)
                return True
            return False
        # This project's newest active run, else its newest run, else whatever else runs on its hosts.
        mine = [r for r in snapshot.runs if r.mine]
        pool = [r for r in mine if not r.finished] or mine or [r for r in snapshot.runs if not r.finished]
        choice = max(pool or snapshot.runs, key=lambda r: r.started_at or 0.0)
        if selected == (choice.host, choice.id):
            return False
        self.select_run(choice.host, choice.id)
        return True

    # -- what the screens say

    @on(HostsPanel.HostHighlighted)
    def _host_highlighted(self, message: HostsPanel.HostHighlighted) -> None:
        self.select_host(message.name)

    @on(RunsPanel.RunHighlighted)
    def _run_highlighted(self, message: RunsPanel.RunHighlighted) -> None:
        self.select_run(message.host, message.run_id)

    @on(RunsPanel.RunChosen)
    def _run_chosen(self) -> None:
        self.action_logs()

    @on(OffersScreen.OfferChosen)
    def _offer_chosen(self, message: OffersScreen.OfferChosen) -> None:
        self.launch_offer(message.host, message.offer_id)

    def select_run(self, host: str, run_id: str) -> None:
        if self.model.select_run(host, run_id):
            self.poll_now(host)
            self._schedule_view()

    def select_host(self, name: str) -> None:
        if name != self.selected_host:
            self.selected_host = name
            self._schedule_view()

    # -- what the actions act on

    def _host(self, *, up: bool) -> str | None:
        """The selected host (the only host up when the selection does not say); tells why when there is
        none."""
        snapshot = self.snapshot
        chosen = snapshot.host(self.selected_host) if self.selected_host else None
        if up and (chosen is None or not chosen.is_up):
            running = [h for h in snapshot.hosts if h.is_up]
            chosen = running[0] if len(running) == 1 else chosen if chosen and chosen.is_up else None
            if chosen is None:
                self.notify(
                    "no host is up: u brings one up" if not running else "select a host that is up first",
                    severity="warning",
                )
                return None
        if chosen is None:
            self.notify("select a host first", severity="warning")
            return None
        return chosen.name

    def _begin(self, name: str) -> bool:
        if name in self._busy:
            self.notify(f"{name.replace('_', ' ')} is already running", severity="warning")
            return False
        self._busy.add(name)
        return True

    def ask_from_thread(self, title: str, message: str, *, yes: str = "Yes") -> bool:
        """From a thread worker: ask the user yes or no with a modal, and wait for the answer."""
        answered = threading.Event()
        answer = [False]

        def record(result: bool | None) -> None:
            answer[0] = bool(result)
            answered.set()

        self.call_from_thread(self.push_screen, ConfirmScreen(title, message, yes=yes, danger=False), record)
        worker = get_current_worker()
        while not answered.wait(0.1):
            if worker.is_cancelled:
                return False
        return answer[0]

    @on(ActionDone)
    def _action_done(self, message: ActionDone) -> None:
        self.said.append(message)
        self.notify(message.message, title=message.title, severity=message.severity, timeout=8)  # type: ignore[arg-type]
        if message.run_id and message.host:
            self.select_run(message.host, message.run_id)
        if message.host and message.host in self.polls.pollers:
            self.poll_now(message.host)
        if self.live:
            self._read_state()

    @on(ProgressLine)
    def _progress_line(self, message: ProgressLine) -> None:
        self.progress_lines.append(message.text)
        screen = next((s for s in reversed(self.screen_stack) if isinstance(s, ProgressScreen)), None)
        if screen is not None:
            screen.add(message.text, done=message.done, failed=message.failed)

    def _say(self, action: str, title: str, text: str, severity: str = "information", **extra: Any) -> None:
        self.post_message(ActionDone(action, title, text, severity, **extra))

    # -- actions: up and down

    def action_up(self) -> None:
        down = [h for h in self.snapshot.hosts if h.configured and not h.is_up]
        chosen = self.snapshot.host(self.selected_host) if self.selected_host else None
        if chosen is not None and chosen.configured and not chosen.is_up:
            self._bring_up(chosen.name)
        elif not down:
            self.notify("every configured host is up (o rents another)", severity="warning")
        elif len(down) == 1:
            self._bring_up(down[0].name)
        else:
            choices = [(h.name, f"{h.name}  ({h.provider})") for h in down]
            self.push_screen(
                HostPickerScreen("Bring which host up?", choices),
                lambda name: self._bring_up(name) if name else None,
            )

    def launch_offer(self, name: str, offer_id: str) -> None:
        """Rent *offer_id* as host *name* (the provision screen's choice), then hold it like `up` does."""
        view = self.snapshot.host(name)
        if view is not None and view.is_up:
            self.notify(f"{name} is already up: d takes it down first", severity="warning")
            return
        self._bring_up(name, offer_id)

    def _bring_up(self, name: str, offer_id: str | None = None) -> None:
        if not self._begin("up"):
            return
        self.push_screen(ProgressScreen(f"gpubox up {name}"))
        self._up_worker(name, offer_id)

    @work(thread=True, name="up", group="action:up", exit_on_error=False)
    def _up_worker(self, name: str, offer_id: str | None = None) -> None:
        from gpubox.actions.supervisor import start_supervisor
        from gpubox.actions.up import UpOptions

        host = self.hosts_config.get(name)
        worker = get_current_worker()

        def line(text: str) -> None:
            self.post_message(ProgressLine(text))

        try:
            if host.spec.rents:
                from gpubox.provision import ensure_instance

                ensure_instance(
                    host,
                    confirm=lambda text: self.ask_from_thread(
                        f"Rent a machine for {name}?", text, yes="Rent"
                    ),
                    say=line,
                    offer_id=offer_id,
                )
            line(f"starting the gpubox process that holds {name} (connect, sync, env, services)…")
            held = start_supervisor(
                host,
                options=UpOptions(),
                say=line,
                ask_to_pin=self._ask_to_pin,
                confirm_mass_delete=lambda reason, deleting: self.ask_from_thread(
                    "Delete many files on the host?",
                    f"{reason}\nDelete those {deleting} files on the host (they go to its trash)?",
                    yes="Delete",
                ),
                should_stop=lambda: worker.is_cancelled,
                cwd=self.project.root,
                project=self.project,
            )
        except GpuboxError as exc:
            self.post_message(ProgressLine(f"✗ {exc}", done=True, failed=True))
            self._say("up", f"{name} did not come up", str(exc), "error")
            return
        self.post_message(ProgressLine(f"✓ {name} is up, held by gpubox pid {held.pid}", done=True))
        self._say("up", f"{name} is up", f"held by gpubox pid {held.pid} (log {held.log_path})", host=name)

    def _ask_to_pin(self, target: str, key_type: str, fingerprint: str) -> bool:
        """From a thread worker: show an unknown host key and pin it only if the user says so."""
        return self.ask_from_thread(
            f"Trust {target}?",
            f"The authenticity of host {target} can't be established.\n{key_type} key fingerprint is "
            f"{fingerprint}.\nPin this key and connect?",
            yes="Pin and connect",
        )

    def action_down(self) -> None:
        name = self._host(up=False)
        if name is None:
            return
        view = self.snapshot.host(name)
        if view is None or not view.configured:
            self.notify(
                f"{name} is not in hosts.toml any more: `gpubox up {name} --stop`", severity="warning"
            )
            return
        spec = provider_spec(view.provider)
        if spec.runs_own_sshd:
            what = "stops its services and the local sshd"
        elif not spec.stops_on_down:
            what = "stops this project's services (the machine itself keeps running)"
        else:
            what = "stops its services and terminates the instance (billing stops)"
        self.push_screen(
            ConfirmScreen(
                f"Take {name} down?",
                f"`gpubox down {name}` ends the gpubox process holding it and {what}. "
                "Runs still going there are killed with it where the host stops.",
                yes="Down",
            ),
            lambda yes: self._down(name) if yes else None,
        )

    def _down(self, name: str) -> None:
        if self._begin("down"):
            self._down_worker(name)

    @work(thread=True, name="down", group="action:down", exit_on_error=False)
    def _down_worker(self, name: str) -> None:
        from gpubox.actions.down import take_down

        said: list[str] = []
        try:
            take_down(
                self.hosts_config.get(name),
                self.project,
                say=said.append,
                confirm=lambda text: self.ask_from_thread(f"Terminate {name}?", text, yes="Terminate"),
                ask_to_pin=self._ask_to_pin,
                asked=True,
            )
        except GpuboxError as exc:
            self._say("down", f"down {name} failed", str(exc), "error", host=name)
            return
        self._say("down", f"{name} is down", "; ".join(said) or "nothing was holding it", host=name)

    # -- actions: runs

    def action_new_run(self) -> None:
        name = self._host(up=True)
        if name is None:
            return
        from gpubox.state import open_state

        try:
            with open_state() as state:
                history = [row.command for row in state.cached_runs()]
        except GpuboxError:
            history = []
        self.push_screen(
            RunCommandScreen(name, history, self.project.run.command),
            lambda command: self._start_run(name, command) if command else None,
        )

    def _start_run(self, name: str, command: str) -> None:
        if self._begin("run"):
            self.notify(f"syncing {name}, then starting: {command}", title="new run")
            self._run_worker(name, command)

    @work(thread=True, name="run", group="action:run", exit_on_error=False)
    def _run_worker(self, name: str, command: str) -> None:
        from gpubox.actions.runs import launch_run

        said: list[str] = []
        try:
            run = interruptible(
                lambda: launch_run(self.hosts_config.get(name), self.project, [command], say=said.append)
            )
        except GpuboxError as exc:
            self._say("run", "the run did not start", str(exc), "error", host=name)
            return
        self._say("run", f"started {run.id} on {name}", run.command, host=name, run_id=run.id)

    def action_stop_run(self) -> None:
        selected = self.model.selected
        run = self.snapshot.run(*selected) if selected else None
        if run is None:
            self.notify("select a run first", severity="warning")
            return
        if run.finished:
            self.notify(f"{run.id} already ended ({run.state})", severity="warning")
            return
        self.push_screen(
            ConfirmScreen(
                f"Stop {run.id} on {run.host}?",
                f"{run.command}\nSIGTERM to its process group, SIGKILL 10 s later if it is still there.",
                yes="Stop",
            ),
            lambda yes: self._stop_run(run.host, run.id) if yes else None,
        )

    def _stop_run(self, host: str, run_id: str) -> None:
        if self._begin("stop"):
            self._stop_worker(host, run_id)

    @work(thread=True, name="stop", group="action:stop", exit_on_error=False)
    def _stop_worker(self, host: str, run_id: str) -> None:
        from gpubox.actions.runs import stop_one_run

        try:
            run = interruptible(lambda: stop_one_run(self.hosts_config.get(host), self.project, run_id))
        except GpuboxError as exc:
            self._say("stop", f"stopping {run_id} failed", str(exc), "error", host=host)
            return
        code = "" if run.exit_code is None else f" (exit {run.exit_code})"
        self._say("stop", f"{run_id} {run.state}", f"{run.command}{code}", "warning", host=host)

    # -- actions: sync, pull, services

    def action_sync_now(self) -> None:
        name = self._host(up=True)
        if name is not None and self._begin("sync"):
            self._sync_worker(name)

    @work(thread=True, name="sync", group="action:sync", exit_on_error=False)
    def _sync_worker(self, name: str, allow_mass_delete: bool = False) -> None:
        from gpubox.actions.sync import sync_now

        try:
            report = interruptible(
                lambda: sync_now(
                    self.hosts_config.get(name), self.project, allow_mass_delete=allow_mass_delete
                )
            )
        except GpuboxError as exc:
            self._say("sync", f"sync {name} failed", str(exc), "error", host=name)
            return
        severity = "warning" if report.conflicts or report.errors or report.held_deletions else "information"
        self._say("sync", f"synced {name}", report.summary(), severity, host=name)

    def action_release_deletions(self) -> None:
        name = self._host(up=True)
        if name is None:
            return
        view = self.snapshot.host(name)
        sync = view.sync if view is not None else None
        if sync is None or not sync.held_deletions:
            self.notify(f"no deletions are held back on {name}", severity="information")
            return
        shown = ", ".join(sync.held_paths[:5]) + (
            " …" if sync.held_deletions > len(sync.held_paths[:5]) else ""
        )
        self.push_screen(
            ConfirmScreen(
                f"Delete {sync.held_deletions} files on {name}?",
                f"They were held back: {sync.held_reason or 'they look like a wipe'}. Deleted locally: {shown}. "
                "They go to the host's trash (kept for [sync] trash_days), as `gpubox sync --allow-mass-delete`.",
                yes="Delete",
            ),
            lambda yes: self._release(name) if yes else None,
        )

    def _release(self, name: str) -> None:
        if self._begin("sync"):
            self._sync_worker(name, allow_mass_delete=True)

    def action_pull(self) -> None:
        name = self._host(up=True)
        if name is not None and self._begin("pull"):
            self._pull_worker(name)

    @work(thread=True, name="pull", group="action:pull", exit_on_error=False)
    def _pull_worker(self, name: str) -> None:
        from gpubox.actions.sync import pull_outputs

        try:
            report = interruptible(lambda: pull_outputs(self.hosts_config.get(name), self.project))
        except GpuboxError as exc:
            self._say("pull", f"pull {name} failed", str(exc), "error", host=name)
            return
        self._say(
            "pull", f"pulled from {name}", report.summary(), "warning" if report.errors else "information"
        )

    def action_open_tensorboard(self) -> None:
        self._open("tensorboard")

    def action_open_jupyter(self) -> None:
        self._open("jupyter")

    def _open(self, service: str) -> None:
        name = self._host(up=True)
        if name is not None and self._begin(f"open {service}"):
            self._open_worker(name, service)

    @work(thread=True, name="open", group="action:open", exit_on_error=False)
    def _open_worker(self, name: str, service: str) -> None:
        from gpubox.actions.hosts import service_url
        from gpubox.state import open_state

        try:
            with open_state() as state:
                rows = {
                    row.service: row
                    for row in state.live_tunnels(name)
                    if row.project in (self.project.id, "")
                }
            if service not in rows:
                known = ", ".join(sorted(rows)) or "none"
                raise GpuboxError(f"{service} is not tunnelled from {name} (tunnelled now: {known})")
            row = rows[service]
            url = interruptible(
                lambda: service_url(self.hosts_config.get(name), self.project, row, show_secret=True)
            )
            said = self.opener(url)
        except GpuboxError as exc:
            self._say(f"open {service}", f"cannot open {service}", str(exc), "error")
            return
        finally:
            self._busy.discard(f"open {service}")
        self._say(f"open {service}", service, said)

    # -- screens

    def action_logs(self) -> None:
        if self.model.selected is None:
            self.notify("select a run first", severity="warning")
            return
        self.push_screen(LogsScreen(self.snapshot))

    def action_find(self) -> None:
        self.main_screen.action_find()

    def action_cost(self) -> None:
        self.push_screen(CostScreen(self.hosts_config))

    def action_check(self) -> None:
        name = self._host(up=False)
        if name is None:
            return
        view = self.snapshot.host(name)
        if (
            view is not None
            and not view.is_up
            and not (view.configured and provider_spec(view.provider).runs_own_sshd)
        ):
            self.notify(f"{name} is down: u brings it up, then k checks it", severity="warning")
            return
        self.push_screen(CheckScreen(self.hosts_config, self.project, name))

    def action_provision(self) -> None:
        self.push_screen(OffersScreen(self.hosts_config, self.project))

    def action_sweeps(self) -> None:
        self.push_screen(SweepsScreen(self.hosts_config, self.project, live=self.live))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        self.exit()

    def held_hosts(self) -> list[str]:
        return [h.name for h in self.snapshot.hosts if h.is_up]
