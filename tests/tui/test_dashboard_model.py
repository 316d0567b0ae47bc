"""The dashboard's data layer on its own (no Textual, no network): the log and curve buffers, GPU history,
events, missing figures, and the poller's backoff when a host does not answer."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

from gpubox.config import HostConfig, HostsConfig, ProjectConfig
from gpubox.dashboard.model import Dashboard
from gpubox.dashboard.poller import HostPoller, PollRequest, Polls
from gpubox.dashboard.read import HostSample, HostState, StateSample
from gpubox.dashboard.views import Curve, SyncView, curve_groups
from gpubox.errors import HostUnreachable
from gpubox.remote.gpu.readings import GpuReading
from gpubox.train.runs import RunInfo

NOW = 1_795_000_000.0


def _model(history: int = 120) -> Dashboard:
    hosts = HostsConfig(path=None, hosts={"box": HostConfig("box", budget_usd=10.0)})
    model = Dashboard(hosts, ProjectConfig(root=Path("/p"), path=None), clock=lambda: NOW, history=history)
    model.apply_state(
        StateSample(at=NOW, hosts=(HostState("box", "ssh", True, held_by=1, held_since=NOW - 60),))
    )
    return model


def _run(state: str, *, ended: float | None = None, code: int | None = None, **progress: object) -> RunInfo:
    return RunInfo("r-1", "box", "python train.py", state, NOW - 30, ended, code, progress=progress or None)


def test_the_data_layer_never_imports_textual() -> None:
    code = "import gpubox.dashboard.model, gpubox.actions, sys; print('textual' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    )


def test_log_lines_arrive_whole_progress_bars_keep_their_last_state_and_colours_go() -> None:
    model = _model()
    model.select_run("box", "r-1")
    chunks = [
        b"Epoch 1/2\n1/3 [=>..]\r2/3 [==>.]\r3/3 [===]",
        b" - loss: 0.5\n\x1b[32mdone\x1b[0m\npart",
        b"ial\n",
    ]
    offset = 0
    for chunk in chunks:
        model.apply_host(
            HostSample("box", NOW, True, runs=(_run("running"),), run="r-1", log_offset=offset, log=chunk)
        )
        offset += len(chunk)
    assert model.request_for("box").log_offset == offset
    selected = model.snapshot().selected
    assert selected is not None
    assert selected.lines == ("Epoch 1/2", "3/3 [===] - loss: 0.5", "done", "partial")
    # The host sending from elsewhere (the log was replaced) starts the buffer again.
    model.apply_host(
        HostSample("box", NOW, True, runs=(_run("running"),), run="r-1", log_offset=3, log=b"x\n")
    )
    assert model.snapshot().selected.lines == ("x",)  # type: ignore[union-attr]


def test_curves_grow_from_where_the_host_says() -> None:
    model = _model()
    model.select_run("box", "r-1")

    def feed(scalars: dict[str, tuple[int, tuple[tuple[float, float], ...]]]) -> None:
        model.apply_host(HostSample("box", NOW, True, runs=(_run("running"),), run="r-1", scalars=scalars))

    feed({"train/epoch_loss": (0, ((0, 2.0), (1, 1.0)))})
    assert model.request_for("box").scalars == {"train/epoch_loss": 2}
    feed({"train/epoch_loss": (2, ((2, 0.5),))})
    feed({"train/epoch_loss": (1, ((1, 0.9),))})  # the host sent again from point 1: it wins from there
    curves = model.snapshot().selected.curves  # type: ignore[union-attr]
    assert curves == (Curve("train/epoch_loss", ((0, 2.0), (1, 0.9))),)
    # An answer to a poll asked for before another run was selected is not fed to the new one.
    selection = model.selection
    model.select_run("box", "r-2")
    model.apply_host(
        HostSample("box", NOW, True, runs=(), run="r-2", log=b"old\n", log_size=4), selection=selection
    )
    assert model.snapshot().selected.lines == ()  # type: ignore[union-attr]


def test_gpu_history_is_a_ring_and_missing_figures_are_none() -> None:
    model = _model(history=3)
    for util in (10, 20, 30, 40):
        model.apply_host(HostSample("box", NOW, True, gpus=(GpuReading(0, "L4", util, 100, 1000),)))
    model.apply_host(HostSample("box", NOW, True, gpus=(GpuReading(0, "L4", None, None, None),)))
    (gpu,) = model.snapshot().hosts[0].gpus
    assert gpu.util_history == (20, 30, 40) and gpu.memory_history == (10.0, 10.0, 10.0)
    assert gpu.util_percent is None and gpu.memory_percent is None
    assert model.snapshot().hosts[0].util_percent is None


def test_events_runs_budget_autostop_conflicts_and_lost_hosts() -> None:
    hosts = HostsConfig(path=None, hosts={"box": HostConfig("box", budget_usd=10.0)})
    model = Dashboard(hosts, ProjectConfig(root=Path("/p"), path=None), clock=lambda: NOW)
    held = (HostState("box", "ssh", True, held_by=1, held_since=NOW - 60),)
    # The 50 % warning was given before the dashboard opened: old news, not told again.
    model.apply_state(StateSample(at=NOW, hosts=held, alerts=(("box", 50, 10.0, 5.0, NOW - 99),)))
    model.apply_host(HostSample("box", NOW, True, runs=(_run("running"),)))
    model.apply_host(HostSample("box", NOW, True, runs=(_run("failed", ended=NOW, code=2),)))
    box = model.state.hosts[0]  # type: ignore[union-attr]
    report = {
        "autostop": {"state": "counting", "stops_at": NOW + 42, "action": "stop the local sshd", "busy": []},
        "sync": {"watching": True, "conflicts": 1, "recent_conflicts": ["a.py -> a.py.gpubox-conflict-1"]},
    }
    first = HostState(**{**box.__dict__, "report": {**report, "sync": {"watching": True, "conflicts": 0}}})
    model.apply_state(StateSample(at=NOW, hosts=(first,), alerts=(("box", 50, 10.0, 5.0, NOW - 99),)))
    later = HostState(**{**box.__dict__, "report": report})
    alerts = (("box", 50, 10.0, 5.0, NOW - 99), ("box", 80, 10.0, 8.0, NOW))
    model.apply_state(StateSample(at=NOW, hosts=(later,), alerts=alerts))
    model.apply_state(StateSample(at=NOW, hosts=(later,), alerts=alerts))  # said once
    model.apply_host(HostSample("box", NOW, False, error="timed out", unreachable_since=NOW))
    model.apply_host(HostSample("box", NOW, False, error="timed out", unreachable_since=NOW))
    model.apply_host(HostSample("box", NOW, True))
    told = [(e.kind, e.title, e.severity) for e in model.take_events()]
    assert told == [
        ("run-failed", "r-1 failed with exit code 2", "error"),
        ("autostop", "box stops in 42 s", "warning"),
        ("budget", "budget 80 %", "warning"),
        ("conflict", "sync conflict on box", "warning"),
        ("unreachable", "box is not answering", "error"),
        ("reconnected", "box answers again", "information"),
    ]
    assert model.take_events() == []
    view = model.snapshot().hosts[0]
    assert view.autostop_seconds == 42 and view.sync is not None and view.sync.conflicts == 1


def test_the_max_hours_deadline_is_told_30_and_5_minutes_before_once_each() -> None:
    hosts = HostsConfig(path=None, hosts={"box": HostConfig("box", max_hours=2.0)})
    model = Dashboard(hosts, ProjectConfig(root=Path("/p"), path=None), clock=lambda: NOW)
    guardian = {"running": True, "deadline_at": NOW + 3600, "max_hours": 2.0}
    box = HostState("box", "ssh", True, held_by=1, held_since=NOW - 60, report={"guardian": guardian})
    told = []
    for at in (NOW, NOW + 1800, NOW + 1801, NOW + 3300, NOW + 3400, NOW + 3601):
        model.apply_state(StateSample(at=at, hosts=(box,)))
        told += [(e.kind, e.title) for e in model.take_events()]
    assert told == [("deadline", "box stops in 0:30:00"), ("deadline", "box stops in 0:05:00")]


def test_a_run_shorter_than_a_refresh_is_told_of_but_old_runs_are_not() -> None:
    model = _model()
    old = RunInfo("r-1", "box", "old", "succeeded", NOW - 999, NOW - 900, 0)
    model.apply_host(HostSample("box", NOW, True, runs=(old,)))
    quick = RunInfo("r-2", "box", "exit 3", "failed", NOW + 1, NOW + 1.2, 3)
    model.apply_host(HostSample("box", NOW + 2, True, runs=(old, quick)))
    assert [e.title for e in model.take_events()] == ["r-2 failed with exit code 3"]


def test_sync_line_and_curve_groups() -> None:
    sync = SyncView.from_report(
        {"watching": True, "last": {"files": 1, "ms": 12.4}, "pending": 2, "conflicts": 1, "held_back": 3}
    )
    assert (
        sync.text()
        == "watching · last batch 1 file in 12 ms · 2 pending · 1 conflict · 3 held back · 0 errors"
    )
    groups = curve_groups(
        [
            Curve("custom/val_error_rate", ()),
            Curve("train/epoch_accuracy", ()),
            Curve("validation/epoch_loss", ()),
            Curve("train/epoch_loss", ()),
        ]
    )
    assert [(name, [c.tag for c in curves]) for name, curves in groups] == [
        ("loss", ["validation/epoch_loss", "train/epoch_loss"]),
        ("accuracy", ["train/epoch_accuracy"]),
        ("val_error_rate", ["custom/val_error_rate"]),
    ]


def test_a_host_that_does_not_answer_is_retried_with_backoff() -> None:
    clock = [NOW]
    attempts: list[float] = []

    def connect() -> object:
        attempts.append(clock[0])
        raise HostUnreachable("cannot reach box: connection refused")

    poller = HostPoller(
        HostConfig("box"), "p", connect=connect, clock=lambda: clock[0], initial_backoff=1, max_backoff=4
    )
    samples = []
    for _ in range(40):
        samples.append(poller.poll(PollRequest()))
        clock[0] += 0.5
    assert all(not s.ok and s.unreachable_since == NOW for s in samples)
    assert samples[-1].error == "cannot reach box: connection refused"
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[:3] == [1.0, 2.0, 4.0] and set(gaps[3:]) == {4.0}  # doubling, then at most max_backoff


def test_one_poll_per_host_at_a_time_the_next_armed_when_it_has_answered() -> None:
    hosts = HostsConfig(path=None, hosts={"a": HostConfig("a"), "b": HostConfig("b")})
    project = ProjectConfig(root=Path("/p"), path=None)
    polls = Polls(hosts, project, refresh_seconds=1.5, state_seconds=1.0)
    # "gone" is held by a gpubox process but no longer in hosts.toml: nothing to connect with.
    started, stopped = polls.follow(["b", "gone", "a"])
    assert started == ["a", "b"] and stopped == [] and set(polls.pollers) == {"a", "b"}
    assert polls.begin("a") is polls.pollers["a"]
    assert polls.begin("a") is None  # still in flight: never two at once
    assert polls.poll_soon("a") is False and polls.poll_soon("b") is True
    assert polls.answered("a", failed=False, cancelled=False) == Polls.SOON_SECONDS
    polls.begin("a")
    assert polls.answered("a", failed=False, cancelled=False) == 1.5
    polls.begin("a")
    assert polls.answered("a", failed=True, cancelled=False) == Polls.FAILED_POLL_SECONDS
    polls.begin("a")
    assert polls.answered("a", failed=False, cancelled=True) is None
    assert (
        polls.state_read(failed=False) == 1.0 and polls.state_read(failed=True) == Polls.FAILED_READ_SECONDS
    )
    started, stopped = polls.follow(["b"])
    assert started == [] and [name for name, _poller in stopped] == ["a"]
    assert polls.begin("a") is None and polls.answered("a", failed=False, cancelled=False) is None


def test_curves_of_any_writer_group_by_metric() -> None:
    """Keras's, a custom tf.summary writer's and PyTorch's `Loss/train` series land in the plots they belong to."""
    from gpubox.dashboard.views import Curve, curve_groups, curve_name

    tags = [
        "train/epoch_loss",
        "validation/epoch_loss",
        "custom/loss",
        "Dec04_12-00-00_box/Loss/train",
        "Dec04_12-00-00_box/Loss/test",
        "search/lr-0.01/accuracy",
        "train/epoch_accuracy",
    ]
    groups = curve_groups([Curve(tag, ((0, 1.0),)) for tag in tags])
    assert [(metric, [curve_name(c.tag) for c in curves]) for metric, curves in groups] == [
        ("loss", ["train", "validation", "custom", "Dec04_12-00-00_box/train", "Dec04_12-00-00_box/test"]),
        ("accuracy", ["search/lr-0.01", "train"]),
    ]


def test_a_rented_host_whose_instance_stopped_with_its_disk_kept_shows_as_stopped_not_down() -> None:
    from gpubox.dashboard.read import StateReader
    from gpubox.state import open_state

    hosts = HostsConfig(
        path=None,
        hosts={
            "pod": HostConfig("pod", provider="runpod", gpu="RTX 4090"),
            "box": HostConfig("box", provider="vast", gpu="RTX 4090"),
        },
    )
    with open_state() as state:
        for host, instance_id in (("pod", "p-1"), ("box", "77")):
            provider = hosts.hosts[host].provider
            state.record_instance(
                provider=provider,
                instance_id=instance_id,
                host=host,
                name=f"gpubox-{host}-abcdef",
                api_url="http://127.0.0.1:9",
                price_per_hour=0.59,
                at=NOW - 600,
            )
        assert state.stop_instance("runpod", "p-1", "stopped outside gpubox", at=NOW - 60)
        assert not state.stop_instance("runpod", "p-1", "again", at=NOW)  # once
    project = ProjectConfig(root=Path("/p"), path=None)
    model = Dashboard(hosts, project, clock=lambda: NOW)
    model.apply_state(StateReader(hosts, project).read(NOW))
    views = {h.name: h for h in model.snapshot().hosts}
    assert (views["pod"].state, views["pod"].stopped_instance, views["pod"].is_up) == (
        "stopped",
        "p-1",
        False,
    )
    assert (views["box"].state, views["box"].stopped_instance) == ("down", None)
    with open_state() as state:
        stopped = state.current_instance("pod")
        assert stopped is not None and stopped.stopped and not stopped.billing
        assert (stopped.stopped_at, stopped.stop_reason) == (NOW - 60, "stopped outside gpubox")
        state.resume_instance("runpod", "p-1")
        again = state.current_instance("pod")
        assert again is not None and again.billing and (again.state, again.stopped_at) == ("launching", None)
