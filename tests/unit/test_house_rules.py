"""The rules of the house: light --help, no textual outside tui/, one exception tree, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gpubox import errors

HEAVY = (
    "paramiko",
    "textual",
    "watchdog",
    "tensorflow",
    "fabric",
    "invoke",
    "rich",
    "httpx",
    "optuna",
    "sqlalchemy",
)
CORE = (
    "gpubox.remote",
    "gpubox.remote.connection",
    "gpubox.remote.agent.client",
    "gpubox.remote.session",
    "gpubox.remote.providers.local",
    "gpubox.remote.ssh_config",
    "gpubox.sync",
    "gpubox.train",
    "gpubox.config",
    "gpubox.state",
    "gpubox.cost",
    "gpubox.actions.monitor",
    "gpubox.actions.supervisor",
    "gpubox.report",
    "gpubox.cli",
)


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {name.split(".")[0] for name in out.split()}


def test_core_modules_never_load_textual() -> None:
    loaded = _loaded_after("\n".join(f"import {module}" for module in CORE))
    assert "textual" not in loaded


@pytest.mark.parametrize(
    "argv", [["--help"], ["--version"], ["up", "--help"], ["ssh", "--help"], ["sweep", "--help"]]
)
def test_help_imports_nothing_heavy(argv: list[str]) -> None:
    code = f"import sys; sys.argv = ['gpubox', *{argv!r}]\nfrom gpubox.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass"
    loaded = _loaded_after(code)
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_one_shot_command_modules_load_no_ssh_and_no_watcher() -> None:
    """What a one-shot command riding `gpubox up`'s control socket loads: no paramiko (it never opens SSH), no
    watchdog, and for `run` and `sync` no sync engine (the holder's flush barrier stands for the scan). The real
    commands are checked end to end in tests/integration/test_control.py; this keeps the module graph honest."""
    code = (
        "import gpubox.cli.runs, gpubox.cli.sync, gpubox.cli.hosts, gpubox.actions.runs, gpubox.actions.env, "
        "gpubox.remote.control, gpubox.remote.session, gpubox.sync.report"
    )
    loaded = _loaded_after(code)
    assert not loaded & {"paramiko", "watchdog", "textual", "pathspec", "rich"}, loaded
    engine = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('gpubox.sync.engine' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert engine.stdout.strip() == "False"


def test_help_through_importtime_lists_no_heavy_module() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gpubox", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    imported = {
        line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line
    }
    assert not imported & set(HEAVY)


def test_version() -> None:
    result = subprocess.run([sys.executable, "-m", "gpubox", "--version"], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, "gpubox 0.1.0\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bogus"], "gpubox: unknown command 'bogus' (one of: init, hosts, status, "),
        (["stauts"], "gpubox: unknown command 'stauts'; did you mean `gpubox status`?"),
        (["up", "--frobnicate"], "gpubox: unrecognized arguments: --frobnicate"),
        (["hosts", "--", "x"], "gpubox: `--` starts a remote command, which this command does not take"),
        (["ssh"], "gpubox: the following arguments are required: HOST"),
        (["ssh", "nope", "--", "true"], 'gpubox: unknown host "nope" (configured: local)'),
        (["up", "nope"], 'gpubox: unknown host "nope" (configured: local)'),
        (
            ["ssh", "locl", "--", "true"],
            'gpubox: unknown host "locl"; did you mean "local"? (configured: local)',
        ),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(argv: list[str], message: str, tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpubox", *argv], capture_output=True, text=True, cwd=str(tmp_path)
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(message), result.stderr


def test_exception_tree_exit_codes() -> None:
    assert errors.ConfigError("f", 1, "k", "p").exit_code == 2
    assert errors.UsageError("x").exit_code == 2
    assert errors.HostUnreachable("x").exit_code == 3
    assert errors.HostKeyChanged("x", host="h", expected="a", received="b").exit_code == 3
    assert errors.HostKeyUnknown("x", host="h", key_type="t", fingerprint="f").exit_code == 3
    assert errors.AuthenticationFailed("x").exit_code == 3
    assert errors.RemoteError("x").exit_code == 1
    assert errors.AgentError("x").exit_code == 1
    assert errors.StateError("x").exit_code == 1
    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type):
            assert issubclass(value, errors.GpuboxError)


def test_only_tui_imports_textual_in_source() -> None:
    from pathlib import Path

    root = Path(errors.__file__).parent
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "tui" not in path.relative_to(root).parts
        and "textual" in path.read_text()
        and ("import textual" in path.read_text() or "from textual" in path.read_text())
    ]
    assert offenders == []


def _gpubox_imports(module: str) -> set[str]:
    """Every gpubox module *module*'s source imports, at the top, inside functions or for type checking."""
    import ast
    import importlib
    from pathlib import Path

    source = Path(str(importlib.import_module(module).__file__)).read_text()
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == "gpubox"}


def test_cost_imports_nothing_from_remote() -> None:
    """The ledger sits below the providers: callers hand it the live price (gpubox.remote.providers.host_price),
    so cost and the providers do not import each other."""
    assert sorted(name for name in _gpubox_imports("gpubox.cost") if name.startswith("gpubox.remote")) == []


def test_fmt_is_a_leaf() -> None:
    assert _gpubox_imports("gpubox.fmt") <= {"gpubox.errors"}


def test_the_clients_protocol_constants_are_the_agents() -> None:
    """framing.py repeats host.py's PROTOCOL and MAX_FRAME so that the client need not load the agent's file."""
    from gpubox.remote.agent import framing, host

    assert (framing.PROTOCOL, framing.MAX_FRAME) == (host.PROTOCOL, host.MAX_FRAME)
