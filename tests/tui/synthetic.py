"""Deterministic dashboards: fixed clock, fixed hosts and runs, fed through the real data layer (no database,
no network). The snapshot tests and bench/tui_refresh.py draw these."""

from __future__ import annotations

import math
from pathlib import Path

from gpubox.config import HostConfig, HostsConfig, ProjectConfig
from gpubox.dashboard.model import Dashboard
from gpubox.dashboard.read import HostSample, HostState, StateSample
from gpubox.dashboard.views import TunnelView
from gpubox.remote.gpu.readings import GpuReading
from gpubox.state import BillingInterval
from gpubox.train.runs import RunInfo

NOW = 1_795_000_000.0
"""A fixed wall clock (2026-11-19): the snapshots never move."""

GPU_MODELS = ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", "NVIDIA GeForce RTX 4090", "NVIDIA L4")
GPU_MEMORY = {
    "NVIDIA H100 80GB HBM3": 81559,
    "NVIDIA A100-SXM4-40GB": 40960,
    "NVIDIA GeForce RTX 4090": 24564,
    "NVIDIA L4": 23034,
}
PROVIDERS = ("lambda", "vast", "runpod", "ssh")
PRICES = {
    "NVIDIA H100 80GB HBM3": 2.49,
    "NVIDIA A100-SXM4-40GB": 1.29,
    "NVIDIA GeForce RTX 4090": 0.39,
    "NVIDIA L4": 0.44,
}


def project() -> ProjectConfig:
    return ProjectConfig(root=Path("/work/digits"), path=None)


def _interval(host: str, price: float, started: float, now: float) -> BillingInterval:
    return BillingInterval(
        id=hash(host) & 0xFFFF,
        host=host,
        price_per_hour=price,
        price_source="provider price",
        estimate=False,
        started_at=started,
        held_seconds=now - started,
        heartbeat_at=now,
        ended_at=None,
        holder_pid=4242,
        end_reason=None,
    )


def _progress(epoch: int, epochs: int, step: int) -> dict[str, object]:
    base = 2.3 * math.exp(-0.35 * (epoch - 2))  # the last epoch logged: the one before this one
    loss, val_loss = base + 0.05, base * 1.12 + 0.05
    return {
        "epoch": epoch,
        "epochs": epochs,
        "epochs_logged": epoch - 1,
        "eta_seconds": 9.0 * (epochs - epoch + 1),
        "metrics": {
            "loss": round(loss, 4),
            "accuracy": round(1 - loss / 2.6, 4),
            "val_loss": round(val_loss, 4),
            "val_accuracy": round(1 - val_loss / 2.6, 4),
        },
    }


def _curve_points(epochs: int) -> dict[str, tuple[int, tuple[tuple[float, float], ...]]]:
    def series(scale: float, kind: str) -> tuple[tuple[float, float], ...]:
        points = []
        for step in range(epochs):
            loss = 2.3 * math.exp(-0.35 * step) * scale + 0.05
            points.append((float(step), round(loss if kind == "loss" else 1 - loss / 2.6, 4)))
        return tuple(points)

    return {
        "train/epoch_loss": (0, series(1.0, "loss")),
        "validation/epoch_loss": (0, series(1.12, "loss")),
        "train/epoch_accuracy": (0, series(1.0, "acc")),
        "validation/epoch_accuracy": (0, series(1.12, "acc")),
    }


LOG = [
    "2026-11-19 10:12:01.000000: I tensorflow/core/platform/cpu_feature_guard.cc:210] oneDNN custom operations are on.",
    "Epoch 1/8",
    "23/23 - 2s - 87ms/step - accuracy: 0.4739 - loss: 1.8468 - val_accuracy: 0.8167 - val_loss: 0.8903",
    "Epoch 2/8",
    "23/23 - 0s - 7ms/step - accuracy: 0.8699 - loss: 0.5109 - val_accuracy: 0.9028 - val_loss: 0.3208",
    "Epoch 3/8",
    "23/23 - 0s - 7ms/step - accuracy: 0.9305 - loss: 0.2481 - val_accuracy: 0.9333 - val_loss: 0.2203",
    "Epoch 4/8",
    "23/23 - 0s - 7ms/step - accuracy: 0.9534 - loss: 0.1603 - val_accuracy: 0.9472 - val_loss: 0.1745",
    "Epoch 5/8",
]


def empty() -> tuple[Dashboard, HostsConfig]:
    """No hosts.toml, nothing up: only the built-in local host, down."""
    hosts = HostsConfig(path=None, hosts={"local": HostConfig("local", provider="local")})
    model = Dashboard(hosts, project(), clock=lambda: NOW)
    model.apply_state(
        StateSample(
            at=NOW,
            hosts=(
                HostState(
                    "local",
                    "local",
                    True,
                    gpu_label="not probed yet",
                    price_per_hour=0.0,
                    price_source="free: your own machine",
                ),
            ),
        )
    )
    return model, hosts


def one_training() -> tuple[Dashboard, HostsConfig]:
    """One rented A100 up with the digits example training (epoch 5 of 8), its log and curves, sync and
    tunnels; local configured and down."""
    hosts = HostsConfig(
        path=Path("/work/digits/hosts.toml"),
        hosts={
            "a100": HostConfig("a100", provider="lambda", budget_usd=50.0, autostop_minutes=30),
            "local": HostConfig("local", provider="local"),
        },
    )
    model = Dashboard(hosts, project(), clock=lambda: NOW, history=60)
    started = NOW - 3723
    state = StateSample(
        at=NOW,
        hosts=(
            HostState(
                "a100",
                "lambda",
                True,
                held_by=4242,
                held_since=started,
                endpoint="ubuntu@129.146.33.7:22",
                probed_at=started,
                gpu_label="1× NVIDIA A100-SXM4-40GB",
                verdict="ok",
                verdict_text="TensorFlow 2.21 (CUDA 12.5 via minor-version compatibility): compatible",
                verdict_reasons=(
                    "driver 550.54.14 supports CUDA ≤ 12.4; 12.5 runs by minor-version compatibility",
                ),
                price_per_hour=1.29,
                price_source="Lambda's price",
                intervals=(_interval("a100", 1.29, started, NOW),),
                report={
                    "autostop": {
                        "state": "busy",
                        "busy": ["1 run active"],
                        "gpu": "GPU 87 %",
                        "gpu_percent": 87,
                        "idle_seconds": 0,
                        "remaining_seconds": None,
                        "stops_at": None,
                        "action": "terminate the instance",
                        "minutes": 30,
                        "last_activity": None,
                    },
                    "budgets": [],
                    "sync": {
                        "watching": True,
                        "batches": 14,
                        "last": {"files": 3, "ms": 12.4, "at": NOW - 40, "why": "3 changed"},
                        "pending": 0,
                        "conflicts": 0,
                        "held_back": 1,
                        "errors": 0,
                        "recent_errors": [],
                        "recent_conflicts": [],
                    },
                },
                report_at=NOW - 1,
                autostop_minutes=30,
                budget_usd=50.0,
                tunnels=(
                    TunnelView("a100", "jupyter", 8888, "http://127.0.0.1:8888/lab?token=<redacted>"),
                    TunnelView("a100", "tensorboard", 6006, "http://127.0.0.1:6006/"),
                ),
            ),
            HostState("local", "local", True, price_per_hour=0.0, price_source="free: your own machine"),
        ),
    )
    model.apply_state(state)
    runs = (
        RunInfo(
            "r-1", "a100", "python train.py --epochs 3", "succeeded", started + 60, started + 120, 0, 4096
        ),
        RunInfo("r-2", "a100", "python train.py --lr 1e-2", "failed", started + 300, started + 310, 1, 812),
        RunInfo(
            "r-3",
            "a100",
            "python train.py --epochs 8",
            "running",
            NOW - 45,
            None,
            None,
            2048,
            progress=_progress(5, 8, 0),
        ),
    )
    for tick in range(60):
        util = 55 + 35 * math.sin(tick / 6.0) ** 2
        sample = HostSample(
            host="a100",
            at=NOW - (60 - tick) * 1.5,
            ok=True,
            gpus=(GpuReading(0, "NVIDIA A100-SXM4-40GB", round(util), 31000 + 40 * tick, 40960),),
            runs=runs,
        )
        model.apply_host(sample)
    model.select_run("a100", "r-3")
    log = ("\n".join(LOG) + "\n").encode()
    model.apply_host(
        HostSample(
            host="a100",
            at=NOW,
            ok=True,
            gpus=(GpuReading(0, "NVIDIA A100-SXM4-40GB", 87, 33400, 40960),),
            runs=runs,
            run="r-3",
            log_offset=0,
            log_size=len(log),
            log=log,
            scalars=_curve_points(4),
        )
    )
    return model, hosts


def many(
    hosts_count: int = 16,
    gpus_per_host: int = 8,
    runs_count: int = 500,
    *,
    tick: int = 0,
    model: Dashboard | None = None,
    hosts: HostsConfig | None = None,
) -> tuple[Dashboard, HostsConfig]:
    """*hosts_count* rented hosts of *gpus_per_host* GPUs each, *runs_count* runs spread over them (two
    running per host, the rest finished), one of them unreachable. Call again with *tick* + 1 and the same
    *model* for the next refresh (GPU figures and running epochs move)."""
    if hosts is None:
        configured = {}
        for index in range(hosts_count):
            name = f"gpu-{index:02d}"
            configured[name] = HostConfig(
                name,
                provider=PROVIDERS[index % len(PROVIDERS)],
                budget_usd=100.0 + 10 * index,
                autostop_minutes=30,
            )
        hosts = HostsConfig(path=Path("/work/digits/hosts.toml"), hosts=configured, total_budget_usd=2000.0)
    fresh = model is None
    if model is None:
        model = Dashboard(hosts, project(), clock=lambda: NOW + tick, history=60)
    model.clock = lambda: NOW + tick
    names = list(hosts.hosts)
    if fresh:
        states = []
        for index, name in enumerate(names):
            gpu = GPU_MODELS[index % len(GPU_MODELS)]
            price = PRICES[gpu] * gpus_per_host
            started = NOW - 3600 * (1 + index % 5)
            states.append(
                HostState(
                    name,
                    hosts.hosts[name].provider,
                    True,
                    held_by=5000 + index,
                    held_since=started,
                    endpoint=f"root@10.0.{index}.2:22",
                    probed_at=started,
                    gpu_label=f"{gpus_per_host}× {gpu}",
                    verdict=("ok", "ok", "warn", "fail")[index % 4],
                    verdict_text="TensorFlow 2.21: compatible",
                    price_per_hour=price,
                    price_source="provider price",
                    intervals=(_interval(name, price, started, NOW),),
                    report={
                        "autostop": {
                            "state": "counting",
                            "busy": [],
                            "gpu": "GPU 2 %",
                            "gpu_percent": 2,
                            "idle_seconds": 300,
                            "remaining_seconds": 1500,
                            "stops_at": NOW + 1500 + index * 60,
                            "action": "terminate the instance",
                            "minutes": 30,
                            "last_activity": None,
                        }
                        if index % 3 == 0
                        else {
                            "state": "busy",
                            "busy": ["2 runs active"],
                            "gpu": "GPU 90 %",
                            "gpu_percent": 90,
                            "idle_seconds": 0,
                            "remaining_seconds": None,
                            "stops_at": None,
                            "action": "terminate the instance",
                            "minutes": 30,
                            "last_activity": None,
                        },
                        "budgets": [],
                        "sync": {
                            "watching": True,
                            "batches": 3,
                            "last": {"files": 1, "ms": 8.0, "at": NOW},
                            "pending": 0,
                            "conflicts": 0,
                            "held_back": 0,
                            "errors": 0,
                        },
                    },
                    report_at=NOW,
                    autostop_minutes=30,
                    budget_usd=hosts.hosts[name].budget_usd,
                    tunnels=(
                        TunnelView(name, "tensorboard", 6006 + index, f"http://127.0.0.1:{6006 + index}/"),
                    ),
                )
            )
        model.apply_state(StateSample(at=NOW, hosts=tuple(states), total_budget_usd=hosts.total_budget_usd))
    for sample in many_samples(hosts, tick, gpus_per_host=gpus_per_host, runs_count=runs_count, first=fresh):
        model.apply_host(sample)
    return model, hosts


def many_samples(
    hosts: HostsConfig, tick: int, *, gpus_per_host: int = 8, runs_count: int = 500, first: bool = False
) -> list[HostSample]:
    """One refresh of every host of :func:`many` at *tick*, as their pollers would bring it (the last host
    answers only the *first* time)."""
    names = list(hosts.hosts)
    base, extra = divmod(runs_count, len(names))
    samples: list[HostSample] = []
    number = 0
    for index, name in enumerate(names):
        runs = []
        per_host = base + (1 if index < extra else 0)
        for k in range(per_host):
            number += 1
            running = k >= per_host - 2
            started = NOW - 7200 + k * 120
            if running:
                epoch = 1 + (tick + k + index) % 40
                runs.append(
                    RunInfo(
                        f"r-{k + 1}",
                        name,
                        f"python train.py --seed {number} --epochs 40",
                        "running",
                        started,
                        None,
                        None,
                        1000 + tick,
                        progress=_progress(epoch, 40, tick),
                    )
                )
            else:
                runs.append(
                    RunInfo(
                        f"r-{k + 1}",
                        name,
                        f"python train.py --seed {number}",
                        "failed" if k % 7 == 3 else "succeeded",
                        started,
                        started + 100,
                        1 if k % 7 == 3 else 0,
                        5000,
                    )
                )
        gpus = tuple(
            GpuReading(
                g,
                GPU_MODELS[index % len(GPU_MODELS)],
                float((17 * g + 13 * index + 7 * tick) % 100),
                float(1000 + ((g + tick) * 997) % 20000),
                float(GPU_MEMORY[GPU_MODELS[index % len(GPU_MODELS)]]),
            )
            for g in range(gpus_per_host)
        )
        if index == len(names) - 1 and len(names) > 1 and not first:
            # The last host stopped answering after its first refresh: its runs stay, marked by its row.
            samples.append(
                HostSample(host=name, at=NOW + tick, ok=False, error="timed out", unreachable_since=NOW - 95)
            )
            continue
        samples.append(HostSample(host=name, at=NOW + tick, ok=True, gpus=gpus, runs=tuple(runs)))
    return samples


def many_after(ticks: int = 40) -> tuple[Dashboard, HostsConfig]:
    """:func:`many` after *ticks* refreshes: sparklines with history, the last host unreachable."""
    model, hosts = many()
    for tick in range(1, ticks + 1):
        many(tick=tick, model=model, hosts=hosts)
    return model, hosts
