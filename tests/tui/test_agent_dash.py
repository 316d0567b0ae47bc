"""The agent's ``dash`` op (one round trip per host per dashboard refresh), run in-process on real run folders and
real TFRecord event files, and under the oldest Python the agent supports."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import time
from pathlib import Path

import pytest

from gpubox.remote.agent import host as agent


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


def _event(step: int, tag: str, value: float) -> bytes:
    """One TFRecord holding Event{wall_time, step, summary{value{tag, simple_value}}} (CRCs left zero: the
    agent, like TensorBoard's own lenient reader, does not check them)."""
    tag_bytes = tag.encode()
    summary_value = _field(1, 2, _varint(len(tag_bytes)) + tag_bytes) + _field(2, 5, struct.pack("<f", value))
    summary = _field(1, 2, _varint(len(summary_value)) + summary_value)
    event = (
        _field(1, 1, struct.pack("<d", 1_795_000_000.0 + step))
        + _field(2, 0, _varint(step))
        + _field(5, 2, _varint(len(summary)) + summary)
    )
    return struct.pack("<Q", len(event)) + b"\0" * 4 + event + b"\0" * 4


def _run(home: Path, number: int, *, finished: bool, log: bytes = b"", tb_dir: Path | None = None) -> Path:
    folder = home / ".gpubox" / "runs" / f"r-{number}"
    folder.mkdir(parents=True)
    env = {"GPUBOX_TB_DIR": str(tb_dir)} if tb_dir else {}
    spec = {
        "shell": f"python train.py --seed {number}",
        "cwd": str(home),
        "env": env,
        "started_at": time.time(),
    }
    if not finished:
        spec["waiter"] = os.getpid()  # a live process: the run counts as running
    (folder / "spec.json").write_text(json.dumps(spec))
    (folder / "log").write_bytes(log)
    (folder / "pid").write_text(str(os.getpid()))
    if finished:
        (folder / "ended_at").write_text(repr(time.time()))
        (folder / "exit_code").write_text("0")
    return folder


def _dash(args: dict[str, object]) -> tuple[dict[str, object], bytes]:
    message, blob = agent.handle({"id": 1, "op": "dash", "args": args})
    assert message["ok"], message
    return message["result"], blob  # type: ignore[return-value]


def test_runs_are_the_active_ones_and_the_latest_finished(isolated_home: Path) -> None:
    for number in range(1, 16):
        _run(isolated_home, number, finished=number not in (2, 9))
    result, blob = _dash({"gpu": False, "recent": 3})
    ids = [row["id"] for row in result["runs"]]  # type: ignore[index]
    assert ids == ["r-2", "r-9", "r-13", "r-14", "r-15"]
    assert result["nvidia_smi"] is None and result["run"] is None and blob == b""


def test_finished_runs_of_other_projects_are_left_out_running_ones_are_not(isolated_home: Path) -> None:
    mine, theirs = isolated_home / "mine", isolated_home / "theirs"
    for number in range(1, 9):
        folder = _run(isolated_home, number, finished=number != 5)
        spec = json.loads((folder / "spec.json").read_text())
        spec["cwd"] = str(mine if number in (2, 3) else theirs)
        (folder / "spec.json").write_text(json.dumps(spec))
    result, _ = _dash({"gpu": False, "recent": 10, "project": str(mine)})
    rows = result["runs"]
    assert [row["id"] for row in rows] == ["r-2", "r-3", "r-5"]  # type: ignore[index]
    assert [row["mine"] for row in rows] == [True, True, False]  # type: ignore[index]


def test_a_lost_run_counts_as_ended(isolated_home: Path) -> None:
    folder = _run(isolated_home, 1, finished=False)
    spec = json.loads((folder / "spec.json").read_text())
    spec["waiter"] = 2**22 + 12345  # no such process: the run is lost
    (folder / "spec.json").write_text(json.dumps(spec))
    (folder / "pid").write_text(str(2**22 + 12346))
    result, _ = _dash({"gpu": False, "recent": 0})
    assert result["runs"] == []
    result, _ = _dash({"gpu": False, "recent": 1})
    assert [row["state"] for row in result["runs"]] == ["lost"]  # type: ignore[index]


def test_the_selected_run_sends_its_log_tail_then_only_what_is_new(isolated_home: Path) -> None:
    lines = b"".join(b"line %d\n" % i for i in range(20000))
    folder = _run(isolated_home, 1, finished=False, log=lines)
    first, blob = _dash({"gpu": False, "run": "r-1", "log_offset": None, "log_tail": 1000})
    run = first["run"]
    assert run["size"] == len(lines)  # type: ignore[index]
    assert 0 < len(blob) <= 1000 and blob.startswith(b"line ") and blob.endswith(b"\n")
    assert lines[run["offset"] - 1 : run["offset"]] == b"\n"  # type: ignore[index]  # the tail starts at a line
    with open(folder / "log", "ab") as log:
        log.write(b"Epoch 2/8\n")
    second, blob = _dash({"gpu": False, "run": "r-1", "log_offset": len(lines)})
    assert second["run"]["offset"] == len(lines) and blob == b"Epoch 2/8\n"  # type: ignore[index]


def test_scalars_come_once_each_and_grow_as_training_writes(isolated_home: Path, tmp_path: Path) -> None:
    tb = tmp_path / "logs" / "r-1"
    (tb / "train").mkdir(parents=True)
    (tb / "validation").mkdir(parents=True)
    train = tb / "train" / "events.out.tfevents.1.host"
    validation = tb / "validation" / "events.out.tfevents.1.host"
    train.write_bytes(_event(0, "epoch_loss", 2.0) + _event(1, "epoch_loss", 1.0))
    validation.write_bytes(_event(0, "epoch_loss", 2.5))
    _run(isolated_home, 1, finished=False, tb_dir=tb)
    result, _ = _dash({"gpu": False, "run": "r-1", "scalars": {}})
    scalars = result["run"]["scalars"]  # type: ignore[index]
    assert scalars["train/epoch_loss"] == {"from": 0, "points": [[0, 2.0], [1, 1.0]]}
    assert scalars["validation/epoch_loss"] == {"from": 0, "points": [[0, 2.5]]}
    # A record half written is not read yet; once whole, only the new point travels.
    record = _event(2, "epoch_loss", 0.5)
    with open(train, "ab") as handle:
        handle.write(record[:10])
    result, _ = _dash(
        {"gpu": False, "run": "r-1", "scalars": {"train/epoch_loss": 2, "validation/epoch_loss": 1}}
    )
    assert result["run"]["scalars"]["train/epoch_loss"] == {"from": 2, "points": []}  # type: ignore[index]
    with open(train, "ab") as handle:
        handle.write(record[10:])
    result, _ = _dash(
        {"gpu": False, "run": "r-1", "scalars": {"train/epoch_loss": 2, "validation/epoch_loss": 1}}
    )
    assert result["run"]["scalars"]["train/epoch_loss"] == {"from": 2, "points": [[2, 0.5]]}  # type: ignore[index]
    # A client that claims more than there is gets the series again from the start.
    result, _ = _dash({"gpu": False, "run": "r-1", "scalars": {"validation/epoch_loss": 7}})
    assert result["run"]["scalars"]["validation/epoch_loss"] == {"from": 0, "points": [[0, 2.5]]}  # type: ignore[index]


def test_a_run_that_is_not_there_is_no_error(isolated_home: Path) -> None:
    result, blob = _dash({"gpu": False, "run": "r-77"})
    assert result["run"] is None and blob == b""


def test_bad_arguments_are_refused(isolated_home: Path) -> None:
    message, _ = agent.handle({"id": 1, "op": "dash", "args": {"recent": -1}})
    assert not message["ok"] and message["error"]["kind"] == "bad-request"


PYTHON_38 = Path("/root/.pyenv/versions/3.8.18/bin/python3")


@pytest.mark.skipif(
    not os.access(PYTHON_38, os.X_OK), reason="no Python 3.8 here (pyenv) to run the agent with"
)
def test_the_op_runs_on_python_3_8(isolated_home: Path, tmp_path: Path) -> None:
    tb = tmp_path / "tb"
    (tb / "train").mkdir(parents=True)
    (tb / "train" / "events.out.tfevents.1.h").write_bytes(_event(0, "epoch_loss", 2.0))
    _run(isolated_home, 1, finished=False, log=b"Epoch 1/3\nloss: 2.0000\n", tb_dir=tb)
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import host as agent; "
        "m, b = agent.handle({'id': 1, 'op': 'dash', 'args': {'gpu': False, 'run': 'r-1'}}); "
        "print(json.dumps([m, b.decode()]))"
    )
    done = subprocess.run(
        [str(PYTHON_38), "-c", code, str(Path(agent.__file__).parent)],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(isolated_home)},
        check=True,
    )
    message, log = json.loads(done.stdout)
    assert message["ok"] and log == "Epoch 1/3\nloss: 2.0000\n"
    assert message["result"]["run"]["scalars"]["train/epoch_loss"]["points"] == [[0, 2.0]]
    assert message["result"]["runs"][0]["progress"]["epoch"] == 1
