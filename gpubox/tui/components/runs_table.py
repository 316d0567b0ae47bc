"""The runs on every host that is up: state, time, money and training progress."""

from __future__ import annotations

from rich.console import RenderableType
from rich.text import Text

from gpubox.dashboard.views import RunView
from gpubox.fmt import format_duration, format_usd
from gpubox.tui.components.tables import Column, ViewTable

__all__ = ["RUN_STYLES", "RunsTable", "run_cells", "short_duration"]

RUN_STYLES = {
    "starting": "yellow",
    "running": "bold cyan",
    "succeeded": "green",
    "failed": "bold red",
    "stopped": "yellow",
    "lost": "red",
}
_SHORT_METRICS = {"accuracy": "acc", "sparse_categorical_accuracy": "acc", "mean_absolute_error": "mae"}


def _progress(run: RunView) -> Text:
    if run.epoch is None or not run.epochs:
        return Text("")
    text = Text(f"{run.epoch}/{run.epochs}")
    if not run.finished:
        share = max(0.0, min(1.0, run.epoch / run.epochs))
        filled = round(share * 6)
        text.append(" " + "━" * filled, style="cyan")
        text.append("━" * (6 - filled), style="grey30")
    return text


def short_duration(seconds: float) -> str:
    """``36s``, ``4m12``, ``1h05``, ``2d3h``: at most five characters, for narrow cells."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"


def run_cells(run: RunView) -> dict[str, RenderableType]:
    state = run.state + ("" if run.exit_code in (None, 0) else f" ({run.exit_code})")
    cost = Text("")
    if run.cost_usd is not None:
        cost = Text(("~" if run.cost_estimate else "") + format_usd(run.cost_usd))
    to_finish = Text("")
    if run.cost_to_finish_usd is not None:
        to_finish = Text("+" + format_usd(run.cost_to_finish_usd), style="dim")
    eta = ""
    if run.eta_seconds is not None and not run.finished:
        eta = format_duration(run.eta_seconds)
    metric = ""
    if run.metric is not None:
        name, value = run.metric
        metric = f"{_SHORT_METRICS.get(name, name[:8])} {value:.3g}"
    epochs = ""
    if run.epoch is not None and run.epochs:
        short = short_duration(run.eta_seconds) if run.eta_seconds is not None and not run.finished else ""
        epochs = f"{run.epoch}/{run.epochs}" + (f" {short}" if short else "")
    return {
        "id": Text(run.id, style="bold"),
        "host": run.host,
        "command": run.command if run.mine else Text(f"{run.command} (another project)", style="dim"),
        "state": Text(state, style=RUN_STYLES.get(run.state, "")),
        "elapsed": format_duration(run.elapsed_seconds) if run.elapsed_seconds is not None else "",
        "cost": cost,
        "to_finish": to_finish,
        "progress": _progress(run),
        "eta": eta,
        "epochs": epochs,
        "loss": "" if run.loss is None else f"{run.loss:.4g}",
        "metric": metric,
    }


class RunsTable(ViewTable[RunView]):
    WIDE = (
        Column("id", "Run", 6),
        Column("host", "Host", 12),
        Column("command", "Command", 36),
        Column("state", "State", 10),
        Column("elapsed", "Elapsed", 8),
        Column("cost", "Cost", 7),
        Column("to_finish", "To finish", 9),
        Column("progress", "Epoch", 13),
        Column("eta", "ETA", 8),
        Column("loss", "Loss", 7),
        Column("metric", "Metric", 12),
    )
    MEDIUM = (
        Column("id", "Run", 6),
        Column("host", "Host", 10),
        Column("command", "Command", 24),
        Column("state", "State", 10),
        Column("elapsed", "Elapsed", 8),
        Column("cost", "Cost", 7),
        Column("epochs", "Epoch ETA", 10),
        Column("loss", "Loss", 7),
        Column("metric", "Metric", 10),
    )
    NARROW = (
        Column("id", "Run", 5),
        Column("host", "Host", 6),
        Column("state", "State", 10),
        Column("elapsed", "Elapsed", 7),
        Column("cost", "Cost", 6),
        Column("epochs", "Epoch", 10),
        Column("loss", "Loss", 6),
        Column("metric", "Metric", 9),
    )

    def key(self, view: RunView) -> str:
        return view.key

    def cells(self, view: RunView) -> dict[str, RenderableType]:
        return run_cells(view)
