"""hosts.toml and gpubox.toml: every bad file gives one exact, line-numbered message; good files parse."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gpubox.config import (
    BUILTIN_LOCAL,
    DEFAULT_OUTPUTS,
    HostsConfig,
    ProjectConfig,
    ServiceConfig,
    find_project_root,
    load_hosts,
    load_project,
)
from gpubox.config.hosts import DEFAULTS_FIELDS, HOST_FIELDS, PROVIDER_TABLE_FIELDS
from gpubox.config.project import ENV_FIELDS, RUN_FIELDS, SERVICE_FIELDS, SYNC_FIELDS
from gpubox.errors import EXIT_BAD_INPUT, ConfigError, UsageError

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "gpubox" / "data"
HOSTS_EXAMPLE = REPO / "hosts.example.toml"
PROJECT_EXAMPLE = DATA / "gpubox.example.toml"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder, also the working directory (so messages name ``hosts.toml``, not a path)."""
    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def _hosts(folder: Path, text: str | bytes) -> HostsConfig:
    _write(folder / "hosts.toml", text)
    return load_hosts(folder)


def _project(folder: Path, text: str | bytes) -> ProjectConfig:
    _write(folder / "gpubox.toml", text)
    return load_project(folder)


# ------------------------------------------------------------------------------------------ bad hosts.toml

NAME_RULE = 'use letters, digits, ".", "_" and "-", starting with a letter or digit (at most 63 characters)'
LOCAL_ONLY = 'not used by provider "local" (gpubox runs that host itself)'
HOSTS_SECTIONS = "(hosts.toml has [defaults], [hosts.NAME] and [providers.NAME])"

BAD_HOSTS = [
    pytest.param(
        '# GPU boxes\n[hosts.a100]\nhostname = "a100.example.org"\nport = "22a"\n',
        'hosts.toml:4: hosts.a100.port: expected an integer 1-65535, got "22a"',
        id="port-not-an-integer",
    ),
    pytest.param(
        "[hosts.a100]\nport = 0\n",
        "hosts.toml:2: hosts.a100.port: expected an integer 1-65535, got 0",
        id="port-zero",
    ),
    pytest.param(
        "[hosts.a100]\nport = 70000\n",
        "hosts.toml:2: hosts.a100.port: expected an integer 1-65535, got 70000",
        id="port-too-big",
    ),
    pytest.param(
        "[hosts.a100]\nport = 22.0\n",
        "hosts.toml:2: hosts.a100.port: expected an integer 1-65535, got 22.0",
        id="port-float",
    ),
    pytest.param(
        "[hosts.a100]\nport = true\n",
        "hosts.toml:2: hosts.a100.port: expected an integer 1-65535, got true",
        id="port-bool",
    ),
    pytest.param(
        '[hosts.a100]\nhostnme = "gpu.example.org"\n',
        'hosts.toml:2: hosts.a100.hostnme: unknown key; did you mean "hostname"?',
        id="unknown-key-typo",
    ),
    pytest.param(
        '[hosts.a100]\nflavour = "large"\n',
        "hosts.toml:2: hosts.a100.flavour: unknown key",
        id="unknown-key-no-match",
    ),
    pytest.param(
        '[hosts.a100]\nIdentityFile = "~/.ssh/id"\n',
        'hosts.toml:2: hosts.a100.IdentityFile: unknown key; did you mean "identity_file"?',
        id="unknown-key-ssh-config-spelling",
    ),
    pytest.param(
        '[hosts.a100]\nbastion = "me@jump"\n',
        'hosts.toml:2: hosts.a100.bastion: unknown key; did you mean "proxy_jump"?',
        id="unknown-key-synonym",
    ),
    pytest.param(
        "# servers\n\n[servers.a100]\nport = 22\n",
        'hosts.toml:3: servers: unknown table; did you mean "hosts"?',
        id="unknown-top-level-table",
    ),
    pytest.param(
        "[host.a100]\nport = 22\n",
        'hosts.toml:1: host: unknown table; did you mean "hosts"?',
        id="top-level-table-typo",
    ),
    pytest.param(
        "port = 22\n\n[hosts.a100]\n",
        f"hosts.toml:1: port: unknown key {HOSTS_SECTIONS}",
        id="top-level-key",
    ),
    pytest.param(
        '[hosts.a100]\nprovider = "aws"\n',
        'hosts.toml:2: hosts.a100.provider: expected one of "ssh", "local", "lambda", "vast", "runpod", got "aws"',
        id="bad-provider",
    ),
    pytest.param(
        '[hosts.mine]\nprovider = "local"\nhostname = "gpu.example.org"\n',
        f"hosts.toml:3: hosts.mine.hostname: {LOCAL_ONLY}",
        id="local-provider-hostname",
    ),
    pytest.param(
        '[hosts.local]\nremote_dir = "~/x"\nport = 2222\n',
        f"hosts.toml:3: hosts.local.port: {LOCAL_ONLY}",
        id="builtin-local-port",
    ),
    pytest.param(
        '[hosts."my box"]\nport = 22\n',
        f'hosts.toml:1: hosts."my box": invalid host name: {NAME_RULE}',
        id="host-name-with-space",
    ),
    pytest.param(
        '[hosts."-box"]\n',
        f"hosts.toml:1: hosts.-box: invalid host name: {NAME_RULE}",
        id="host-name-leading-dash",
    ),
    pytest.param(
        f"[hosts.{'a' * 64}]\n",
        f"hosts.toml:1: hosts.{'a' * 64}: invalid host name: {NAME_RULE}",
        id="host-name-too-long",
    ),
    pytest.param(
        '[defaults]\nhost = "a10"\n\n[hosts.a100]\n',
        'hosts.toml:2: defaults.host: no host named "a10"; did you mean "a100"?',
        id="default-host-typo",
    ),
    pytest.param(
        '[defaults]\nhost = "zebra"\n\n[hosts.a100]\n[hosts.h100]\n',
        'hosts.toml:2: defaults.host: no host named "zebra" (configured: a100, h100, local)',
        id="default-host-unknown",
    ),
    pytest.param(
        '[defaults]\nprovider = "ssh"\n',
        "hosts.toml:2: defaults.provider: only allowed in [hosts.NAME] tables, not in [defaults]",
        id="defaults-provider",
    ),
    pytest.param(
        '[defaults]\nuser = "me"\nhostname = "gpu"\n',
        "hosts.toml:3: defaults.hostname: only allowed in [hosts.NAME] tables, not in [defaults]",
        id="defaults-hostname",
    ),
    pytest.param(
        '[hosts.a100]\n\n[defaults]\nport = "x"\n',
        'hosts.toml:4: defaults.port: expected an integer 1-65535, got "x"',
        id="defaults-after-hosts",
    ),
    pytest.param(
        "[hosts.a100]\nprice_per_hour = -1.5\n",
        "hosts.toml:2: hosts.a100.price_per_hour: expected a number >= 0, got -1.5",
        id="negative-price",
    ),
    pytest.param(
        "[hosts.a100]\nconnect_timeout = 0\n",
        "hosts.toml:2: hosts.a100.connect_timeout: expected a number > 0, got 0",
        id="connect-timeout-zero",
    ),
    pytest.param(
        "[hosts.a100]\nconnect_timeout = nan\n",
        "hosts.toml:2: hosts.a100.connect_timeout: expected a number > 0, got nan",
        id="connect-timeout-nan",
    ),
    pytest.param(
        "[hosts.a100]\nkeepalive_seconds = 3601\n",
        "hosts.toml:2: hosts.a100.keepalive_seconds: expected an integer 0-3600, got 3601",
        id="keepalive-too-big",
    ),
    pytest.param(
        '[hosts.a100]\naccept_new = "true"\n',
        'hosts.toml:2: hosts.a100.accept_new: expected true or false, got "true"',
        id="bool-as-string",
    ),
    pytest.param(
        '[hosts.a100]\nproxy_jump = "me@bastion other"\n',
        'hosts.toml:2: hosts.a100.proxy_jump: expected "[user@]host[:port]" (several separated by commas), '
        'got "me@bastion other"',
        id="proxy-jump-with-space",
    ),
    pytest.param(
        '[hosts.a100]\nidentity_file = ""\n',
        'hosts.toml:2: hosts.a100.identity_file: expected a non-empty string, got ""',
        id="identity-file-empty",
    ),
    pytest.param(
        '[hosts.a100]\nuser = "ubuntu admin"\n',
        'hosts.toml:2: hosts.a100.user: expected a user name (a string without spaces), got "ubuntu admin"',
        id="user-with-space",
    ),
    pytest.param(
        '[hosts.a100]\npython = "python 3"\n',
        "hosts.toml:2: hosts.a100.python: expected a python executable (a string without spaces), "
        'got "python 3"',
        id="python-with-space",
    ),
    pytest.param(
        '[hosts.a100]\nhostname = ["a", "b"]\n',
        "hosts.toml:2: hosts.a100.hostname: expected a host name, an address or an ~/.ssh/config alias "
        '(a string without spaces), got ["a", "b"]',
        id="hostname-list",
    ),
    pytest.param(
        f'[hosts.a100]\nuser = "{"x " * 40}"\n',
        "hosts.toml:2: hosts.a100.user: expected a user name (a string without spaces), "
        f'got "{"x " * 27}x..."',
        id="long-value-shortened",
    ),
    pytest.param(
        "hosts.a = 3\n",
        "hosts.toml:1: hosts.a: expected a table, got 3",
        id="host-not-a-table",
    ),
    pytest.param(
        'hosts = "a100"\n',
        'hosts.toml:1: hosts: expected a table, got "a100"',
        id="hosts-not-a-table",
    ),
    pytest.param(
        "[[hosts.a100]]\nport = 22\n",
        "hosts.toml:1: hosts.a100: expected a table, got an array of tables",
        id="array-of-tables",
    ),
    pytest.param(
        "[hosts.a100.ssh]\nport = 22\n",
        "hosts.toml:1: hosts.a100.ssh: unknown table",
        id="nested-table",
    ),
    pytest.param(
        '[hosts.a100]\nport = 22\nuser = "ubuntu\n',
        "hosts.toml:3: invalid TOML: string not closed before the end of the line "
        "(use triple quotes for several lines)",
        id="toml-unclosed-string",
    ),
    pytest.param(
        "[hosts.a100]\n\nport =\n",
        "hosts.toml:3: invalid TOML: invalid value (column 7)",
        id="toml-missing-value",
    ),
    pytest.param(
        "[hosts.a100\nport = 22\n",
        "hosts.toml:1: invalid TOML: expected ']' at the end of a table declaration (column 12)",
        id="toml-unclosed-header",
    ),
    pytest.param(
        "[hosts.a100]\nport = 22\nuser = 'x'\nport = 23\n",
        "hosts.toml:4: invalid TOML: hosts.a100.port is set twice",
        id="toml-duplicate-key",
    ),
    pytest.param(
        '[hosts.a100]\nport = 22\n\n[hosts.a100]\nuser = "x"\n',
        "hosts.toml:4: invalid TOML: table [hosts.a100] is declared twice",
        id="toml-duplicate-table",
    ),
    pytest.param(
        "[hosts]\na100 = { port = 22, port = 23 }\n",
        'hosts.toml:2: invalid TOML: "port" is set twice in an inline table',
        id="toml-duplicate-inline-key",
    ),
    pytest.param(
        '[hosts.a100]\nuser = "a\x01b"\n',
        "hosts.toml:2: invalid TOML: control character U+0001 is not allowed here (column 10)",
        id="toml-control-character",
    ),
    pytest.param(
        b'[hosts.a100]\nuser = "caf\xe9"\n',
        "hosts.toml:2: is not UTF-8 text (byte 0xe9 in column 12); save it as UTF-8",
        id="not-utf8",
    ),
    pytest.param(
        "\ufeff[hosts.a100]\nport = 22\n",
        "hosts.toml:1: invalid TOML: the file starts with a byte order mark (BOM); save it as UTF-8 without one",
        id="byte-order-mark",
    ),
    pytest.param(
        '# dotted keys\nhosts.a.user = "u"\nhosts.a.port = "x"\n',
        'hosts.toml:3: hosts.a.port: expected an integer 1-65535, got "x"',
        id="dotted-keys",
    ),
    pytest.param(
        '[hosts]\nb = { user = "u" }\na = { user = "u", port = "x" }\n',
        'hosts.toml:3: hosts.a.port: expected an integer 1-65535, got "x"',
        id="inline-table-value",
    ),
    pytest.param(
        '[hosts]\na = { user = "u", prot = 22 }\n',
        'hosts.toml:2: hosts.a.prot: unknown key; did you mean "port"?',
        id="inline-table-unknown-key",
    ),
    pytest.param(
        '\nhosts = { a = { port = "x" } }\n',
        'hosts.toml:2: hosts.a.port: expected an integer 1-65535, got "x"',
        id="nested-inline-tables",
    ),
    pytest.param(
        '[hosts."gpu.box"]\nport = -1\n',
        'hosts.toml:2: hosts."gpu.box".port: expected an integer 1-65535, got -1',
        id="quoted-host-name",
    ),
    pytest.param(
        '[hosts.a100]\nremote_dir = """\nport = 1\n"""\nport = "x"\n',
        'hosts.toml:5: hosts.a100.port: expected an integer 1-65535, got "x"',
        id="after-multiline-string",
    ),
    pytest.param(
        '# caf\u2028e\n[hosts.a100]\nport = "x"\n',
        'hosts.toml:3: hosts.a100.port: expected an integer 1-65535, got "x"',
        id="unicode-line-separator-in-comment",
    ),
    pytest.param(
        '[hosts.a100]\r\nuser = "u"\r\nport = "x"\r\n',
        'hosts.toml:3: hosts.a100.port: expected an integer 1-65535, got "x"',
        id="crlf-line-endings",
    ),
    pytest.param(
        '[hosts.a100]\nuser = "u"\n\n[hosts.h100] # the big one\nport = "x"\n',
        'hosts.toml:5: hosts.h100.port: expected an integer 1-65535, got "x"',
        id="second-host",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_HOSTS)
def test_bad_hosts_toml(project: Path, text: str | bytes, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _hosts(project, text)
    assert str(caught.value) == message


# ---------------------------------------------------------------------------------------- bad gpubox.toml

PROJECT_SECTIONS = "(gpubox.toml has [sync], [env], [run], [services.NAME] and [sweep])"
STRING_LIST = "expected a list of non-empty strings"
COMMAND = "expected a command: a non-empty string or a list of strings"

BAD_PROJECTS = [
    pytest.param(
        "[synk]\nignore = []\n",
        'gpubox.toml:1: synk: unknown table; did you mean "sync"?',
        id="unknown-section-typo",
    ),
    pytest.param(
        '[sync]\nignore = []\n\n[deploy]\ntarget = "x"\n',
        f"gpubox.toml:4: deploy: unknown table {PROJECT_SECTIONS}",
        id="unknown-section",
    ),
    pytest.param(
        'command = "python train.py"\n',
        f"gpubox.toml:1: command: unknown key {PROJECT_SECTIONS}",
        id="top-level-key",
    ),
    pytest.param(
        '[sync]\nignore = "data/"\n',
        f'gpubox.toml:2: sync.ignore: {STRING_LIST}, got "data/"',
        id="ignore-not-a-list",
    ),
    pytest.param(
        '[sync]\nignore = ["data/", 3]\n',
        f'gpubox.toml:2: sync.ignore: {STRING_LIST}, got ["data/", 3]',
        id="ignore-non-string",
    ),
    pytest.param(
        '[sync]\ninclude = [".env", ""]\n',
        f'gpubox.toml:2: sync.include: {STRING_LIST}, got [".env", ""]',
        id="include-empty-string",
    ),
    pytest.param(
        '[sync]\noutputs = "runs/"\n',
        f'gpubox.toml:2: sync.outputs: {STRING_LIST}, got "runs/"',
        id="outputs-not-a-list",
    ),
    pytest.param(
        '[sync]\nexclude = ["data/"]\n',
        'gpubox.toml:2: sync.exclude: unknown key; did you mean "ignore"?',
        id="exclude-means-ignore",
    ),
    pytest.param(
        "[sync]\nmax_file_size_mb = -1\n",
        "gpubox.toml:2: sync.max_file_size_mb: expected a number > 0, got -1",
        id="max-file-size-negative",
    ),
    pytest.param(
        '[sync]\nmax_file_size_mb = "100MB"\n',
        'gpubox.toml:2: sync.max_file_size_mb: expected a number > 0, got "100MB"',
        id="max-file-size-string",
    ),
    pytest.param(
        '[run]\ncommand = ""\n',
        f'gpubox.toml:2: run.command: {COMMAND}, got ""',
        id="run-command-empty",
    ),
    pytest.param(
        "[run]\ncommand = []\n",
        f"gpubox.toml:2: run.command: {COMMAND}, got []",
        id="run-command-empty-list",
    ),
    pytest.param(
        '[run]\ncommand = ["python", 3]\n',
        f'gpubox.toml:2: run.command: {COMMAND}, got ["python", 3]',
        id="run-command-list-with-number",
    ),
    pytest.param(
        'run = "python train.py"\n',
        'gpubox.toml:1: run: expected a table, got "python train.py"',
        id="run-not-a-table",
    ),
    pytest.param(
        '# services\n\n[services.serving]\n# the model server\ncommand = "serve"\n',
        'gpubox.toml:3: services.serving: a custom service needs "port"',
        id="custom-service-no-port",
    ),
    pytest.param(
        "[services.serving]\nport = 8501\n",
        'gpubox.toml:1: services.serving: a custom service needs "command"',
        id="custom-service-no-command",
    ),
    pytest.param(
        '[services.a]\ncommand = "a"\nport = 9000\n\n[services.b]\ncommand = "b"\nport = 9000\n',
        'gpubox.toml:7: services.b.port: port 9000 is already used by service "a"',
        id="port-clash-custom",
    ),
    pytest.param(
        '[services.serving]\ncommand = "serve"\nport = 8888\n',
        'gpubox.toml:3: services.serving.port: port 8888 is already used by the built-in service "jupyter"',
        id="port-clash-builtin",
    ),
    pytest.param(
        "[services.jupyter]\nport = 6006\n",
        "gpubox.toml:2: services.jupyter.port: port 6006 is already used by the built-in service "
        '"tensorboard"',
        id="builtin-moved-onto-builtin",
    ),
    pytest.param(
        "[services.jupyter]\nport = 9000\n\n[services.tensorboard]\nport = 9000\n",
        'gpubox.toml:5: services.tensorboard.port: port 9000 is already used by service "jupyter"',
        id="port-clash-both-builtins-set",
    ),
    pytest.param(
        '[services.jupyter]\nenabled = "yes"\n',
        'gpubox.toml:2: services.jupyter.enabled: expected true or false, got "yes"',
        id="enabled-as-string",
    ),
    pytest.param(
        "[services.jupyter]\nport = 0\n",
        "gpubox.toml:2: services.jupyter.port: expected an integer 1-65535, got 0",
        id="service-port-zero",
    ),
    pytest.param(
        "[services.tensorboard]\nprot = 6007\n",
        'gpubox.toml:2: services.tensorboard.prot: unknown key; did you mean "port"?',
        id="service-key-typo",
    ),
    pytest.param(
        '[services."my server"]\ncommand = "x"\nport = 1\n',
        f'gpubox.toml:1: services."my server": invalid service name: {NAME_RULE}',
        id="service-name-with-space",
    ),
    pytest.param(
        "[services]\njupyter = false\n",
        "gpubox.toml:2: services.jupyter: expected a table, got false",
        id="service-not-a-table",
    ),
    pytest.param(
        '[env]\nsetup = "pip install x"\n',
        f'gpubox.toml:2: env.setup: {STRING_LIST}, got "pip install x"',
        id="setup-not-a-list",
    ),
    pytest.param(
        '[env]\nrequirement = "requirements.txt"\n',
        'gpubox.toml:2: env.requirement: unknown key; did you mean "requirements"?',
        id="requirements-typo",
    ),
    pytest.param(
        '[env]\nrequirements = ""\n',
        'gpubox.toml:2: env.requirements: expected a non-empty string, got ""',
        id="requirements-empty",
    ),
    pytest.param(
        "[env]\npython = 3.11\n",
        "gpubox.toml:2: env.python: expected a python executable (a string without spaces), got 3.11",
        id="env-python-number",
    ),
    pytest.param(
        "sync = 1\n",
        "gpubox.toml:1: sync: expected a table, got 1",
        id="sync-not-a-table",
    ),
    pytest.param(
        '[sync]\nignore = [\n  "data/",\n',
        "gpubox.toml:3: invalid TOML: invalid value (at the end of the file)",
        id="toml-unclosed-array",
    ),
    pytest.param(
        '[run]\ncommand = "a"\ncommand = "b"\n',
        "gpubox.toml:3: invalid TOML: run.command is set twice",
        id="toml-duplicate-key",
    ),
    pytest.param(
        b"[run]\ncommand = 'python \xff.py'\n",
        "gpubox.toml:2: is not UTF-8 text (byte 0xff in column 19); save it as UTF-8",
        id="not-utf8",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_PROJECTS)
def test_bad_gpubox_toml(project: Path, text: str | bytes, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _project(project, text)
    assert str(caught.value) == message


def test_enough_bad_cases() -> None:
    assert len(BAD_HOSTS) + len(BAD_PROJECTS) >= 30


def test_config_error_fields(project: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _hosts(project, '[hosts.a100]\nport = "22a"\n')
    error = caught.value
    assert (error.file, error.line, error.key) == ("hosts.toml", 2, "hosts.a100.port")
    assert error.problem == 'expected an integer 1-65535, got "22a"'
    assert error.exit_code == EXIT_BAD_INPUT


def test_path_outside_the_working_directory_is_shown_whole(tmp_path: Path) -> None:
    path = _write(tmp_path / "elsewhere" / "hosts.toml", "[hosts.a100]\nport = 0\n")
    with pytest.raises(ConfigError) as caught:
        load_hosts(path=path)
    assert str(caught.value) == f"{path}:2: hosts.a100.port: expected an integer 1-65535, got 0"


# ------------------------------------------------------------------------------------------ the real CLI


def _by_id(cases: list[Any], wanted: str) -> tuple[str | bytes, str]:
    """The text and message of the ``pytest.param`` with this id."""
    for case in cases:
        if case.id == wanted:
            text, message = case.values
            return text, message
    raise KeyError(wanted)


CLI_CASES = [
    ("hosts.toml", "port-not-an-integer", "hosts"),
    ("hosts.toml", "unknown-key-typo", "hosts"),
    ("hosts.toml", "default-host-typo", "hosts"),
    ("hosts.toml", "toml-unclosed-string", "hosts"),
    ("hosts.toml", "not-utf8", "hosts"),
    ("hosts.toml", "dotted-keys", "status"),
    ("hosts.toml", "host-name-with-space", "up"),
    ("gpubox.toml", "unknown-section-typo", "hosts"),
    ("gpubox.toml", "port-clash-builtin", "hosts"),
    ("gpubox.toml", "setup-not-a-list", "status"),
    ("gpubox.toml", "toml-duplicate-key", "up"),
]


@pytest.mark.parametrize(("file", "case", "command"), CLI_CASES, ids=[f"{c[2]}-{c[1]}" for c in CLI_CASES])
def test_cli_reports_config_error(project: Path, file: str, case: str, command: str) -> None:
    text, message = _by_id(BAD_HOSTS if file == "hosts.toml" else BAD_PROJECTS, case)
    _write(project / file, text)
    result = subprocess.run(
        [sys.executable, "-m", "gpubox", command],
        cwd=project,
        env=os.environ.copy(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    stderr = result.stderr.decode("utf-8")
    assert "Traceback" not in stderr + result.stdout.decode("utf-8", "replace")
    assert result.stdout == b""
    assert stderr == f"gpubox: {message}\n"
    assert result.returncode == EXIT_BAD_INPUT


def test_cli_checks_gpubox_toml_before_hosts_toml(project: Path) -> None:
    _write(project / "hosts.toml", "[hosts.a100]\nport = 0\n")
    _write(project / "gpubox.toml", "[sync]\nmax_file_size_mb = 0\n")
    result = subprocess.run(
        [sys.executable, "-m", "gpubox", "hosts"],
        cwd=project,
        env=os.environ.copy(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (EXIT_BAD_INPUT, "")
    assert result.stderr == "gpubox: gpubox.toml:2: sync.max_file_size_mb: expected a number > 0, got 0\n"


# ---------------------------------------------------------------------------------------- example files


def test_hosts_example_at_the_repo_root_is_the_packaged_one() -> None:
    assert HOSTS_EXAMPLE.is_symlink()
    assert HOSTS_EXAMPLE.resolve() == (DATA / "hosts.example.toml").resolve()


def test_hosts_example_parses(isolated_home: Path) -> None:
    hosts = load_hosts(path=HOSTS_EXAMPLE)
    assert hosts.names() == ["box", "lab", "local", "lambda-a100", "vast-4090", "runpod-h100"]
    assert hosts.default_host == "box"
    assert hosts.pick(None).name == "box"
    box = hosts.get("box")
    assert (box.provider, box.hostname, box.port, box.user) == ("ssh", "gpu.example.org", 22, "ubuntu")
    assert box.identity_file == str(isolated_home / ".ssh" / "id_ed25519")
    assert box.proxy_jump == "me@bastion.example.org:2222"
    assert (box.accept_new, box.connect_timeout, box.keepalive_seconds) == (False, 20.0, 30)
    assert (box.remote_dir, box.python, box.price_per_hour) == ("~/work/myproject", "python3", 1.29)
    lab = hosts.get("lab")
    assert (lab.hostname, lab.connect_timeout, lab.keepalive_seconds, lab.port) == ("lab-gpu", 15.0, 15, None)
    local = hosts.get("local")
    assert (local.provider, local.remote_dir, local.hostname) == ("local", "~/gpubox-local/myproject", None)
    rented = hosts.get("lambda-a100")
    assert (rented.instance_type, rented.ssh_key_name, rented.max_price_per_hour) == (
        "gpu_1x_a100_sxm4",
        "laptop",
        1.5,
    )
    assert (rented.connect_timeout, rented.spec.rents, rented.user) == (15.0, True, None)
    vast = hosts.get("vast-4090")
    assert (vast.gpu, vast.gpu_count, vast.region, vast.disk_gb) == ("RTX 4090", 1, "Europe", 40)
    runpod = hosts.get("runpod-h100")
    assert (runpod.gpu, runpod.cloud_type, runpod.user) == ("H100 SXM", "secure", "root")
    assert set(hosts.providers) == {"lambda", "vast", "runpod"}
    assert hosts.providers["lambda"].api_key_env == "LAMBDA_API_KEY"
    assert hosts.providers["vast"].api_url == "https://console.vast.ai"


def test_project_example_parses(tmp_path: Path) -> None:
    _write(tmp_path / "gpubox.toml", PROJECT_EXAMPLE.read_text())
    project = load_project(tmp_path)
    assert project.path == tmp_path / "gpubox.toml"
    assert project.sync.ignore == ("data/raw/", "*.ckpt")
    assert project.sync.include == ()
    assert project.sync.outputs == DEFAULT_OUTPUTS
    assert project.sync.max_file_size_mb == 100.0
    assert (project.env.python, project.env.requirements, project.env.setup) == (
        "python3",
        "requirements.txt",
        (),
    )
    assert project.run.command == "python train.py"
    assert project.services == {
        "jupyter": ServiceConfig("jupyter", None, 8888),
        "tensorboard": ServiceConfig("tensorboard", None, 6006),
    }


def test_project_example_custom_service_parses_when_uncommented(tmp_path: Path) -> None:
    text = PROJECT_EXAMPLE.read_text()
    services, sweep = text.split(
        "# [sweep]", 1
    )  # the [sweep] block has its own test (tests/unit/test_sweep.py)
    uncommented = re.sub(
        r"^# (\[services\.serving\]|command = |port = )", r"\1", services, flags=re.MULTILINE
    )
    uncommented += "# [sweep]" + sweep
    assert uncommented != text
    _write(tmp_path / "gpubox.toml", uncommented)
    serving = load_project(tmp_path).services["serving"]
    assert serving.port == 8501
    assert serving.enabled
    assert serving.command is not None and serving.command.startswith("tensorflow_model_server ")


def _documented(text: str) -> set[str]:
    """Keys written in an example file, set or commented out (``# key = ...``)."""
    return set(re.findall(r"^\s*#?\s*([a-z_]+)\s*=", text, flags=re.MULTILINE))


def test_hosts_example_documents_every_key() -> None:
    text = HOSTS_EXAMPLE.read_text()
    data = tomllib.loads(text)
    set_in_hosts = {key for host in data["hosts"].values() for key in host}
    assert set(HOST_FIELDS) <= set_in_hosts
    # [defaults] takes `host`, `total_budget_usd` and any host key but provider and hostname, as the example
    # says.
    assert "host" in data["defaults"]
    assert "Any host key except `provider`, `hostname` and `instance_type` may be set here" in text
    assert set(DEFAULTS_FIELDS) == {"host", "total_budget_usd"} | (
        set(HOST_FIELDS) - {"provider", "hostname", "instance_type"}
    )
    assert set(PROVIDER_TABLE_FIELDS) <= {key for table in data["providers"].values() for key in table}
    assert set(DEFAULTS_FIELDS) <= _documented(text)


def test_project_example_documents_every_key() -> None:
    text = PROJECT_EXAMPLE.read_text()
    data = tomllib.loads(text)
    # The explicit deletion brakes are off unless set: the example shows them commented out.
    sync_text = text.split("[sync]", 1)[1].split("\n[", 1)[0]
    assert set(SYNC_FIELDS) <= set(data["sync"]) | _documented(sync_text)
    assert set(ENV_FIELDS) <= set(data["env"])
    assert set(RUN_FIELDS) <= set(data["run"])
    written = {key for service in data["services"].values() for key in service}
    assert set(SERVICE_FIELDS) <= written | _documented(text.split("[services.serving]", 1)[1])


# ------------------------------------------------------------------------------------------- good hosts


def test_defaults_apply_to_ssh_hosts_only_and_a_hosts_own_value_wins(project: Path) -> None:
    hosts = _hosts(
        project,
        '[defaults]\nuser = "me"\nport = 2222\nconnect_timeout = 5\npython = "python3.11"\n\n'
        '[hosts.a100]\n\n[hosts.h100]\nuser = "root"\n\n[hosts.local]\nremote_dir = "~/x"\n',
    )
    a100, h100, local = hosts.get("a100"), hosts.get("h100"), hosts.get("local")
    assert (a100.user, a100.port, a100.connect_timeout, a100.python) == ("me", 2222, 5.0, "python3.11")
    assert (h100.user, h100.port) == ("root", 2222)
    assert (local.user, local.port) == (None, None)
    assert (local.connect_timeout, local.python, local.remote_dir) == (5.0, "python3.11", "~/x")


def test_hostname_defaults_to_the_host_name(project: Path) -> None:
    hosts = _hosts(project, '[hosts.a100]\n\n[hosts.h100]\nhostname = "10.0.0.7"\n')
    assert hosts.get("a100").hostname == "a100"
    assert hosts.get("h100").hostname == "10.0.0.7"
    assert hosts.get("local").hostname is None


def test_identity_file_tilde_is_expanded(project: Path, isolated_home: Path) -> None:
    hosts = _hosts(
        project,
        '[defaults]\nidentity_file = "~/.ssh/shared"\n\n'
        '[hosts.a100]\n\n[hosts.h100]\nidentity_file = "~/.ssh/id_h100"\n\n'
        '[hosts.abs]\nidentity_file = "/keys/id"\n',
    )
    assert hosts.get("a100").identity_file == str(isolated_home / ".ssh" / "shared")
    assert hosts.get("h100").identity_file == str(isolated_home / ".ssh" / "id_h100")
    assert hosts.get("abs").identity_file == "/keys/id"


def test_host_source_names_file_and_line(project: Path) -> None:
    hosts = _hosts(project, "# hosts\n\n[hosts.a100]\nport = 22\n")
    assert hosts.get("a100").source == "hosts.toml:3"
    assert hosts.get("local").source == "<built-in>"


def test_without_hosts_toml_only_local_exists(project: Path) -> None:
    hosts = load_hosts(project)
    assert hosts.path is None
    assert hosts.names() == [BUILTIN_LOCAL]
    local = hosts.pick(None)
    assert (local.name, local.provider) == ("local", "local")


def test_hosts_toml_in_the_project_folder_wins_over_the_user_one(project: Path) -> None:
    user_file = _write(Path(os.environ["GPUBOX_HOME"]) / "config" / "hosts.toml", "[hosts.from_user]\n")
    hosts = load_hosts(project)
    assert hosts.path is not None and hosts.path.resolve() == user_file.resolve()
    assert hosts.names() == ["from_user", "local"]
    project_file = _write(project / "hosts.toml", "[hosts.from_project]\n")
    hosts = load_hosts(project)
    assert hosts.path == project_file
    assert hosts.names() == ["from_project", "local"]


def test_an_explicit_path_is_read_as_is(project: Path, tmp_path: Path) -> None:
    _write(project / "hosts.toml", "[hosts.from_project]\n")
    other = _write(tmp_path / "other.toml", "[hosts.other]\n")
    assert load_hosts(project, path=other).names() == ["other", "local"]


def test_empty_hosts_toml_is_fine(project: Path) -> None:
    hosts = _hosts(project, "# nothing yet\n")
    assert hosts.path == project / "hosts.toml"
    assert hosts.names() == ["local"]


# ------------------------------------------------------------------------------------------------ pick


def test_pick_named_host(project: Path) -> None:
    hosts = _hosts(project, "[hosts.a100]\n[hosts.h100]\n")
    assert hosts.pick("h100").name == "h100"
    assert hosts.pick("local").name == "local"


def test_pick_default_host(project: Path) -> None:
    hosts = _hosts(project, '[defaults]\nhost = "h100"\n\n[hosts.a100]\n[hosts.h100]\n')
    assert hosts.pick(None).name == "h100"
    assert hosts.pick("a100").name == "a100"


def test_pick_the_only_host(project: Path) -> None:
    assert _hosts(project, "[hosts.a100]\n").pick(None).name == "a100"


def test_pick_local_when_it_is_the_only_one_listed(project: Path) -> None:
    assert _hosts(project, '[hosts.local]\nremote_dir = "~/x"\n').pick(None).name == "local"


def test_pick_with_several_hosts_and_no_default(project: Path) -> None:
    hosts = _hosts(project, "[hosts.a100]\n[hosts.h100]\n")
    with pytest.raises(UsageError) as caught:
        hosts.pick(None)
    assert str(caught.value) == (
        f"several hosts are configured (a100, h100): name one, "
        f'or set [defaults] host = "NAME" in {project / "hosts.toml"}'
    )


def test_pick_unknown_host(project: Path) -> None:
    hosts = _hosts(project, "[hosts.a100]\n[hosts.h100]\n")
    with pytest.raises(UsageError) as caught:
        hosts.pick("a10")
    assert str(caught.value) == 'unknown host "a10"; did you mean "a100"? (configured: a100, h100, local)'
    with pytest.raises(UsageError) as caught:
        hosts.pick("zebra")
    assert str(caught.value) == 'unknown host "zebra" (configured: a100, h100, local)'


# ---------------------------------------------------------------------------------- find_project_root


def test_find_project_root_prefers_gpubox_toml(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    deep = root / "sub" / "project" / "src" / "pkg"
    deep.mkdir(parents=True)
    (root / ".git").mkdir()
    _write(root / "sub" / "project" / "gpubox.toml", "")
    assert find_project_root(deep) == root / "sub" / "project"


def test_find_project_root_falls_back_to_git(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    deep = root / "src" / "pkg"
    deep.mkdir(parents=True)
    (root / ".git").mkdir()
    assert find_project_root(deep) == root


def test_find_project_root_falls_back_to_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    start = tmp_path / "loose" / "folder"
    start.mkdir(parents=True)
    assert find_project_root(start) == start
    monkeypatch.chdir(start)
    assert find_project_root() == start


# ----------------------------------------------------------------------------------------- good project


def test_no_gpubox_toml_gives_the_defaults(project: Path) -> None:
    config = load_project(project)
    assert config.path is None
    assert config.root == project
    assert config.name == "project"
    assert config.sync.outputs == DEFAULT_OUTPUTS
    assert config.run.command is None
    assert config.services["jupyter"] == ServiceConfig("jupyter", None, 8888, enabled=True)
    assert config.services["tensorboard"] == ServiceConfig("tensorboard", None, 6006, enabled=True)


def test_builtin_services_can_move_or_be_turned_off(project: Path) -> None:
    config = _project(project, "[services.jupyter]\nport = 8899\n\n[services.tensorboard]\nenabled = false\n")
    assert config.services["jupyter"] == ServiceConfig("jupyter", None, 8899, enabled=True)
    assert config.services["tensorboard"] == ServiceConfig("tensorboard", None, 6006, enabled=False)


def test_custom_service(project: Path) -> None:
    config = _project(
        project,
        '[services.serving]\ncommand = ["model_server", "--port", "8501", "--name", "my model"]\nport = 8501\n',
    )
    assert config.services["serving"] == ServiceConfig(
        "serving", "model_server --port 8501 --name 'my model'", 8501, enabled=True
    )
    assert list(config.services) == ["jupyter", "tensorboard", "serving"]


def test_a_disabled_service_frees_its_port(project: Path) -> None:
    config = _project(
        project, '[services.jupyter]\nenabled = false\n\n[services.lab]\ncommand = "lab"\nport = 8888\n'
    )
    assert config.services["lab"].port == 8888


def test_run_command_list_is_joined_for_the_shell(project: Path) -> None:
    config = _project(project, '[run]\ncommand = ["python", "train.py", "--name", "first run"]\n')
    assert config.run.command == "python train.py --name 'first run'"


# ------------------------------------------------------------------------------------ nothing half-applied


def test_a_bad_host_rejects_the_whole_file(project: Path) -> None:
    _write(
        project / "hosts.toml",
        '[defaults]\nhost = "good"\n\n[hosts.good]\nhostname = "gpu.example.org"\n\n[hosts.bad]\nport = 0\n',
    )
    result: list[HostsConfig] = []
    with pytest.raises(ConfigError) as caught:
        result.append(load_hosts(project))
    assert result == []
    assert str(caught.value) == "hosts.toml:8: hosts.bad.port: expected an integer 1-65535, got 0"


def test_a_bad_service_rejects_the_whole_file(project: Path) -> None:
    _write(
        project / "gpubox.toml",
        '[sync]\nignore = ["data/"]\n\n[run]\ncommand = "python train.py"\n\n[services.x]\ncommand = "x"\n',
    )
    result: list[ProjectConfig] = []
    with pytest.raises(ConfigError) as caught:
        result.append(load_project(project))
    assert result == []
    assert str(caught.value) == 'gpubox.toml:7: services.x: a custom service needs "port"'
