"""`gpubox sweep` through the real command line, on the real local host (and a test sshd made to look like a
4-GPU machine with a captured nvidia-smi): grid, TPE with a seed, pruning, a failed trial, resume after the
scheduler is killed, a lost run asked again, --stop, a second SQLite storage given as a URL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from tests.support.cli import assert_one_line_error, host_entry, run_gpubox
from tests.support.hosthome import host_home
from tests.support.sshd import SshServer

pytestmark = pytest.mark.integration

CAPTURES = Path(__file__).parents[1] / "data" / "nvidia-smi"
A100_X4 = CAPTURES / "04_a100-sxm4-80gb-x4_555.txt"

# The metric is a known function of the params: best at lr = 0.01 and the most units. Each epoch reports a
# share of the final value (so early epochs are a fair forecast, as pruning assumes).
TRIAL = """
import argparse, json, os, sys, time
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.01)
p.add_argument("--units", type=int, default=64)
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--pause", type=float, default=0.05)
a = p.parse_args()
print("env", json.dumps({k: os.environ.get(k) for k in
      ("GPUBOX_TRIAL", "GPUBOX_TRIAL_PARAMS", "GPUBOX_SWEEP", "CUDA_VISIBLE_DEVICES", "GPUBOX_RUN_ID")}), flush=True)
if a.units < 0:
    print("boom: units must be positive", flush=True)
    sys.exit(3)
final = (1 - abs(a.lr - 0.01)) * a.units / 128
for epoch in range(a.epochs):
    time.sleep(a.pause)
    print(f"Epoch {epoch + 1}/{a.epochs}")
    print(f"loss: 0.5 - val_accuracy: {final * (epoch + 1) / a.epochs:.6f}", flush=True)
"""


def expected(lr: float, units: int) -> float:
    return round((1 - abs(lr - 0.01)) * units / 128, 6)


def _project(tmp_path: Path, sweep: str, name: str = "proj", hosts: str | None = None) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / ".git").mkdir()
    remote = tmp_path / f"remote-{name}"
    (folder / "hosts.toml").write_text(hosts or f'[hosts.local]\nremote_dir = "{remote}"\n')
    (folder / ".gitignore").write_text("hosts.toml\n")
    (folder / "trial.py").write_text(TRIAL)
    (folder / "gpubox.toml").write_text(sweep)
    return folder


@pytest.fixture
def cleanup() -> Any:
    folders: list[Path] = []
    yield folders.append
    for folder in folders:
        run_gpubox("down", "local", cwd=folder)


def _json(result: Any) -> dict[str, Any]:
    assert result.returncode in (0, 1), (result.returncode, result.stdout[-3000:], result.stderr[-3000:])
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def _sweep(project: Path, *args: str, timeout: float = 300) -> Any:
    return run_gpubox("sweep", *args, cwd=project, timeout=timeout)


def _record(project: Path, name: str) -> dict[str, Any]:
    home = Path(os.environ["GPUBOX_HOME"])
    row: dict[str, Any] = json.loads((home / "state" / "sweeps" / f"{name}.json").read_text())
    return row


def _wait_for(check: Any, timeout: float = 120, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


GRID = """
[sweep]
command = "python3 trial.py --lr {lr} --units {units} --epochs 3"
metric = "val_accuracy"
direction = "maximize"
sampler = "grid"

[sweep.params]
lr = [0.001, 0.01, 0.1]
units = [32, 128]
"""


def test_a_grid_sweep_runs_every_point_once_and_finds_the_best(tmp_path: Path, cleanup: Any) -> None:
    project = _project(tmp_path, GRID)
    cleanup(project)
    result = _sweep(project, "--follow", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    document = _json(result)
    assert (document["name"], document["metric"], document["direction"], document["state"]) == (
        "proj",
        "val_accuracy",
        "maximize",
        "finished",
    )
    trials = document["trials"]
    assert [t["number"] for t in trials] == list(range(6))
    assert sorted((t["params"]["lr"], t["params"]["units"]) for t in trials) == sorted(
        (lr, units) for lr in (0.001, 0.01, 0.1) for units in (32, 128)
    )
    for trial in trials:
        assert trial["state"] == "complete", trial
        assert trial["value"] == pytest.approx(expected(trial["params"]["lr"], trial["params"]["units"]))
        assert trial["host"] == "local" and trial["gpu"] is None and trial["run"].startswith("r-")
        assert trial["duration_s"] > 0 and trial["cost_usd"] == 0
    assert document["best"]["params"] == {"lr": 0.01, "units": 128}
    assert document["best"]["value"] == pytest.approx(1.0)
    # Each trial is an ordinary run with its own environment.
    best_run = document["best"]["run"]
    log = run_gpubox("logs", best_run, cwd=project)
    assert log.returncode == 0, log.stderr
    env = json.loads(log.stdout.splitlines()[0][len("env ") :])
    assert env["GPUBOX_TRIAL"] == str(document["best"]["number"])
    assert json.loads(env["GPUBOX_TRIAL_PARAMS"]) == {"lr": 0.01, "units": 128}
    assert env["GPUBOX_SWEEP"] == "proj" and env["GPUBOX_RUN_ID"] == best_run
    assert env["CUDA_VISIBLE_DEVICES"] is None  # a host without GPU: one slot, no GPU to pick
    runs = json.loads(run_gpubox("runs", "--all", "--json", cwd=project).stdout)["runs"]
    assert {t["run"] for t in trials} <= {run["id"] for run in runs}
    assert {run["name"] for run in runs if run["id"] == best_run} == {f"proj#{document['best']['number']}"}
    # The same name again: nothing left to run, nothing started.
    again = _sweep(project)
    assert again.returncode == 0, again.stderr
    assert "every point of the grid has run" in again.stdout
    assert "best: trial" in again.stdout
    listing = json.loads(run_gpubox("sweeps", "--json", cwd=project).stdout)["sweeps"]
    assert [(s["name"], s["state"], s["ended"], s["planned"]) for s in listing] == [
        ("proj", "finished", 6, 6)
    ]
    cost = json.loads(run_gpubox("cost", "--json", cwd=project).stdout)
    assert cost["sweeps"] == [
        {"name": "proj", "state": "finished", "trials": 6, "spent_usd": 0.0, "max_cost_usd": None}
    ]


def test_tpe_with_a_seed_asks_the_same_trials_again(tmp_path: Path, cleanup: Any) -> None:
    sweep = """
[sweep]
command = "python3 trial.py --lr {lr} --units {units} --epochs 1 --pause 0"
metric = "val_accuracy"
direction = "maximize"
sampler = "tpe"
seed = SEED
trials = 4

[sweep.params]
lr = { low = 1e-4, high = 1e-1, log = true }
units = { low = 16, high = 128, step = 16 }
"""
    project = _project(tmp_path, sweep.replace("SEED", "7"))
    cleanup(project)
    first = _json(_sweep(project, "first", "--follow", "--json"))
    second = _json(_sweep(project, "second", "--follow", "--json"))
    (project / "gpubox.toml").write_text(sweep.replace("SEED", "8"))
    other = _json(_sweep(project, "other", "--follow", "--json"))
    params = [[t["params"] for t in d["trials"]] for d in (first, second, other)]
    assert len(params[0]) == 4 and all(t["state"] == "complete" for t in first["trials"])
    assert params[0] == params[1]
    assert params[0] != params[2]
    for trial in first["trials"]:
        assert 1e-4 <= trial["params"]["lr"] <= 1e-1
        assert trial["params"]["units"] in range(16, 129, 16)
        assert trial["value"] == pytest.approx(
            expected(trial["params"]["lr"], trial["params"]["units"]), abs=1e-6
        )
    best = max(first["trials"], key=lambda t: t["value"])
    assert first["best"]["number"] == best["number"]


def _grid_order(values: list[Any], seed: int) -> list[Any]:
    """The order Optuna's grid sampler asks *values* in with *seed* (asked of Optuna itself)."""
    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"units": values}, seed=seed))
    distribution = optuna.distributions.CategoricalDistribution(values)
    # The first trials take the grid's points in its seeded order, told or not (asked and left running here).
    return [study.ask({"units": distribution}).params["units"] for _ in values]


def test_a_trial_behind_the_median_is_pruned_and_its_run_stopped(tmp_path: Path, cleanup: Any) -> None:
    values = [112, 120, 128, 8]

    def fits(order: list[Any]) -> bool:
        # Two good trials first, so the bad one meets a median to fall behind; the good ones best-last, so
        # none of them is behind the median of those before it.
        good = [units for units in order if units != 8]
        return order.index(8) >= 2 and good == sorted(good)

    seed = next(s for s in range(1000) if fits(_grid_order(values, s)))
    sweep = f"""
[sweep]
command = "python3 trial.py --units {{units}} --epochs 12 --pause 0.5"
metric = "val_accuracy"
direction = "maximize"
sampler = "grid"
seed = {seed}
prune = {{ startup_trials = 2 }}

[sweep.params]
units = {values}
"""
    project = _project(tmp_path, sweep)
    cleanup(project)
    result = _sweep(project, "--follow", "--json", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    document = _json(result)
    by_units = {t["params"]["units"]: t for t in document["trials"]}
    bad = by_units[8]
    assert bad["state"] == "pruned", bad
    assert bad["value"] is not None and bad["value"] < 8 / 128  # its last reported epoch, not its end
    assert bad["duration_s"] < 5.5  # stopped well before its 12 epochs of 0.5 s
    assert {t["state"] for units, t in by_units.items() if units != 8} == {"complete"}
    runs = {
        run["id"]: run
        for run in json.loads(run_gpubox("runs", "--all", "--json", cwd=project).stdout)["runs"]
    }
    assert runs[bad["run"]]["state"] == "stopped"
    assert "pruning, stopping" in result.stderr


def test_a_failed_trial_keeps_its_exit_code_and_last_line_and_the_sweep_goes_on(
    tmp_path: Path, cleanup: Any
) -> None:
    sweep = GRID.replace("units = [32, 128]", "units = [-1, 64]").replace("[0.001, 0.01, 0.1]", "[0.01]")
    project = _project(tmp_path, sweep)
    cleanup(project)
    result = _sweep(project, "--follow", "--json")
    assert result.returncode == 1, result.stderr[-3000:]  # not every trial finished or was pruned
    document = _json(result)
    assert document["state"] == "finished"
    by_units = {t["params"]["units"]: t for t in document["trials"]}
    failed = by_units[-1]
    assert (failed["state"], failed["exit_code"], failed["last_line"], failed["note"]) == (
        "failed",
        3,
        "boom: units must be positive",
        "exit 3",
    )
    assert by_units[64]["state"] == "complete"
    assert document["best"]["params"] == {"lr": 0.01, "units": 64}


def test_a_sweep_whose_every_trial_fails_stops_early(tmp_path: Path, cleanup: Any) -> None:
    sweep = GRID.replace("python3 trial.py", "python3 missing.py").replace(
        "lr = [0.001, 0.01, 0.1]", "lr = [0.001, 0.002, 0.003, 0.004]"
    )
    project = _project(tmp_path, sweep)
    cleanup(project)
    result = _sweep(project, "--follow", "--json")
    assert result.returncode == 1
    document = _json(result)
    assert document["state"] == "failed"
    assert document["reason"].startswith("every trial failed (3 of them); the last: exit 2: ")
    assert "missing.py" in document["reason"]
    assert len(document["trials"]) == 3  # of 8 planned


def test_a_killed_scheduler_is_resumed_its_running_trial_adopted_and_a_lost_one_asked_again(
    tmp_path: Path, cleanup: Any
) -> None:
    sweep = GRID.replace("--epochs 3", "--epochs 10 --pause 1").replace(
        "lr = [0.001, 0.01, 0.1]", "lr = [0.01]"
    )
    project = _project(tmp_path, sweep)
    cleanup(project)
    started = _sweep(project)
    assert started.returncode == 0, started.stderr
    assert "running in the background" in started.stdout

    def running() -> Any:
        document = _json(_sweep(project, "--show", "--json"))
        return next((t for t in document["trials"] if t["state"] == "running" and t["run"]), None)

    _wait_for(running, what="a trial to run")
    os.kill(_record(project, "proj")["pid"], signal.SIGKILL)
    shown = _json(_sweep(project, "--show", "--json"))
    assert shown["state"] == "interrupted"
    # The one whose run was going when the scheduler died (the first may have ended just before; a trial asked but
    # not started yet has no run to adopt).
    trial = next(t for t in shown["trials"] if t["state"] == "running" and t["run"])
    resumed = _sweep(project, "--follow", "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    document = _json(resumed)
    first = document["trials"][trial["number"]]
    assert first["run"] == trial["run"] and first["state"] == "complete"  # adopted, not run again
    assert f"following {trial['run']} on local" in resumed.stderr
    assert sorted(t["params"]["units"] for t in document["trials"]) == [32, 128]

    # Once more with a lost run: the scheduler dies, and the host forgets the trial's run.
    (project / "gpubox.toml").write_text(sweep.replace("lr = [0.01]", "lr = [0.02]"))
    assert _sweep(project, "lost").returncode == 0
    trial = _wait_for(
        lambda: next(
            (
                t
                for t in _json(_sweep(project, "lost", "--show", "--json"))["trials"]
                if t["run"] and t["state"] == "running"
            ),
            None,
        ),
        what="a trial to run",
    )
    os.kill(_record(project, "lost")["pid"], signal.SIGKILL)
    assert run_gpubox("stop", trial["run"], "--grace", "0", cwd=project).returncode == 0
    runs_dir = host_home() / ".gpubox" / "runs"
    shutil.rmtree(runs_dir / trial["run"])
    resumed = _sweep(project, "lost", "--follow", "--json")
    document = _json(resumed)
    lost = document["trials"][trial["number"]]
    assert lost["state"] == "failed" and lost["replaced_by"] is not None, lost
    again = document["trials"][lost["replaced_by"]]
    assert again["params"] == lost["params"] and again["state"] == "complete"
    assert resumed.returncode == 0, resumed.stderr[-3000:]  # the lost one does not count against the sweep


def test_stop_stops_the_running_trials_and_a_resume_finishes_the_grid(tmp_path: Path, cleanup: Any) -> None:
    sweep = GRID.replace("--epochs 3", "--epochs 30 --pause 1").replace(
        "lr = [0.001, 0.01, 0.1]", "lr = [0.01]"
    )
    project = _project(tmp_path, sweep)
    cleanup(project)
    assert _sweep(project).returncode == 0
    trial = _wait_for(
        lambda: next(
            (
                t
                for t in _json(_sweep(project, "--show", "--json"))["trials"]
                if t["run"] and t["state"] == "running"
            ),
            None,
        ),
        what="a trial to run",
    )
    stopped = _sweep(project, "--stop", "--json")
    assert stopped.returncode == 0, stopped.stderr
    document = _json(stopped)
    assert document["state"] == "stopped"
    assert document["trials"][trial["number"]]["state"] == "failed"
    assert document["trials"][trial["number"]]["note"] == "stopped with the sweep"
    runs = {r["id"]: r for r in json.loads(run_gpubox("runs", "--all", "--json", cwd=project).stdout)["runs"]}
    assert runs[trial["run"]]["state"] == "stopped"
    assert _record(project, "proj")["pid"] is None
    # Resumed with short trials: the stopped point runs again, the grid ends complete.
    (project / "gpubox.toml").write_text(sweep.replace("--epochs 30 --pause 1", "--epochs 2"))
    resumed = _sweep(project, "--follow", "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    document = _json(resumed)
    done = [t for t in document["trials"] if t["state"] == "complete"]
    assert sorted(t["params"]["units"] for t in done) == [32, 128]
    assert document["trials"][trial["number"]]["replaced_by"] is not None


def test_storage_given_as_a_url_holds_the_sweep(tmp_path: Path, cleanup: Any) -> None:
    project = _project(tmp_path, GRID.replace("lr = [0.001, 0.01, 0.1]", "lr = [0.01]"))
    cleanup(project)
    database = tmp_path / "elsewhere" / "studies.db"
    database.parent.mkdir()
    url = f"sqlite:///{database}"
    result = _sweep(project, "shared", "--storage", url, "--follow", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    document = _json(result)
    assert document["storage"] == url and len(document["trials"]) == 2
    # The study is in that file, for Optuna itself (another laptop, a notebook) to read.
    study = optuna.load_study(study_name="shared", storage=url)
    assert sorted(t.params["units"] for t in study.trials) == [32, 128]
    assert study.best_trial.params == {"lr": 0.01, "units": 128}
    assert study.trials[0].user_attrs["run"].startswith("r-")
    # gpubox remembers where it is: no --storage needed to show it, and it is not in the default storage.
    assert _json(_sweep(project, "shared", "--show", "--json"))["storage"] == url
    names = optuna.get_all_study_names(
        f"sqlite:///{Path(os.environ['GPUBOX_HOME']) / 'state' / 'sweeps' / 'studies.db'}"
    )
    assert "shared" not in names
    listing = json.loads(run_gpubox("sweeps", "--json", cwd=project).stdout)["sweeps"]
    assert [(s["name"], s["storage"]) for s in listing] == [("shared", url)]
    wrong = _sweep(project, "shared", "--storage", f"sqlite:///{tmp_path / 'other.db'}", "--show")
    line = assert_one_line_error(wrong, 2)
    assert line.startswith(f"gpubox: sweep shared lives in {url}, not sqlite:///")


def test_every_gpu_of_a_host_is_a_slot_with_its_own_cuda_visible_devices(
    tmp_path: Path, sshd: SshServer
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\ncat '{A100_X4}'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    python = tmp_path / "python-gpu"
    python.write_text(f'#!/bin/sh\nPATH="{bin_dir}:$PATH" exec {shutil.which("python3")} "$@"\n')
    python.chmod(0o755)
    hosts = host_entry(
        "gpu",
        sshd,
        accept_new=True,
        remote_dir=str(tmp_path / "remote-gpu"),
        python=str(python),
        price_per_hour=4.0,
    )
    sweep = (
        GRID.replace("--epochs 3", "--epochs 4 --pause 0.5")
        .replace("lr = [0.001, 0.01, 0.1]", "lr = [0.001, 0.002, 0.003, 0.004]")
        .replace("units = [32, 128]", "units = [64]")
    )
    project = _project(tmp_path, sweep, hosts=hosts)
    result = _sweep(project, "--hosts", "gpu", "--follow", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    document = _json(result)
    assert "gpu: 4 GPUs, 4 trials at a time" in result.stderr
    trials = document["trials"]
    assert sorted(t["gpu"] for t in trials) == [0, 1, 2, 3]  # four at once, one per GPU
    for trial in trials:
        log = run_gpubox("logs", trial["run"], "--host", "gpu", cwd=project)
        env = json.loads(log.stdout.splitlines()[0][len("env ") :])
        assert env["CUDA_VISIBLE_DEVICES"] == str(trial["gpu"])
        # A quarter of the host's $4/h while it ran (the document rounds to 6 decimals: a 2 s trial's $0.00057).
        assert trial["cost_usd"] == pytest.approx(1.0 * trial["duration_s"] / 3600, rel=1e-3, abs=1e-6)
    assert document["cost_usd"] == pytest.approx(sum(t["cost_usd"] for t in trials), abs=1e-5)


def test_max_cost_stops_starting_trials_and_gpubox_cost_counts_the_sweep(
    tmp_path: Path, sshd: SshServer
) -> None:
    # $3600/h is a dollar a second: a trial of about two seconds costs about $2, and a $5 budget holds two of them.
    hosts = host_entry(
        "dear", sshd, accept_new=True, remote_dir=str(tmp_path / "remote-dear"), price_per_hour=3600
    )
    sweep = (
        GRID.replace("--epochs 3", "--epochs 4 --pause 0.4")
        .replace("lr = [0.001, 0.01, 0.1]", "lr = [0.01]")
        .replace("units = [32, 128]", "units = [8, 16, 32, 64, 128]")
        .replace('sampler = "grid"', 'sampler = "grid"\nmax_cost_usd = 5')
    )
    project = _project(tmp_path, sweep, hosts=hosts)
    result = _sweep(project, "--hosts", "dear", "--follow", "--json")
    assert result.returncode == 0, result.stderr[-3000:]  # it ended by itself, every trial it ran complete
    document = _json(result)
    trials = document["trials"]
    assert 1 <= len(trials) < 5 and {t["state"] for t in trials} == {"complete"}
    assert document["reason"].startswith("the next trial would take the sweep past max_cost_usd $5.00 (")
    for trial in trials:
        assert trial["cost_usd"] == pytest.approx(trial["duration_s"], rel=1e-3)  # one slot: the whole $1/s
    assert document["cost_usd"] == pytest.approx(sum(t["cost_usd"] for t in trials), abs=1e-4)
    cost = json.loads(run_gpubox("cost", "--json", cwd=project).stdout)
    assert cost["sweeps"] == [
        {
            "name": "proj",
            "state": "finished",
            "trials": len(trials),
            "spent_usd": pytest.approx(document["cost_usd"], abs=1e-4),
            "max_cost_usd": 5.0,
        }
    ]
