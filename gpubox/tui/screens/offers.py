"""Renting a machine: offers from every configured provider, cheapest first, each with its verdict for the
project's TensorFlow; choosing one launches it as the configured host of that provider (after asking, with the
price), and the launch's progress shows live."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Checkbox, DataTable, Footer, Input, Static

from gpubox.config import HostsConfig, ProjectConfig
from gpubox.errors import GpuboxError
from gpubox.fmt import either, format_usd
from gpubox.remote.providers.registry import CLOUD_NAMES
from gpubox.tui.components.hosts_table import VERDICT_STYLES

if TYPE_CHECKING:
    from gpubox.provision import OffersReport, RatedOffer

__all__ = ["OffersScreen"]


class OffersScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("r", "reload", "Ask again"),
        Binding("g", "focus_gpu", "GPU filter"),
        Binding("a", "toggle_compatible", "Compatible only"),
    ]

    @dataclass
    class Loaded(Message, bubble=False):
        """The offers worker's answer (a report, or why there is none)."""

        report: OffersReport | None
        error: str | None = None

    @dataclass
    class OfferChosen(Message):
        """Rent *offer_id* as host *host* (the user chose it): the app launches it and holds it."""

        host: str
        offer_id: str

    def __init__(self, hosts: HostsConfig, project: ProjectConfig) -> None:
        super().__init__()
        self.hosts = hosts
        self.project = project
        self.report: OffersReport | None = None
        self.offers: dict[str, RatedOffer] = {}

    def compose(self) -> ComposeResult:
        yield Static(
            "Rent a machine: offers from the configured providers, cheapest first", classes="screen-title"
        )
        with Horizontal(id="offer-filters"):
            yield Input(placeholder="GPU (A100, 4090…)", id="gpu-filter")
            yield Input(placeholder="max $/h", id="price-filter", type="number")
            yield Checkbox("compatible only", id="compatible")
            yield Static("", id="offer-count")
        table: DataTable[object] = DataTable(id="offers", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static("asking the providers…", id="offer-detail")
        yield Static("", id="offer-problems")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#offers", DataTable)
        for key, label, width in (
            ("provider", "Provider", 8),
            ("gpu", "GPU", 22),
            ("count", "N", 3),
            ("memory", "GPU mem", 8),
            ("region", "Region", 16),
            ("price", "$/h", 8),
            ("verdict", "Verdict", 8),
            ("host", "Launches as", 14),
        ):
            table.add_column(label, key=key, width=width)
        table.border_title = "Offers"
        table.focus()
        self.action_reload()

    # -- asking

    def action_reload(self) -> None:
        gpu = self.query_one("#gpu-filter", Input).value.strip() or None
        price_text = self.query_one("#price-filter", Input).value.strip()
        try:
            max_price = float(price_text) if price_text else None
        except ValueError:
            max_price = None
        compatible = self.query_one("#compatible", Checkbox).value
        self.query_one("#offer-detail", Static).update("asking the providers…")
        self._load(gpu, max_price, compatible)

    @work(thread=True, exclusive=True, exit_on_error=False, name="offers", group="offers")
    def _load(self, gpu: str | None, max_price: float | None, compatible: bool) -> None:
        try:
            from gpubox.provision import collect_offers

            report = collect_offers(
                self.hosts, self.project, gpu=gpu, max_price=max_price, compatible_only=compatible
            )
        except GpuboxError as exc:
            self.post_message(self.Loaded(None, str(exc)))
            return
        self.post_message(self.Loaded(report))

    @on(Loaded)
    def loaded(self, message: Loaded) -> None:
        table = self.query_one("#offers", DataTable)
        table.clear()
        self.offers = {}
        detail = self.query_one("#offer-detail", Static)
        problems = self.query_one("#offer-problems", Static)
        if message.report is None:
            detail.update(Text(f"✗ {message.error}", style="red"))
            problems.update("")
            self.query_one("#offer-count", Static).update("")
            return
        self.report = report = message.report
        for index, rated in enumerate(report.offers):
            offer = rated.offer
            key = f"{index}:{offer.provider}:{offer.offer_id}"
            self.offers[key] = rated
            table.add_row(
                offer.provider,
                offer.gpu,
                str(offer.gpu_count),
                f"{offer.gpu_memory_gb:g} GB" if offer.gpu_memory_gb else "",
                offer.region,
                format_usd(offer.price_per_hour),
                Text(rated.verdict, style=VERDICT_STYLES.get(rated.verdict, "dim")),
                rated.host or Text("no host", style="dim"),
                key=key,
            )
        asked = ", ".join(report.asked) or "none"
        self.query_one("#offer-count", Static).update(f"{len(report.offers)} offers from {asked}")
        table.border_title = f"Offers · judged for {report.framework}" if report.framework else "Offers"
        problems.update(
            Text("\n".join(f"! {provider}: {why}" for provider, why in report.problems), style="yellow")
        )
        if not report.asked:
            clouds = either([f'"{name}"' for name in CLOUD_NAMES])
            detail.update(
                f"no cloud provider is configured: add a [hosts.NAME] with provider = {clouds} "
                "to hosts.toml (see hosts.example.toml)"
            )
        elif not report.offers:
            detail.update("no offer matches: loosen the filters (g: GPU, a: compatible only)")
        else:
            self._describe(next(iter(self.offers)))

    # -- choosing

    @on(DataTable.RowHighlighted, "#offers")
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value is not None:
            self._describe(event.row_key.value)

    def _describe(self, key: str) -> None:
        rated = self.offers.get(key)
        if rated is None:
            return
        offer = rated.offer
        text = Text()
        text.append(f"{offer.gpu_count}× {offer.gpu}", style="bold")
        text.append(
            f" · {offer.provider} {offer.instance_type or offer.offer_id} · {offer.region or 'any region'}"
        )
        text.append(f" · {format_usd(offer.price_per_hour)}/h", style="bold")
        if offer.detail:
            text.append(f" · {offer.detail}", style="dim")
        text.append("\n")
        text.append(f"{rated.verdict}", style=VERDICT_STYLES.get(rated.verdict, "dim"))
        if rated.reasons:
            text.append(": " + " · ".join(rated.reasons))
        text.append("\n")
        if rated.host:
            text.append(f"enter rents it as {rated.host} (asks first, with the price)", style="dim")
        else:
            text.append(
                f"no host in hosts.toml would rent this one: add one with provider = "
                f'"{offer.provider}" and gpu = "{offer.gpu}" (and its count, region, price cap)',
                style="dim",
            )
        self.query_one("#offer-detail", Static).update(text)

    @on(DataTable.RowSelected, "#offers")
    def chosen(self, event: DataTable.RowSelected) -> None:
        rated = self.offers.get(event.row_key.value or "")
        if rated is None:
            return
        if rated.host is None:
            self.notify(
                f'no host in hosts.toml would rent this offer: add one with provider = "{rated.offer.provider}" '
                f'and gpu = "{rated.offer.gpu}"',
                severity="warning",
            )
            return
        self.post_message(self.OfferChosen(rated.host, rated.offer.offer_id))

    # -- filters

    @on(Input.Submitted, "#gpu-filter, #price-filter")
    def filter_submitted(self, event: Input.Submitted) -> None:
        self.action_reload()
        self.query_one("#offers", DataTable).focus()

    @on(Checkbox.Changed, "#compatible")
    def compatible_changed(self, event: Checkbox.Changed) -> None:
        self.action_reload()

    def action_focus_gpu(self) -> None:
        self.query_one("#gpu-filter", Input).focus()

    def action_toggle_compatible(self) -> None:
        box = self.query_one("#compatible", Checkbox)
        box.value = not box.value

    def action_back(self) -> None:
        if self.query_one("#gpu-filter", Input).has_focus or self.query_one("#price-filter", Input).has_focus:
            self.query_one("#offers", DataTable).focus()
            return
        self.dismiss(None)
