"""The provision screen against local servers that follow vast.ai's and RunPod's published APIs
(tests/support/clouds): offers cheapest first with their verdicts, filters, a snapshot, and renting one for
real, whose instance is a real sshd, through to holding it and taking it down."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Checkbox, DataTable, Input

from gpubox.config import HostsConfig, ProjectConfig, load_hosts, load_project
from gpubox.tui.app import GpuboxApp
from gpubox.tui.components.hosts_table import HostsTable
from gpubox.tui.screens.modals import ConfirmScreen
from gpubox.tui.screens.offers import OffersScreen
from tests.support.clouds import FakeCloud, FakeRunPod, FakeVast
from tests.support.sshd import SshServer
from tests.tui import synthetic
from tests.tui.conftest import RecordingApp, wait_until

pytestmark = pytest.mark.integration

KEYS = {"vast": "GPUBOX_TEST_VAST_KEY", "runpod": "GPUBOX_TEST_RUNPOD_KEY"}


def _project(tmp_path: Path, clouds: dict[str, FakeCloud], *, user: str, key: Path, extra: str = "") -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "train.py").write_text("print('hello from a rented box')\n")
    # No Jupyter or TensorBoard: renting is what is tested here, not the services.
    (folder / "gpubox.toml").write_text(
        "[services.jupyter]\nenabled = false\n[services.tensorboard]\nenabled = false\n"
    )
    lines = []
    for name, cloud in clouds.items():
        lines.append(f'[providers.{name}]\napi_key_env = "{KEYS[name]}"\napi_url = "{cloud.url}"\n')
        lines.append(
            f'[hosts.{name}-box]\nprovider = "{name}"\ngpu = "RTX 4090"\nuser = "{user}"\n'
            f'identity_file = "{key}"\nremote_dir = "{tmp_path / "remote" / name}"\nlaunch_timeout = 60\n{extra}'
        )
    (folder / "hosts.toml").write_text("\n".join(lines))
    return folder


@pytest.fixture
def clouds(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, FakeCloud]]:
    made: dict[str, FakeCloud] = {
        "vast": FakeVast(api_key=f"vast-{secrets.token_hex(8)}", boot_seconds=0.3).start(),
        "runpod": FakeRunPod(api_key=f"runpod-{secrets.token_hex(8)}", boot_seconds=0.3).start(),
    }
    for name, cloud in made.items():
        monkeypatch.setenv(KEYS[name], cloud.api_key)
    yield made
    for cloud in made.values():
        cloud.stop()


def _configs(root: Path) -> tuple[HostsConfig, ProjectConfig]:
    return load_hosts(root), load_project(root)


async def _open_offers(pilot: Pilot[None], app: GpuboxApp) -> OffersScreen:
    await pilot.press("o")
    await wait_until(pilot, lambda: isinstance(app.screen, OffersScreen), 10, "the provision screen")
    screen = app.screen
    assert isinstance(screen, OffersScreen)
    await wait_until(pilot, lambda: screen.report is not None, 60, "the offers")
    await pilot.pause()
    return screen


def test_snapshot_of_the_offers(
    snap_compare: Callable[..., bool], clouds: dict[str, FakeCloud], tmp_path: Path
) -> None:
    hosts, project = _configs(_project(tmp_path, clouds, user="root", key=tmp_path / "id"))
    model, _ = synthetic.empty()
    model.take_events()
    app = GpuboxApp(hosts, project, model=model, live=False)

    async def run_before(pilot: Pilot[None]) -> None:
        await _open_offers(pilot, app)

    assert snap_compare(app, terminal_size=(120, 32), run_before=run_before)


async def test_offers_are_cheapest_first_with_verdicts_and_filters(
    clouds: dict[str, FakeCloud], tmp_path: Path
) -> None:
    hosts, project = _configs(_project(tmp_path, clouds, user="root", key=tmp_path / "id"))
    app = GpuboxApp(hosts, project, model=synthetic.empty()[0], live=False)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _open_offers(pilot, app)
        assert screen.report is not None
        offers = [rated.offer for rated in screen.offers.values()]
        prices = [o.price_per_hour for o in offers]
        assert prices == sorted(prices) and {o.provider for o in offers} == {"vast", "runpod"}
        verdicts = {rated.verdict for rated in screen.offers.values()}
        assert "ok" in verdicts and "fail" in verdicts  # the GTX 1080 Ti's driver is too old for TF 2.21
        table = screen.query_one("#offers", DataTable)
        assert table.row_count == len(offers)
        # Only compatible ones, then only A100s.
        await pilot.press("a")
        await wait_until(pilot, lambda: screen.query_one("#compatible", Checkbox).value, 5, "the checkbox")
        await wait_until(
            pilot,
            lambda: screen.offers and all(r.verdict in ("ok", "warn") for r in screen.offers.values()),
            60,
            "compatible offers only",
        )
        await pilot.press("g")
        assert screen.query_one("#gpu-filter", Input).has_focus
        await pilot.press(*"4090", "enter")
        await wait_until(
            pilot,
            lambda: screen.offers and all("4090" in r.offer.gpu for r in screen.offers.values()),
            60,
            "RTX 4090 offers only",
        )
        detail = str(screen.query_one("#offer-detail").render())
        assert "4090" in detail and "/h" in detail and "enter rents it as " in detail, detail
        # An offer no configured host would rent says what to add instead of renting it.
        await pilot.press("g")
        screen.query_one("#gpu-filter", Input).value = "A100"
        await pilot.press("enter")
        await wait_until(
            pilot,
            lambda: screen.offers and all("A100" in r.offer.gpu for r in screen.offers.values()),
            60,
            "A100 offers only",
        )
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, OffersScreen)
        detail = str(screen.query_one("#offer-detail").render())
        assert "no host in hosts.toml would rent this one" in detail, detail


@pytest.mark.timeout(300)
async def test_renting_an_offer_asks_with_the_price_then_shows_the_launch_and_holds_it(
    tmp_path: Path, sshd: SshServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    vast = FakeVast(
        api_key=f"vast-{secrets.token_hex(8)}", ssh_host=sshd.host, ssh_port=sshd.port, boot_seconds=0.5
    ).start()
    monkeypatch.setenv(KEYS["vast"], vast.api_key)
    try:
        root = _project(tmp_path, {"vast": vast}, user=sshd.user, key=sshd.client_key)
        hosts, project = _configs(root)
        app = RecordingApp(hosts, project, refresh_seconds=0.4, state_seconds=0.4)
        questions: list[str] = []
        async with app.run_test(size=(140, 44)) as pilot:
            await wait_until(pilot, lambda: app.snapshot.host("vast-box") is not None, 30, "the host row")
            screen = await _open_offers(pilot, app)
            table = screen.query_one("#offers", DataTable)
            keys = list(screen.offers)
            wanted = next(
                k for k in keys if screen.offers[k].host == "vast-box" and screen.offers[k].verdict == "ok"
            )
            price = screen.offers[wanted].offer.price_per_hour
            table.move_cursor(row=keys.index(wanted))
            await pilot.press("enter")

            def answer() -> bool:
                if isinstance(app.screen, ConfirmScreen):
                    questions.append(f"{app.screen.title_text}: {app.screen.message}")
                    app.screen.dismiss(True)
                return (view := app.snapshot.host("vast-box")) is not None and view.state == "up"

            await wait_until(pilot, answer, 120, "the rented host up")
        assert questions and f"${price:.2f}/h" in questions[0] and "rent vast" in questions[0], questions
        lines = "\n".join(app.progress_lines)
        assert "launched vast instance" in lines and "billing from now" in lines, lines
        assert "✓ connected" in lines, lines
        assert len(vast.instances) == 1

        app = RecordingApp(hosts, project, refresh_seconds=0.4, state_seconds=0.4)
        async with app.run_test(size=(140, 44)) as pilot:
            await wait_until(
                pilot, lambda: (h := app.snapshot.host("vast-box")) is not None and h.is_up, 30, "up"
            )
            view = app.snapshot.host("vast-box")
            assert view is not None and view.price_per_hour == pytest.approx(price)
            app.screen.query_one("#hosts", HostsTable).select_key("vast-box")
            await pilot.press("d")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 10, "the question")
            assert "terminates the instance" in app.screen.message  # type: ignore[attr-defined]
            await pilot.press("y")

            def down() -> bool:
                # Terminating under runs still going asks again (this test's host is the shared test machine).
                if isinstance(app.screen, ConfirmScreen):
                    app.screen.dismiss(True)
                return any(s.action == "down" for s in app.said)

            await wait_until(pilot, down, 120, "down")
        down = next(s for s in app.said if s.action == "down")
        assert down.title == "vast-box is down", down
        assert not vast.instances and len(vast.terminated) == 1
    finally:
        vast.stop()
