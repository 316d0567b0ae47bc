"""Changing one key of one host in hosts.toml the way a person would: the line is added under the host's table
header (or the key's own line replaced), and every other line, comment and blank stays as it was. The result is
read back before it replaces the file, so a change that would not load leaves the file untouched."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

__all__ = ["set_host_key"]

_HEADER = re.compile(
    r"^\s*\[\s*hosts\s*\.\s*(?P<name>\"(?:[^\"\\]|\\.)*\"|'[^']*'|[A-Za-z0-9_-]+)\s*\]\s*(#.*)?$"
)
_ANY_HEADER = re.compile(r"^\s*\[")


def _table_name(raw: str) -> str:
    if raw.startswith('"'):
        return str(json.loads(raw))
    return raw.strip("'")


def set_host_key(path: Path, host: str, key: str, value: str, comment: str = "") -> None:
    """Set ``key = "value"`` in the ``[hosts.HOST]`` table of *path*, with ``# comment`` after it. Raises
    ConfigError when the file has no such table or the change would not load."""
    from gpubox.config.hosts import load_hosts
    from gpubox.errors import ConfigError

    text = path.read_text()
    lines = text.splitlines(keepends=True)
    start = next(
        (i for i, line in enumerate(lines) if (m := _HEADER.match(line)) and _table_name(m["name"]) == host),
        None,
    )
    if start is None:
        raise ConfigError(str(path), None, None, f"no [hosts.{host}] table to record {key} in")
    end = next((i for i in range(start + 1, len(lines)) if _ANY_HEADER.match(lines[i])), len(lines))
    entry = f"{key} = {json.dumps(value)}" + (f"  # {comment}" if comment else "") + "\n"
    own = re.compile(rf"^\s*{re.escape(key)}\s*=")
    found = next((i for i in range(start + 1, end) if own.match(lines[i])), None)
    if found is not None:
        lines[found] = entry
    else:
        if not lines[start].endswith("\n"):
            lines[start] += "\n"
        lines.insert(start + 1, entry)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text("".join(lines))
    try:
        os.chmod(temp, path.stat().st_mode & 0o777)
        try:
            load_hosts(path=temp)  # the changed file must load, or the old one stays
        except ConfigError as exc:
            raise ConfigError(str(path), exc.line, exc.key, exc.problem) from None
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
