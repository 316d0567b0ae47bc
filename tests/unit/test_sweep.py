"""Sweeps without a host: [sweep] in gpubox.toml, the command template, the metric read from logs and
TensorBoard series, the Optuna glue (samplers, the grid, the document)."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from gpubox.config import load_project
from gpubox.config.sweep import Choices, NumberRange, render_command
from gpubox.errors import ConfigError
from gpubox.train.sweep import study as glue
from gpubox.train.sweep.metrics import MetricReader, series_names

EXAMPLE = Path(__file__).resolve().parents[2] / "gpubox" / "data" / "gpubox.example.toml"

GOOD = """
[sweep]
command = "python train.py --lr {lr} --units {units} --epochs 8"
metric = "val_accuracy"
direction = "maximize"
sampler = "tpe"
seed = 3
trials = 24
per_gpu = 2
prune = true
max_cost_usd = 20

[sweep.params]
lr = { low = 1e-4, high = 1e-1, log = true }
units = [32, 64, 128]
dropout = { low = 0.0, high = 0.5, step = 0.1 }
layers = { low = 1, high = 4 }
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # messages name gpubox.toml, not its whole path


def _load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    (tmp_path / "gpubox.toml").write_text(text)
    return load_project(tmp_path)


def test_the_issues_sweep_table_reads(tmp_path: Path) -> None:
    sweep = _load(tmp_path, GOOD).sweep
    assert sweep is not None
    assert (sweep.metric, sweep.direction, sweep.sampler, sweep.seed, sweep.trials, sweep.per_gpu) == (
        "val_accuracy",
        "maximize",
        "tpe",
        3,
        24,
        2,
    )
    assert sweep.prune is not None and (sweep.prune.startup_trials, sweep.prune.warmup_epochs) == (5, 0)
    assert sweep.max_cost_usd == 20
    assert sweep.params["lr"] == NumberRange(1e-4, 1e-1, log=True)
    assert sweep.params["units"] == Choices((32, 64, 128))
    assert sweep.params["dropout"] == NumberRange(0.0, 0.5, step=0.1)
    assert sweep.params["layers"] == NumberRange(1, 4, integer=True)
    assert sweep.placeholders == {"lr", "units"}
    assert sweep.planned() == 24 and sweep.planned(5) == 5


def test_the_example_documents_every_sweep_key_and_reads_when_uncommented(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    block = text[text.index("# [sweep]") :]
    uncommented = re.sub(r"^# ?", "", block, flags=re.MULTILINE)
    sweep = _load(tmp_path, uncommented).sweep
    assert sweep is not None and sweep.sampler == "tpe" and set(sweep.params) == {"lr", "units", "dropout"}
    from gpubox.config.sweep import FIELDS

    assert set(FIELDS) <= set(re.findall(r"^# ([a-z_]+) = ", block, flags=re.MULTILINE)) | {"params"}
    assert _load(tmp_path, text).sweep is None  # commented out in what `gpubox init` writes


def test_a_grid_enumerates_its_points_with_clean_decimals(tmp_path: Path) -> None:
    sweep = _load(
        tmp_path,
        GOOD.replace('sampler = "tpe"', 'sampler = "grid"').replace(
            "lr = { low = 1e-4, high = 1e-1, log = true }", "lr = [0.001, 0.01]"
        ),
    ).sweep
    assert sweep is not None
    assert sweep.params["dropout"].grid() == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
    assert sweep.params["layers"].grid() == (1, 2, 3, 4)
    assert sweep.grid_size() == 2 * 3 * 6 * 4
    assert sweep.planned() == 24  # trials = 24 caps the grid's 144 points
    assert len(sweep.grid_points()) == 144


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sweep]\nmetric = 'x'\n", 'gpubox.toml:1: sweep: [sweep] needs "command"'),
        (
            GOOD.replace('direction = "maximize"', 'direction = "up"'),
            'gpubox.toml:5: sweep.direction: expected "maximize" or "minimize", got "up"',
        ),
        (
            GOOD.replace('sampler = "tpe"', 'sampler = "cmaes"'),
            'gpubox.toml:6: sweep.sampler: expected one of "grid", "random", "tpe", got "cmaes"',
        ),
        (
            GOOD.replace("trials = 24\n", ""),
            'gpubox.toml:2: sweep: a tpe sweep needs "trials" (how many trials to run in all)',
        ),
        (
            GOOD.replace("{units}", "{unit}"),
            "gpubox.toml:3: sweep.command: {unit} is not a parameter: [sweep.params] has dropout, layers, lr, units",
        ),
        (
            GOOD.replace("{units}", "{units:03d}"),
            "gpubox.toml:3: sweep.command: {units} is not a parameter placeholder: write {name} for a parameter "
            "in [sweep.params], {{ and }} for literal braces",
        ),
        (
            GOOD.replace('sampler = "tpe"', 'sampler = "grid"'),
            'gpubox.toml:14: sweep.params.lr: a grid needs every value: give this float range a "step", or list '
            "the choices",
        ),
        (
            GOOD.replace("low = 1e-4, high = 1e-1", "low = 0, high = 1e-1"),
            "gpubox.toml:14: sweep.params.lr.low: a log range needs low > 0",
        ),
        (
            GOOD.replace("units = [32, 64, 128]", "units = []"),
            "gpubox.toml:15: sweep.params.units: expected at least one value to choose from",
        ),
        (
            GOOD.replace("units = [32, 64, 128]", "units = [32, 32]"),
            "gpubox.toml:15: sweep.params.units: a choice is listed twice",
        ),
        (
            GOOD.replace("layers = { low = 1, high = 4 }", "layers = { low = 4, high = 1 }"),
            "gpubox.toml:17: sweep.params.layers: low (4) must be below high (1)",
        ),
        (
            GOOD.replace("layers = { low = 1, high = 4 }", "layers = { low = 1, hi = 4 }"),
            'gpubox.toml:17: sweep.params.layers.hi: unknown key; did you mean "high"?',
        ),
        (
            GOOD.replace("layers = { low = 1, high = 4 }", "layers = 3"),
            "gpubox.toml:17: sweep.params.layers: expected a list of choices ([32, 64]) or a range "
            "({ low = 1e-4, high = 0.1, log = true }), got 3",
        ),
        (
            GOOD.replace("layers = { low = 1, high = 4 }", "2layers = [1, 2]"),
            "gpubox.toml:17: sweep.params.2layers: a parameter name is letters, digits and _, not starting with a digit",
        ),
        (
            GOOD.replace("prune = true", "prune = 3"),
            "gpubox.toml:10: sweep.prune: expected true, false or a table { startup_trials = 5, warmup_epochs = 0 }, got 3",
        ),
        (
            GOOD.replace("per_gpu = 2", "per_gpu = 0"),
            "gpubox.toml:9: sweep.per_gpu: expected an integer 1-64, got 0",
        ),
        (
            GOOD.replace("trials = 24", "trails = 24"),
            'gpubox.toml:8: sweep.trails: unknown key; did you mean "trials"?',
        ),
        (
            GOOD.replace('metric = "val_accuracy"', 'metric = "val accuracy"'),
            'gpubox.toml:4: sweep.metric: expected the name of a scalar the run reports, such as "val_accuracy" '
            '(letters, digits, _ . / -), got "val accuracy"',
        ),
        (
            "[sweep]\ncommand = 'x'\nmetric = 'm'\ndirection = 'minimize'\nsampler = 'grid'\n[sweep.params]\n"
            "x = { low = 0.0, high = 1.0, step = 1e-6 }\n",
            "gpubox.toml:6: sweep.params: the grid has 1,000,001 points; at most 100,000",
        ),
    ],
)
def test_a_bad_sweep_table_is_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    assert str(caught.value) == message


def test_the_command_takes_each_value_shell_quoted_where_it_is_a_string(tmp_path: Path) -> None:
    sweep = _load(
        tmp_path,
        '[sweep]\ncommand = "python t.py --opt {opt} --lr {lr} --n {n} --flag {flag} {{literal}}"\n'
        "metric = 'm'\ndirection = 'minimize'\nsampler = 'grid'\n[sweep.params]\n"
        "opt = ['adam w', \"it's\"]\nlr = [0.30000000000000004]\nn = [3]\nflag = [true]\n",
    ).sweep
    assert sweep is not None
    line = render_command(sweep, {"opt": "it's", "lr": 0.30000000000000004, "n": 3, "flag": True})
    assert line == "python t.py --opt 'it'\"'\"'s' --lr 0.3 --n 3 --flag true {literal}"
    argv = _load(
        tmp_path,
        "[sweep]\ncommand = ['python', 't.py', '--opt={opt}']\nmetric = 'm'\ndirection = 'minimize'\n"
        "sampler = 'grid'\n[sweep.params]\nopt = ['adam w']\n",
    ).sweep
    assert argv is not None and render_command(argv, {"opt": "adam w"}) == "python t.py '--opt=adam w'"


# ----------------------------------------------------------------------------------------------- metrics


def test_keras_progress_lines_give_one_value_per_epoch() -> None:
    reader = MetricReader("val_accuracy")
    log = (
        b"Epoch 1/3\n"
        b"23/23 - 2s - 87ms/step - accuracy: 0.4739 - loss: 1.8468 - val_accuracy: 0.8056 - val_loss: 0.6\n"
        b"Epoch 2/3\n"
        b"\r 1/23 [>....] - accuracy: 0.5\r23/23 [=====] - accuracy: 0.9 - val_accuracy: 0.9111"
    )
    reader.feed_log(log[:50])
    reader.feed_log(log[50:])
    assert reader.values() == {0: 0.8056}  # the second epoch's line is not complete yet
    reader.feed_log(b"\nEpoch 3/3\n23/23 - val_accuracy: 0.95 - val_loss: 0.2\n")
    assert reader.values() == {0: 0.8056, 1: 0.9111, 2: 0.95}
    assert reader.final() == 0.95
    assert reader.last_line == "23/23 - val_accuracy: 0.95 - val_loss: 0.2"
    assert reader.log_offset == len(log) + len(b"\nEpoch 3/3\n23/23 - val_accuracy: 0.95 - val_loss: 0.2\n")


def test_plain_name_value_lines_are_steps_in_order_and_a_longer_name_never_matches() -> None:
    reader = MetricReader("accuracy")
    reader.feed_log(
        b"val_accuracy: 0.1\naccuracy: 0.5\naccuracy=0.6 top_accuracy: 0.9\nmy.accuracy: 7\naccuracy: 7e-1"
    )
    assert reader.values() == {0: 0.5, 1: 0.6}
    reader.feed_log(b"", final=True)  # the run ended: its last line counts without a newline
    assert reader.values() == {0: 0.5, 1: 0.6, 2: 0.7}


def test_tensorboard_series_answer_to_keras_names_and_win_over_the_log() -> None:
    assert series_names("validation/epoch_accuracy") >= {"val_accuracy", "epoch_accuracy"}
    assert series_names("train/epoch_loss") >= {"loss", "epoch_loss", "train/epoch_loss"}
    assert "val_error_rate" in series_names("custom/val_error_rate")
    reader = MetricReader("val_accuracy")
    reader.feed_log(b"val_accuracy: 0.5\nval_accuracy: 0.6\n")
    reader.feed_scalars({"validation/epoch_accuracy": {"from": 0, "points": [[0, 0.51], [1, 0.61]]}})
    reader.feed_scalars({"train/epoch_accuracy": {"from": 0, "points": [[0, 0.9]]}})
    assert reader.scalar_counts == {"validation/epoch_accuracy": 2, "train/epoch_accuracy": 1}
    reader.feed_scalars({"validation/epoch_accuracy": {"from": 2, "points": [[2, 0.7]]}})
    assert reader.values() == {0: 0.51, 1: 0.61, 2: 0.7}
    assert reader.final() == 0.7
    assert reader.scalar_counts["validation/epoch_accuracy"] == 3


# ------------------------------------------------------------------------------------------- Optuna glue


def test_a_grid_study_asks_every_point_once_and_can_be_told_past_its_end(tmp_path: Path) -> None:
    sweep = _load(
        tmp_path,
        "[sweep]\ncommand = 'x {a} {b}'\nmetric = 'm'\ndirection = 'minimize'\nsampler = 'grid'\n"
        "[sweep.params]\na = [1, 2]\nb = { low = 0.0, high = 0.2, step = 0.1 }\n",
    ).sweep
    assert sweep is not None
    storage = glue.open_storage(f"sqlite:///{tmp_path / 'studies.db'}")
    study, made = glue.create_or_load(storage, "g", sweep, str(tmp_path))
    assert made
    seen = []
    for _ in range(sweep.planned()):
        trial = study.ask(glue.distributions(sweep))
        seen.append((trial.params["a"], trial.params["b"]))
        study.tell(trial, trial.params["a"] + trial.params["b"])  # Optuna's own grid sampler would raise here
    assert sorted(seen) == sorted((a, b) for a in (1, 2) for b in (0.0, 0.1, 0.2))
    again, made = glue.create_or_load(storage, "g", sweep, str(tmp_path))
    assert not made and len(again.trials) == 6
    document = glue.sweep_document(
        again, scheduler_alive=None, storage_url=f"sqlite:///{tmp_path / 'studies.db'}"
    )
    assert document["best"]["params"] == {"a": 1, "b": 0.0}
    assert document["state"] == "interrupted"  # no scheduler said it finished
    assert [t["number"] for t in document["trials"]] == list(range(6))


def test_a_sweep_of_the_same_name_that_measures_something_else_is_refused(tmp_path: Path) -> None:
    sweep = _load(tmp_path, GOOD).sweep
    assert sweep is not None
    storage = glue.open_storage(f"sqlite:///{tmp_path / 'studies.db'}")
    glue.create_or_load(storage, "s", sweep, str(tmp_path))
    other = _load(tmp_path, GOOD.replace('direction = "maximize"', 'direction = "minimize"')).sweep
    assert other is not None
    with pytest.raises(Exception, match="sweep s already exists and measures maximize val_accuracy"):
        glue.create_or_load(storage, "s", other, str(tmp_path))


def test_lost_and_stopped_trials_link_to_the_trial_that_asked_them_again() -> None:
    study = optuna.create_study()
    first = study.ask({"x": optuna.distributions.CategoricalDistribution([1, 2])})
    first.set_user_attr("stopped", True)
    study.tell(first, state=TrialState.FAIL)
    study.enqueue_trial(first.params, user_attrs={"retry_of": first.number})
    second = study.ask({"x": optuna.distributions.CategoricalDistribution([1, 2])})
    study.tell(second, 1.0)
    views = glue.trial_views(study.get_trials())
    assert (views[0].replaced_by, views[0].counts, views[1].counts) == (1, False, True)
    assert views[1].params == views[0].params


def test_storage_urls_are_checked_and_never_shown_with_a_password() -> None:
    from gpubox.errors import UsageError

    assert glue.redact_url("postgresql://me:s3cret@db/sweeps") == "postgresql://me:***@db/sweeps"
    assert glue.without_password("postgresql://me:s3cret@db/sweeps") == "postgresql://me@db/sweeps"
    assert glue.check_storage_url("mysql://me@db/sweeps") == "mysql://me@db/sweeps"
    for bad, why in (
        ("nonsense", "is not a database URL"),
        ("redis://localhost/0", "'redis' is not a database gpubox sweeps use"),
        ("sqlite://", "a SQLite URL names its file"),
    ):
        with pytest.raises(UsageError, match=re.escape(why)):
            glue.check_storage_url(bad)
