"""One TOML file read for gpubox: bytes to text to tables, and every problem reported against the line it is
on (``hosts.toml:7: hosts.a100.port: ...``), with a did-you-mean for unknown keys."""

from __future__ import annotations

import ast
import json
import os
import re
import stat
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gpubox.config import checks
from gpubox.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20


_BARE_OR_QUOTED = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = rf"{_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*"
_HEADER = re.compile(rf"^\s*\[\[?\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_ASSIGN = re.compile(rf"^\s*({_DOTTED})\s*=")
_PART = re.compile(_BARE_OR_QUOTED)


def _split_dotted(text: str) -> tuple[str, ...]:
    parts = []
    for match in _PART.finditer(text):
        part = match.group(0)
        if part.startswith('"'):
            part = json.loads(part)
        elif part.startswith("'"):
            part = part[1:-1]
        parts.append(part)
    return tuple(parts)


def _key_lines(text: str) -> Iterator[tuple[int, tuple[str, ...]]]:
    """Each table header and key assignment as (1-based line, full key path)."""
    table: tuple[str, ...] = ()
    in_multiline: str | None = None
    # TOML ends lines only at "\n" (so "\r\n" too). str.splitlines() would also split at U+2028, \x1c and
    # the like, which TOML allows inside strings and comments, and shift every line number after them.
    for number, line in enumerate(text.split("\n"), start=1):
        if in_multiline:
            if line.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        header = _HEADER.match(line)
        if header:
            table = _split_dotted(header.group(1))
            yield number, table
            continue
        assign = _ASSIGN.match(line)
        if assign:
            yield number, table + _split_dotted(assign.group(1))
            rest = line[assign.end() :]
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_multiline = quote


def _locate_keys(text: str) -> dict[tuple[str, ...], int]:
    """Map each table and key path, and every path above it, to the 1-based line that first names it."""
    where: dict[tuple[str, ...], int] = {}
    for number, path in _key_lines(text):
        for end in range(1, len(path) + 1):
            where.setdefault(path[:end], number)
    return where


# Words people write for a key that spelling alone does not lead to (and ~/.ssh/config names, see below).
_SYNONYMS = {
    "exclude": "ignore",
    "address": "hostname",
    "ip": "hostname",
    "key": "identity_file",
    "ssh_key": "identity_file",
    "bastion": "proxy_jump",
    "jump": "proxy_jump",
    "username": "user",
    "login": "user",
    "timeout": "connect_timeout",
    "price": "price_per_hour",
    "budget": "budget_usd",
    "autostop": "autostop_minutes",
    "idle_minutes": "autostop_minutes",
    "total_budget": "total_budget_usd",
    "servers": "hosts",
    "machines": "hosts",
    "host": "hosts",
    "clouds": "providers",
    "api_key": "api_key_env",
    "key_env": "api_key_env",
    "url": "api_url",
    "base_url": "api_url",
    "endpoint": "api_url",
    "gpu_type": "gpu",
    "num_gpus": "gpu_count",
    "gpus": "gpu_count",
    "type": "instance_type",
    "max_price": "max_price_per_hour",
    "docker_image": "image",
    "disk": "disk_gb",
}


def did_you_mean(word: str, options: Any) -> str:
    names = [str(option) for option in options]

    def squash(text: str) -> str:
        return text.lower().replace("_", "").replace("-", "")

    # ``IdentityFile``, ``ProxyJump``, ``HostName`` as written in ~/.ssh/config; ``A100`` for ``a100``.
    same = [name for name in names if squash(name) == squash(word)]
    synonym = _SYNONYMS.get(word.lower())
    close = same or ([synonym] if synonym in names else [])
    if not close:
        import difflib  # only for a key that is wrong: not loaded by every command that reads a file

        close = difflib.get_close_matches(word, names, n=1)
    return f'; did you mean "{close[0]}"?' if close else ""


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(
        p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else json.dumps(p, ensure_ascii=False) for p in path
    )


class Reader:
    """Reads one TOML file and reports problems against its lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.display = _display_path(path)
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                problem = "is not a regular file (a folder, fifo or device)"
                raise ConfigError(self.display, None, None, problem)
            if info.st_size > MAX_CONFIG_BYTES:
                problem = f"is {info.st_size:,} bytes; a configuration file is at most 1 MiB"
                raise ConfigError(self.display, None, None, problem)
            raw = path.read_bytes()
        except OSError as exc:
            problem = f"cannot read: {exc.strerror or exc}"
            if isinstance(exc, FileNotFoundError) and path.is_symlink():
                problem = f"is a symbolic link to {os.readlink(path)}, which does not exist"
            raise ConfigError(self.display, None, None, problem) from None
        try:
            self.text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad_line = raw.count(b"\n", 0, exc.start) + 1
            column = exc.start - raw.rfind(b"\n", 0, exc.start)
            problem = f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} in column {column}); save it as UTF-8"
            raise ConfigError(self.display, bad_line, None, problem) from None
        try:
            self.data = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            line, problem = _toml_error(str(exc), self.text)
            raise ConfigError(self.display, line, None, f"invalid TOML: {problem}") from None
        except RecursionError:  # tomllib parses nested arrays and inline tables recursively
            problem = "invalid TOML: arrays or tables nested too deep"
            raise ConfigError(self.display, None, None, problem) from None
        self.lines = _locate_keys(self.text)

    def line(self, path: tuple[str, ...]) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def error(self, path: tuple[str, ...], problem: str) -> ConfigError:
        return ConfigError(self.display, self.line(path), _dotted(path), problem)

    def table(self, path: tuple[str, ...], value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(path, f"expected a table, got {checks.show(value)}")
        return value

    def check_keys(
        self,
        path: tuple[str, ...],
        table: dict[str, Any],
        allowed: Any,
        *,
        otherwise: str = "",
        misplaced: Mapping[str, str] | None = None,
    ) -> None:
        """Refuse keys not in *allowed*, with a did-you-mean or else *otherwise*; *misplaced* maps keys that
        belong somewhere else to what to say about them."""
        for key, value in table.items():
            if misplaced and key in misplaced:
                raise self.error((*path, key), misplaced[key])
            if key not in allowed:
                kind = "table" if isinstance(value, dict) else "key"
                suffix = did_you_mean(key, allowed) or otherwise
                raise self.error((*path, key), f"unknown {kind}{suffix}")

    def values(
        self,
        path: tuple[str, ...],
        table: dict[str, Any],
        fields: dict[str, checks.Check],
        misplaced: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        self.check_keys(path, table, fields, misplaced=misplaced)
        result = {}
        for key, value in table.items():
            try:
                result[key] = fields[key](value)
            except checks.Invalid as exc:
                shown = f", got {checks.show(value)}" if exc.show_value else ""
                raise self.error((*path, key), f"{exc}{shown}") from None
        return result


def _display_path(path: Path) -> str:
    try:
        # The file's own name, even when it is a symlink (the folder may be one: cwd is always resolved).
        return str((path.parent.resolve() / path.name).relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _toml_error(message: str, text: str) -> tuple[int | None, str]:
    """Line and wording for a tomllib error, without the Python reprs some of its messages hold."""
    match = re.search(r"\(at (?:line (\d+), column (\d+)|end of document)\)$", message)
    if not match:
        return None, message
    problem = message[: match.start()].strip()
    if match.group(1):
        line = int(match.group(1))
        where = f" (column {match.group(2)})"
    else:
        # Point at the last line with something on it: an unclosed string or bracket runs to the end.
        line = len(text.rstrip().split("\n"))
        where = " (at the end of the file)"
    if line == 1 and text.startswith("\ufeff"):
        return line, "the file starts with a byte order mark (BOM); save it as UTF-8 without one"
    return line, _toml_problem(problem, text, line, where) or f"{problem[:1].lower()}{problem[1:]}{where}"


def _toml_problem(problem: str, text: str, line: int, where: str) -> str | None:
    """A clearer wording for the tomllib messages that need one, else None."""
    if problem == "Cannot overwrite a value":
        path = next((p for number, p in _key_lines(text) if number == line), None)
        return f"{_dotted(path)} is set twice" if path else "a key is set twice"
    declared = re.fullmatch(r"Cannot declare (\(.*\)) twice", problem)
    if declared:
        return f"table [{_dotted(_literal_path(declared.group(1)))}] is declared twice"
    immutable = re.fullmatch(r"Cannot (?:mutate immutable|redefine) namespace (\(.*\))", problem)
    if immutable:
        return f"{_dotted(_literal_path(immutable.group(1)))} is already complete and cannot be extended here"
    duplicate = re.fullmatch(r"Duplicate inline table key '(.*)'", problem)
    if duplicate:
        return f"{json.dumps(duplicate.group(1), ensure_ascii=False)} is set twice in an inline table"
    illegal = re.fullmatch(r"(?:Illegal|Found invalid) character ('.*'|\".*\")", problem)
    if illegal:
        char = ast.literal_eval(illegal.group(1))
        if char == "\n":
            return "string not closed before the end of the line (use triple quotes for several lines)"
        if isinstance(char, str) and len(char) == 1:
            return f"control character U+{ord(char):04X} is not allowed here{where}"
    return None


def _literal_path(text: str) -> tuple[str, ...]:
    """A key path from the tuple repr tomllib puts in some messages."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return (text,)
    return tuple(str(part) for part in value) if isinstance(value, tuple) else (str(value),)
