"""hosts.toml's one-key writer (gpubox/config/writer.py): the key goes under its host's table, an existing line
of it is replaced, every other line stays byte for byte, and a change that would not load is never written."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpubox.config import load_hosts
from gpubox.config.writer import set_host_key
from gpubox.errors import ConfigError

TEXT = """\
# top comment
[hosts."gpu.box"]   # quoted name
provider = "vast"
gpu = "RTX 4090"   # keep me

[hosts.other]
hostname = "b"
"""


def test_the_key_goes_under_its_table_and_nothing_else_changes(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(TEXT)
    set_host_key(path, "gpu.box", "self_stop", "off", "why")
    lines = path.read_text().splitlines()
    assert lines[2] == 'self_stop = "off"  # why'
    assert [line for i, line in enumerate(lines) if i != 2] == TEXT.splitlines()
    assert load_hosts(path=path).get("gpu.box").self_stop == "off"

    set_host_key(path, "gpu.box", "self_stop", "key")  # replaced in place, not added twice
    assert path.read_text() == TEXT.replace("   # quoted name\n", '   # quoted name\nself_stop = "key"\n')


def test_a_change_that_would_not_load_or_has_no_table_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(TEXT)
    with pytest.raises(
        ConfigError, match=r'hosts\.toml:7: hosts\.other\.self_stop: not used by provider "ssh"'
    ):
        set_host_key(path, "other", "self_stop", "key")
    with pytest.raises(ConfigError, match=r"no \[hosts\.missing\] table"):
        set_host_key(path, "missing", "self_stop", "key")
    assert path.read_text() == TEXT
    assert not list(tmp_path.glob(".hosts.toml.*"))  # no temporary file left
