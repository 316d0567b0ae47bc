"""What finding a run's metrics costs the agent on a big logs folder: one dashboard refresh and one `gpubox runs`.

The project's output folders hold 5,000 TensorBoard event files from earlier runs, laid out as people leave
them: 750 Keras runs (``logs/r-N/train`` and ``validation``, 1,500 files), a flat ``tf.summary`` writer reused by
every run (``logs/custom``, 2,000 files) and 1,500 PyTorch ``SummaryWriter`` folders (``runs/<date>_<host>``).
The run being watched wrote 4 more (its GPUBOX_TB_DIR's train/ and validation/, one in logs/custom, one
PyTorch folder), each 200 scalar points with 200 histograms beside them.

Measured in-process on the agent's own code (``gpubox/remote/agent/host.py``):

- a dashboard refresh of that run (the ``dash`` op, GPU query off): the first one, on a new agent (discovery
  from nothing, every series read), then the steady state (the agent remembers folders and read offsets);
- the run's progress in a run listing (``run_list``, what `gpubox runs` shows), on a new agent each time.

Anchors, in the same run:

- a plain walk of the same output folders that stats every file, the least any discovery that looks at each
  event file's time must do;
- TensorBoard's own EventMultiplexer on the same folders (``AddRunsFromDirectory`` + ``Reload``, what its
  reload loop does each time; it reads every run there, histograms included), timed inside a Python that has
  TensorBoard (``--tensorboard-python``, e.g. the project env gpubox built on the host): the first load, then
  a reload with nothing new.

    .venv/bin/python bench/metrics_discovery.py [--repeat 20] [--tensorboard-python PATH] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from _results import machine, publish  # noqa: E402

SECTION = "## Metric discovery (bench/metrics_discovery.py)"
OLD_FILES = 5000
POINTS = 200


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _record(step: int, value_message: bytes) -> bytes:
    summary = _field(1, 2, _varint(len(value_message)) + value_message)
    event = (
        _field(1, 1, struct.pack("<d", time.time()))
        + _field(2, 0, _varint(step))
        + _field(5, 2, _varint(len(summary)) + summary)
    )
    return struct.pack("<Q", len(event)) + b"\0" * 4 + event + b"\0" * 4


def _scalar(step: int, tag: str, value: float) -> bytes:
    """A TF2 scalar: a float tensor with an empty shape."""
    tensor = (
        _field(1, 0, _varint(1))
        + _field(2, 2, _varint(0))
        + _field(4, 2, _varint(4) + struct.pack("<f", value))
    )
    message = _field(1, 2, _varint(len(tag)) + tag.encode()) + _field(8, 2, _varint(len(tensor)) + tensor)
    return _record(step, message)


def _histogram(step: int, tag: str) -> bytes:
    """A TF2 histogram: a [30, 3] double tensor (tf.summary.histogram's default 30 buckets)."""
    content = struct.pack("<90d", *range(90))
    shape = _field(2, 2, _varint(2) + _field(1, 0, _varint(30))) + _field(
        2, 2, _varint(2) + _field(1, 0, _varint(3))
    )
    tensor = (
        _field(1, 0, _varint(2))
        + _field(2, 2, _varint(len(shape)) + shape)
        + _field(4, 2, _varint(len(content)) + content)
    )
    message = _field(1, 2, _varint(len(tag)) + tag.encode()) + _field(8, 2, _varint(len(tensor)) + tensor)
    return _record(step, message)


def _event_file(folder: Path, created: float, pid: int, records: bytes, index: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"events.out.tfevents.{int(created)}.benchhost.{pid}.{index}.v2").write_bytes(records)


def build(base: Path) -> tuple[Path, Path, int]:
    """The project with its logs, the host home with the watched run; (project, run folder, old files)."""
    project = base / "project"
    old = time.time() - 86400
    dead_pid = 999_999  # the earlier runs' writers are long gone
    small = b"".join(_scalar(step, "epoch_loss", 1.0 / (step + 1)) for step in range(3))
    count = 0
    for run in range(1, 751):
        for part in ("train", "validation"):
            _event_file(project / "logs" / f"r-{run}" / part, old + run, dead_pid, small)
            count += 1
    for index in range(2000):
        _event_file(project / "logs" / "custom", old + index, dead_pid, small, index)
        count += 1
    for index in range(1500):
        stamp = datetime.datetime.fromtimestamp(old + index).strftime("%b%d_%H-%M-%S")
        _event_file(project / "runs" / f"{stamp}_benchhost-{index}", old + index, dead_pid, small)
        count += 1
    home = base / "home"
    run_id = "r-751"
    folder = home / ".gpubox" / "runs" / run_id
    folder.mkdir(parents=True)
    started = time.time() - 60
    group = os.getpgid(0)
    spec = {
        "shell": "python train.py",
        "cwd": str(project),
        "env": {"GPUBOX_TB_DIR": str(project / "logs" / run_id)},
        "name": None,
        "started_at": started,
    }
    (folder / "spec.json").write_text(json.dumps(spec))
    (folder / "pid").write_text(str(group))
    (folder / "log").write_bytes(b"Epoch 200/1000\n")
    mine = os.getpid()
    for where, tag in (
        (project / "logs" / run_id / "train", "epoch_loss"),
        (project / "logs" / run_id / "validation", "epoch_loss"),
        (project / "logs" / "custom", "loss"),
        (project / "runs" / "Now_benchhost", "Loss/train"),
    ):
        records = b"".join(
            _scalar(step, tag, 1.0 / (step + 1)) + _histogram(step, "weights") for step in range(POINTS)
        )
        _event_file(where, started + 1, mine, records, 9)
    return project, folder, count


def anchor(project: Path) -> int:
    """Walk the output folders and stat every file: the least a discovery by file time can do."""
    seen = 0
    for top in ("runs", "checkpoints", "logs", "outputs"):
        for folder, _dirs, files in os.walk(project / top):
            for name in files:
                os.stat(os.path.join(folder, name))
                seen += 1
    return seen


TENSORBOARD = """
import json, sys, time
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

first, steady = [], []
for _ in range(int(sys.argv[2])):
    multiplexer = EventMultiplexer()
    started = time.perf_counter()
    multiplexer.AddRunsFromDirectory(sys.argv[1])
    multiplexer.Reload()
    first.append(time.perf_counter() - started)
    started = time.perf_counter()
    multiplexer.AddRunsFromDirectory(sys.argv[1])
    multiplexer.Reload()
    steady.append(time.perf_counter() - started)
import tensorboard
print(json.dumps({"first": first, "steady": steady, "runs": [len(multiplexer.Runs())],
                  "version": tensorboard.__version__}))
"""


def tensorboard_anchor(python: str, project: Path, repeat: int) -> dict[str, Any]:
    """TensorBoard's EventMultiplexer on the project's folders, timed in *python* (which has TensorBoard)."""
    done = subprocess.run(
        [python, "-c", TENSORBOARD, str(project), str(repeat)],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument(
        "--tensorboard-python",
        metavar="PATH",
        help="a Python with TensorBoard installed: adds TensorBoard's EventMultiplexer as a second anchor",
    )
    parser.add_argument("--tensorboard-repeat", type=int, default=3, help="its passes (each takes seconds)")
    parser.add_argument("--write", action="store_true")
    options = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="gpubox-bench-metrics-") as tmp:
        base = Path(tmp)
        project, folder, old_files = build(base)
        os.environ["HOME"] = str(base / "home")
        from gpubox.remote.agent import host as agent

        run_id = folder.name

        def fresh_agent() -> None:
            agent._run_events.clear()
            agent._series_cache.clear()
            (folder / "scalars.json").unlink(missing_ok=True)

        def refresh(have: dict[str, int]) -> dict[str, object]:
            answer, _log = agent.op_dash({"gpu": False, "run": run_id, "scalars": have}, b"")
            return answer["run"]["scalars"]  # type: ignore[no-any-return]

        cold, warm, listing, walks = [], [], [], []
        series: dict[str, object] = {}
        for _ in range(options.repeat):
            fresh_agent()
            started = time.perf_counter()
            series = refresh({})
            cold.append(time.perf_counter() - started)
            have = {key: len(part["points"]) for key, part in series.items()}  # type: ignore[index]
            started = time.perf_counter()
            refresh(have)
            warm.append(time.perf_counter() - started)
            fresh_agent()
            started = time.perf_counter()
            (row,) = agent.op_run_list({"ids": [run_id]})["runs"]
            listing.append(time.perf_counter() - started)
            started = time.perf_counter()
            walked = anchor(project)
            walks.append(time.perf_counter() - started)
        metrics = sorted((row["progress"] or {}).get("metrics", {}))
        board = (
            tensorboard_anchor(options.tensorboard_python, project, options.tensorboard_repeat)
            if options.tensorboard_python
            else None
        )
    assert sorted(series) == [
        "Now_benchhost/Loss/train",
        "custom/loss",
        "train/epoch_loss",
        "validation/epoch_loss",
    ], sorted(series)
    assert metrics == ["Now_benchhost/Loss/train", "custom/loss", "loss", "val_loss"], metrics

    def ms(values: list[float]) -> float:
        return statistics.median(values) * 1000

    base_ms = ms(walks)
    command = f".venv/bin/python bench/metrics_discovery.py --repeat {options.repeat}"
    if options.tensorboard_python:
        command += f" --tensorboard-python {options.tensorboard_python}"
    lines = [
        SECTION,
        "",
        f"Machine: {machine()}. Date: {datetime.date.today()}. Median of {options.repeat} each. Load average "
        f"when it started: {load:.2f} (the cores are shared).",
        f"Command: `{command} --write`",
        "",
        f"Output folders with {old_files:,} event files of earlier runs ({walked:,} files in all); the run wrote",
        f"4 event files of {POINTS} scalar points and {POINTS} histograms each.",
        "",
        "| measure | agent | anchor: walk + stat every file | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| dashboard refresh, first (new agent: discovery + read 4 series) | {ms(cold):.1f} ms | {base_ms:.1f} ms "
        f"| {ms(cold) / base_ms:.2f}× |",
        f"| dashboard refresh, steady (nothing new) | {ms(warm):.1f} ms | {base_ms:.1f} ms "
        f"| {ms(warm) / base_ms:.2f}× |",
        f"| `gpubox runs` progress of the run (new agent) | {ms(listing):.1f} ms | {base_ms:.1f} ms "
        f"| {ms(listing) / base_ms:.2f}× |",
    ]
    if board is not None:
        first_ms, steady_ms = ms(board["first"]), ms(board["steady"])
        lines += [
            "",
            f"TensorBoard {board['version']}'s EventMultiplexer on the same folders ({int(board['runs'][0]):,} "
            f"runs; median of {options.tensorboard_repeat}): what its reload loop costs for the same refresh.",
            "",
            "| measure | agent | anchor: TensorBoard's EventMultiplexer | ratio |",
            "| --- | ---: | ---: | ---: |",
            f"| first load | {ms(cold):.1f} ms | {first_ms:.1f} ms | {ms(cold) / first_ms:.3f}× |",
            f"| reload, nothing new | {ms(warm):.1f} ms | {steady_ms:.1f} ms | {ms(warm) / steady_ms:.3f}× |",
        ]
    publish(SECTION, lines, options.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
