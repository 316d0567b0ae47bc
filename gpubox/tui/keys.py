"""Every dashboard action in one table: key bindings, the footer, the help screen and the command palette."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from textual.binding import Binding, BindingType
from textual.command import DiscoveryHit, Hit, Hits, Provider

__all__ = ["ACTIONS", "ActionSpec", "ActionsProvider", "bindings"]


@dataclass(frozen=True)
class ActionSpec:
    action: str
    key: str
    label: str
    help: str
    show: bool = True

    @property
    def key_display(self) -> str:
        return {"question_mark": "?", "slash": "/"}.get(self.key, self.key)


ACTIONS: tuple[ActionSpec, ...] = (
    ActionSpec("up", "u", "Up", "bring a host up: connect, sync, env, Jupyter and TensorBoard; hold it"),
    ActionSpec("down", "d", "Down", "stop holding the selected host and stop it where gpubox runs it (asks)"),
    ActionSpec("new_run", "n", "Run", "start a command on the selected host, detached (↑/↓: history)"),
    ActionSpec("stop_run", "s", "Stop", "stop the selected run: SIGTERM, then SIGKILL (asks)"),
    ActionSpec("sync_now", "y", "Sync", "sync the project to the selected host now"),
    ActionSpec(
        "pull",
        "p",
        "Pull",
        "bring the outputs folders and notebooks edited on the host back from the selected host",
    ),
    ActionSpec(
        "release_deletions",
        "x",
        "Let go",
        "carry out the deletions held back on the selected host as a wipe (into its trash), after asking",
        False,  # not in the footer (its room is full): the sync line names the key while something is held
    ),
    ActionSpec("open_tensorboard", "t", "TensorBoard", "open the selected host's TensorBoard in the browser"),
    ActionSpec("open_jupyter", "j", "Jupyter", "open the selected host's Jupyter (with its token)"),
    ActionSpec("logs", "l", "Logs", "the selected run's log, full screen, searchable"),
    ActionSpec("find", "slash", "Find", "find text in the run's log (enter: next match, esc: close)", False),
    ActionSpec("cost", "c", "Cost", "what each host and run has cost, budgets and totals"),
    ActionSpec("check", "k", "Check", "can TensorFlow use the selected host's GPU? the full verdict"),
    ActionSpec(
        "provision", "o", "Offers", "rent a machine: offers from the configured providers, cheapest first"
    ),
    ActionSpec(
        "sweeps",
        "w",
        "Sweeps",
        "hyperparameter sweeps: trials, best so far, a trial's log, stop a sweep",
        False,
    ),
    ActionSpec("help", "question_mark", "Help", "keys, panels and what each action does"),
    ActionSpec(
        "quit", "q", "Quit", "leave the dashboard; hosts and runs keep going (`gpubox down` stops one)"
    ),
)


def bindings() -> list[BindingType]:
    return [
        Binding(spec.key, spec.action, spec.label, show=spec.show, tooltip=spec.help, id=spec.action)
        for spec in ACTIONS
        if spec.action != "find"  # the dashboard screen binds it (it needs the log)
    ]


class ActionsProvider(Provider):
    """The command palette lists every action, with its key."""

    def _command(self, spec: ActionSpec) -> Callable[[], object]:
        return partial(self.app.call_later, self.app.run_action, spec.action)

    async def discover(self) -> Hits:
        for spec in ACTIONS:
            yield DiscoveryHit(spec.label, self._command(spec), help=f"{spec.help} · key {spec.key_display}")

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for spec in ACTIONS:
            words = f"{spec.label} {spec.action.replace('_', ' ')}"
            score = matcher.match(words)
            if score > 0:
                yield Hit(
                    score,
                    matcher.highlight(spec.label),
                    self._command(spec),
                    help=f"{spec.help} · key {spec.key_display}",
                )
