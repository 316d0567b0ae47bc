"""``hosts.toml`` and ``gpubox.toml`` turned into typed, validated objects.

Both files are read with :mod:`tomllib` (exact TOML semantics); a small line locator maps every dotted key
to the line it was written on, so each error can say ``hosts.toml:7: hosts.a100.port: expected an integer
1-65535, got "22a"``. Unknown keys are errors with a did-you-mean. A file is either wholly valid or rejected:
callers never see a half-applied configuration.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpubox import paths
from gpubox.errors import ConfigError
from gpubox.fmt import either, shorten
from gpubox.remote.providers.registry import CLOUD_NAMES, PROVIDER_NAMES, SPECS, ProviderSpec, provider_spec

__all__ = [
    "BUILTIN_LOCAL",
    "DEFAULT_OUTPUTS",
    "EnvConfig",
    "HostConfig",
    "HostsConfig",
    "ProjectConfig",
    "ProviderSettings",
    "RunConfig",
    "ServiceConfig",
    "SyncConfig",
    "find_project_root",
    "load_hosts",
    "load_project",
]

HOSTS_FILE = "hosts.toml"
MAX_CONFIG_BYTES = 1 << 20
PROJECT_FILE = "gpubox.toml"
BUILTIN_LOCAL = "local"
DEFAULT_OUTPUTS = ("runs/", "checkpoints/", "logs/", "outputs/")
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_NAME_RULE = 'use letters, digits, ".", "_" and "-", starting with a letter or digit (at most 63 characters)'


# --------------------------------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class HostConfig:
    """One host as configured (or the built-in ``local``), with defaults already applied."""

    name: str
    provider: str = "ssh"
    hostname: str | None = None
    """A DNS name, an address, or a ``Host`` alias from ``~/.ssh/config``; for ``ssh`` it defaults to the
    name."""
    port: int | None = None
    user: str | None = None
    identity_file: str | None = None
    proxy_jump: str | None = None
    accept_new: bool = False
    """Pin an unknown host key on first use without asking (``StrictHostKeyChecking=accept-new``)."""
    connect_timeout: float = 15.0
    keepalive_seconds: int = 15
    remote_dir: str | None = None
    """The project folder on the host; ``~/gpubox/<project folder name>`` when not set."""
    python: str = "python3"
    price_per_hour: float | None = None
    budget_usd: float | None = None
    """The most this host may cost, over all the time in gpubox's ledger; warnings at 50, 80 and 100 %."""
    on_budget: str = "stop"
    """At 100 % of a budget: ``stop`` the host like an idle one, or only ``warn``."""
    autostop_minutes: float = 0.0
    """Stop the host after it has been idle this long; 0 never does."""
    autostop_gpu_percent: float = 5.0
    """GPU utilisation (of the busiest GPU) below this counts as idle."""
    stop_command: str | None = None
    """How to stop an ``ssh`` host when it idles out or spends its budget (run there over SSH), e.g. ``sudo
    poweroff``; without one gpubox only warns."""
    # What to rent, for the cloud providers (lambda, vast, runpod).
    gpu: str | None = None
    """A GPU model as the offers show it ("A100", "RTX 4090", "H100 SXM"); matched loosely."""
    gpu_count: int = 1
    instance_type: str | None = None
    """Lambda's instance type name (``gpu_1x_a100_sxm4``); picks the GPU and count itself."""
    region: str | None = None
    """Lambda region name; for vast, a piece of the offer's location ("Sweden", "US")."""
    max_price_per_hour: float | None = None
    """Never rent for more than this (US dollars per hour, the whole machine)."""
    ssh_key_name: str | None = None
    """Lambda: the name of the SSH key registered in the Lambda account, put on the instance at launch."""
    image: str | None = None
    """vast and RunPod: the container image the instance runs."""
    disk_gb: int | None = None
    cloud_type: str = "secure"
    """RunPod: rent from its ``secure`` cloud, the ``community`` one, or ``all``."""
    launch_timeout: float = 600.0
    """Seconds to wait for a new instance to answer SSH before giving up (it stays recorded as billing)."""
    source: str = "<built-in>"
    api: ProviderSettings | None = field(default=None, compare=False, repr=False)
    """How to reach the provider's API, for a rented host."""

    def provider_settings(self) -> ProviderSettings:
        return self.api or ProviderSettings.default(self.provider)

    @property
    def spec(self) -> ProviderSpec:
        """What kind of host this is: rented or not, who runs its sshd, what ``down`` does to it."""
        return provider_spec(self.provider)

    def remote_project_dir(self, project_name: str) -> str:
        return self.remote_dir or f"~/gpubox/{project_name}"


@dataclass(frozen=True)
class ProviderSettings:
    """How to talk to one cloud provider's API (``[providers.NAME]``, or its defaults)."""

    name: str
    api_key_env: str
    """The environment variable holding the API key; the key itself is never in a file gpubox reads or
    writes."""
    api_url: str
    request_timeout: float = 20.0
    offers_timeout: float = 15.0
    """The most ``gpubox offers`` waits for this provider before showing the others without it."""
    source: str = "<built-in>"

    @classmethod
    def default(cls, name: str) -> ProviderSettings:
        spec = provider_spec(name)
        return cls(name=name, api_key_env=spec.api_key_env, api_url=spec.api_url)

    def api_key(self) -> str:
        """The key from the environment; a clear error naming the variable when it is missing."""
        from gpubox.errors import BadInput

        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise BadInput(
                f"{self.name}: the API key variable {self.api_key_env} is not set; export it "
                f"(or name another variable with api_key_env in [providers.{self.name}] of hosts.toml)"
            )
        return key


@dataclass(frozen=True)
class HostsConfig:
    path: Path | None
    """The file these hosts came from, or None when there is none (only ``local`` then)."""
    hosts: Mapping[str, HostConfig]
    default_host: str | None = None
    total_budget_usd: float | None = None
    """``[defaults] total_budget_usd``: the budget of all hosts together."""
    providers: Mapping[str, ProviderSettings] = field(default_factory=dict)
    """The cloud providers in use: those with a ``[providers.NAME]`` table or a host."""

    def provider_settings(self, name: str) -> ProviderSettings:
        return self.providers.get(name) or ProviderSettings.default(name)

    def names(self) -> list[str]:
        return list(self.hosts)

    def get(self, name: str) -> HostConfig:
        from gpubox.errors import UsageError

        try:
            return self.hosts[name]
        except KeyError:
            known = ", ".join(self.hosts) or "none"
            hint = _did_you_mean(name, self.hosts)
            raise UsageError(f"unknown host {json.dumps(name)}{hint} (configured: {known})") from None

    def pick(self, name: str | None) -> HostConfig:
        """The host a command acts on: the one named, else ``[defaults] host``, else the only one, else
        local."""
        from gpubox.errors import UsageError

        if name:
            return self.get(name)
        if self.default_host:
            return self.get(self.default_host)
        configured = [h for h in self.hosts if h != BUILTIN_LOCAL]
        if not configured:
            return self.hosts[BUILTIN_LOCAL]
        if len(configured) == 1:
            return self.hosts[configured[0]]
        raise UsageError(
            f"several hosts are configured ({', '.join(configured)}): name one, "
            f'or set [defaults] host = "NAME" in {self.path}'
        )


@dataclass(frozen=True)
class SyncConfig:
    ignore: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    max_file_size_mb: float = 100.0
    max_delete_count: int = 1000
    """A batch deleting more tracked files than this pauses and asks (like rsync's --max-delete)."""
    max_delete_share: float = 0.5
    """...as does one deleting more than this share of them (once more than 10 files go)."""
    trash_days: float = 7.0
    """Files sync deleted on the host wait this long in ~/.gpubox/trash before they are pruned."""


@dataclass(frozen=True)
class EnvConfig:
    python: str = "python3"
    requirements: str | None = None
    setup: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunConfig:
    command: str | None = None


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    command: str | None
    """None for the built-in jupyter and tensorboard, whose command gpubox knows."""
    port: int
    enabled: bool = True


BUILTIN_SERVICES = {
    "jupyter": ServiceConfig("jupyter", None, 8888),
    "tensorboard": ServiceConfig("tensorboard", None, 6006),
}


@dataclass(frozen=True)
class ProjectConfig:
    root: Path
    path: Path | None
    sync: SyncConfig = field(default_factory=SyncConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    run: RunConfig = field(default_factory=RunConfig)
    services: Mapping[str, ServiceConfig] = field(default_factory=lambda: dict(BUILTIN_SERVICES))

    @property
    def name(self) -> str:
        return self.root.name or "project"


# ------------------------------------------------------------------------------------------- value checks


def _show(value: Any) -> str:
    """A TOML value the way the user wrote it, for 'got ...' in messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:56] + '..."'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        if any(isinstance(item, dict) for item in value):
            return "an array of tables"
        text = json.dumps(value, ensure_ascii=False, default=str)
        return shorten(text)
    return str(value)


class _Invalid(Exception):
    """Raised by a check; the message is what was expected."""

    show_value = True


class _InvalidSecret(_Invalid):
    """Like :class:`_Invalid`, for a value that may be a secret pasted in the wrong place: never echoed."""

    show_value = False


Check = Callable[[Any], Any]


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("expected a string")
    return value


def _path_string(value: Any) -> str:
    """A file path: a control character in one (a newline) would break the files gpubox writes it into."""
    text = _nonempty_string(value)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise _Invalid("expected a path without control characters (such as a newline)")
    return text


def _nonempty_string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("expected a non-empty string")
    return value


def _no_space_string(what: str) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value or any(c.isspace() for c in value):
            raise _Invalid(f"expected {what} (a string without spaces)")
        return value

    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("expected true or false")
    return value


def _integer(low: int, high: int | None = None) -> Check:
    bounds = f"{low}-{high}" if high is not None else f">= {low}"

    def check(value: Any) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < low
            or (high is not None and value > high)
        ):
            raise _Invalid(f"expected an integer {bounds}")
        return value

    return check


def _number(low: float, *, above: bool = False) -> Check:
    bounds = f"> {low:g}" if above else f">= {low:g}"

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"expected a number {bounds}")
        number = float(value)
        if (
            number != number
            or number in (float("inf"), float("-inf"))
            or number < low
            or (above and number == low)
        ):
            raise _Invalid(f"expected a number {bounds}")
        return number

    return check


def _percent(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise _Invalid("expected a percentage: a number 0-100")
    return float(value)


def _minutes_or_off(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
        raise _Invalid("expected minutes: a number >= 0 (0 turns autostop off)")
    return float(value)


def _share(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise _Invalid("expected a share: a number above 0 and at most 1")
    return float(value)


def _choice(*options: str) -> Check:
    quoted = [f'"{o}"' for o in options]
    expected = " or ".join(quoted) if len(quoted) <= 2 else "one of " + ", ".join(quoted)

    def check(value: Any) -> str:
        if value not in options:
            raise _Invalid(f"expected {expected}")
        return str(value)

    return check


def _string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise _Invalid("expected a list of non-empty strings")
    return tuple(value)


def _command(value: Any) -> str:
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        import shlex

        return shlex.join(value)
    if isinstance(value, str) and value.strip():
        return value
    raise _Invalid("expected a command: a non-empty string or a list of strings")


def _ssh_target(value: Any) -> str:
    """A ProxyJump value: [user@]host[:port], comma-separated for a chain."""
    if not isinstance(value, str) or not value:
        raise _Invalid('expected "[user@]host[:port]" (several separated by commas)')
    for hop in value.split(","):
        if not re.fullmatch(r"(?:[^@\s,]+@)?[A-Za-z0-9._\-\[\]:]+", hop.strip()):
            raise _Invalid('expected "[user@]host[:port]" (several separated by commas)')
    return value


def _env_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", value):
        # Someone may paste the key itself here: say what is wanted without repeating it.
        raise _InvalidSecret(
            "expected the NAME of an environment variable (letters, digits, _), such as LAMBDA_API_KEY; "
            "the key itself belongs in that variable, never in this file"
        )
    return value


def _http_url(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^\s/?#@]+(?:/[^\s?#]*)?", value):
        raise _Invalid(
            'expected an http(s) URL such as "https://proxy.example.com/api/v1" (no query, no user@)'
        )
    return value.rstrip("/")


def _gpu_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise _Invalid('expected a GPU model such as "A100", "RTX 4090" or "H100 SXM"')
    return value.strip()


# ----------------------------------------------------------------------------------------------- schema

HOST_FIELDS: dict[str, Check] = {
    "provider": _choice(*PROVIDER_NAMES),
    "hostname": _no_space_string("a host name, an address or an ~/.ssh/config alias"),
    "port": _integer(1, 65535),
    "user": _no_space_string("a user name"),
    "identity_file": _path_string,
    "proxy_jump": _ssh_target,
    "accept_new": _boolean,
    "connect_timeout": _number(0, above=True),
    "keepalive_seconds": _integer(0, 3600),
    "remote_dir": _nonempty_string,
    "python": _no_space_string("a python executable"),
    "price_per_hour": _number(0),
    "budget_usd": _number(0, above=True),
    "on_budget": _choice("stop", "warn"),
    "autostop_minutes": _minutes_or_off,
    "autostop_gpu_percent": _percent,
    "stop_command": _command,
    "gpu": _gpu_name,
    "gpu_count": _integer(1, 16),
    "instance_type": _no_space_string("an instance type name such as gpu_1x_a100_sxm4"),
    "region": _nonempty_string,
    "max_price_per_hour": _number(0, above=True),
    "ssh_key_name": _nonempty_string,
    "image": _no_space_string("a container image such as nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"),
    "disk_gb": _integer(10, 10000),
    "cloud_type": _choice("secure", "community", "all"),
    "launch_timeout": _number(0, above=True),
}
PROVIDER_TABLE_FIELDS: dict[str, Check] = {
    "api_key_env": _env_name,
    "api_url": _http_url,
    "request_timeout": _number(0, above=True),
    "offers_timeout": _number(0, above=True),
}
DEFAULTS_FIELDS: dict[str, Check] = {
    "host": _no_space_string("a host name"),
    "total_budget_usd": _number(0, above=True),
} | {key: check for key, check in HOST_FIELDS.items() if key not in ("provider", "hostname", "instance_type")}

SYNC_FIELDS: dict[str, Check] = {
    "ignore": _string_list,
    "include": _string_list,
    "outputs": _string_list,
    "max_file_size_mb": _number(0, above=True),
    "max_delete_count": _integer(0),
    "max_delete_share": _share,
    "trash_days": _number(0),
}
ENV_FIELDS: dict[str, Check] = {
    "python": _no_space_string("a python executable"),
    "requirements": _nonempty_string,
    "setup": _string_list,
}
RUN_FIELDS: dict[str, Check] = {"command": _command}
SERVICE_FIELDS: dict[str, Check] = {"command": _command, "port": _integer(1, 65535), "enabled": _boolean}


# ----------------------------------------------------------------------------------------- line locator

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


def _did_you_mean(word: str, options: Any) -> str:
    names = [str(option) for option in options]

    def squash(text: str) -> str:
        return text.lower().replace("_", "").replace("-", "")

    # ``IdentityFile``, ``ProxyJump``, ``HostName`` as written in ~/.ssh/config; ``A100`` for ``a100``.
    same = [name for name in names if squash(name) == squash(word)]
    synonym = _SYNONYMS.get(word.lower())
    close = same or ([synonym] if synonym in names else []) or difflib.get_close_matches(word, names, n=1)
    return f'; did you mean "{close[0]}"?' if close else ""


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(
        p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else json.dumps(p, ensure_ascii=False) for p in path
    )


class _Reader:
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
            raise self.error(path, f"expected a table, got {_show(value)}")
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
                suffix = _did_you_mean(key, allowed) or otherwise
                raise self.error((*path, key), f"unknown {kind}{suffix}")

    def values(
        self,
        path: tuple[str, ...],
        table: dict[str, Any],
        checks: dict[str, Check],
        misplaced: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        self.check_keys(path, table, checks, misplaced=misplaced)
        result = {}
        for key, value in table.items():
            try:
                result[key] = checks[key](value)
            except _Invalid as exc:
                shown = f", got {_show(value)}" if exc.show_value else ""
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


# ------------------------------------------------------------------------------------------- hosts.toml


def hosts_file_candidates(project_root: Path) -> list[Path]:
    return [project_root / HOSTS_FILE, paths.config_dir() / HOSTS_FILE]


def load_hosts(project_root: Path | None = None, *, path: Path | None = None) -> HostsConfig:
    """The hosts gpubox knows: the first hosts.toml found (project folder, then user config dir), plus
    ``local``."""
    if path is None:
        root = project_root or find_project_root()
        # One that is there but unreadable (a broken link, a folder) is an error, not a reason to look elsewhere.
        path = next((p for p in hosts_file_candidates(root) if os.path.lexists(p)), None)
    local = HostConfig(name=BUILTIN_LOCAL, provider="local")
    if path is None:
        return HostsConfig(path=None, hosts={BUILTIN_LOCAL: local})
    reader = _Reader(path)
    reader.check_keys(
        (),
        reader.data,
        ("defaults", "hosts", "providers"),
        otherwise=" (hosts.toml has [defaults], [hosts.NAME] and [providers.NAME])",
    )
    providers = _provider_tables(reader)
    per_host = "only allowed in [hosts.NAME] tables, not in [defaults]"
    defaults = reader.values(
        ("defaults",),
        reader.table(("defaults",), reader.data.get("defaults", {})),
        DEFAULTS_FIELDS,
        misplaced={"provider": per_host, "hostname": per_host},
    )
    default_host = defaults.pop("host", None)
    total_budget_usd = defaults.pop("total_budget_usd", None)
    hosts_table = reader.table(("hosts",), reader.data.get("hosts", {}))
    hosts: dict[str, HostConfig] = {}
    for name, raw in hosts_table.items():
        where = ("hosts", name)
        if not _HOST_NAME.fullmatch(name):
            raise reader.error(where, f"invalid host name: {_NAME_RULE}")
        table = reader.table(where, raw)
        values = reader.values(
            where,
            table,
            HOST_FIELDS,
            misplaced={"total_budget_usd": "only allowed in [defaults] (the budget of all hosts together)"},
        )
        provider = values.get("provider", "local" if name == BUILTIN_LOCAL else "ssh")
        spec = provider_spec(provider)
        for key in values:
            if key not in spec.keys:
                raise reader.error((*where, key), _not_used(spec, key))
        merged = {k: v for k, v in defaults.items() if k in spec.keys} | values
        merged["provider"] = provider
        if "hostname" in spec.keys:
            merged.setdefault("hostname", name)
        _check_required(reader, where, spec, merged)
        if spec.rents:
            merged["api"] = providers.setdefault(provider, ProviderSettings.default(provider))
        if "identity_file" in merged:
            merged["identity_file"] = os.path.expanduser(merged["identity_file"])
        hosts[name] = HostConfig(name=name, source=f"{reader.display}:{reader.line(where) or 1}", **merged)
    hosts.setdefault(BUILTIN_LOCAL, local)
    if default_host is not None and default_host not in hosts:
        hint = _did_you_mean(default_host, hosts) or f" (configured: {', '.join(hosts)})"
        raise reader.error(("defaults", "host"), f"no host named {json.dumps(default_host)}{hint}")
    return HostsConfig(
        path=path,
        hosts=hosts,
        default_host=default_host,
        total_budget_usd=total_budget_usd,
        providers=providers,
    )


def _not_used(spec: ProviderSpec, key: str) -> str:
    provider = spec.name
    if spec.runs_own_sshd:
        return f'not used by provider "{provider}" (gpubox runs that host itself)'
    if not spec.rents:
        clouds = either([f'"{name}"' for name in CLOUD_NAMES])
        return f'not used by provider "{provider}" (only for hosts gpubox rents: provider = {clouds})'
    if key == "price_per_hour":
        return f'not used by provider "{provider}": gpubox reads the price from its API (cap it with max_price_per_hour)'
    if key in ("hostname", "port", "proxy_jump"):
        return f'not used by provider "{provider}": gpubox learns the address from its API'
    if key == "stop_command":
        return f'not used by provider "{provider}": gpubox stops a rented host by terminating it'
    users = [other.name for other in SPECS if other.rents and key in other.keys]
    return f'not used by provider "{provider}"' + (f" (only by {', '.join(users)})" if users else "")


def _check_required(
    reader: _Reader, where: tuple[str, ...], spec: ProviderSpec, values: dict[str, Any]
) -> None:
    """What a provider needs before gpubox can rent from it, checked when the file is read, not at launch."""
    for requirement in spec.requires:
        if not any(key in values for key in requirement.keys):
            raise reader.error(where, f"a {spec.name} host needs {requirement.needs}")


def _provider_tables(reader: _Reader) -> dict[str, ProviderSettings]:
    table = reader.table(("providers",), reader.data.get("providers", {}))
    settings: dict[str, ProviderSettings] = {}
    for name, raw in table.items():
        where = ("providers", name)
        if name not in CLOUD_NAMES:
            hint = _did_you_mean(name, CLOUD_NAMES) or f" (the cloud providers are {', '.join(CLOUD_NAMES)})"
            raise reader.error(where, f"unknown provider{hint}")
        values = reader.values(where, reader.table(where, raw), PROVIDER_TABLE_FIELDS)
        base = ProviderSettings.default(name)
        settings[name] = ProviderSettings(
            name=name,
            api_key_env=values.get("api_key_env", base.api_key_env),
            api_url=values.get("api_url", base.api_url),
            request_timeout=values.get("request_timeout", base.request_timeout),
            offers_timeout=values.get("offers_timeout", base.offers_timeout),
            source=f"{reader.display}:{reader.line(where) or 1}",
        )
    return settings


# ------------------------------------------------------------------------------------------ gpubox.toml


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder upwards holding gpubox.toml, else the nearest holding .git, else *start*."""
    here = (start or Path.cwd()).resolve()
    chain = [here, *here.parents]
    for marker in (PROJECT_FILE, ".git"):
        for folder in chain:
            if (folder / marker).exists():
                return folder
    return here


def load_project(root: Path | None = None) -> ProjectConfig:
    root = root or find_project_root()
    path = root / PROJECT_FILE
    if not os.path.lexists(path):
        return ProjectConfig(root=root, path=None)
    reader = _Reader(path)
    sections = ("sync", "env", "run", "services")
    reader.check_keys(
        (), reader.data, sections, otherwise=" (gpubox.toml has [sync], [env], [run] and [services.NAME])"
    )

    def section(name: str, checks: dict[str, Check]) -> dict[str, Any]:
        return reader.values((name,), reader.table((name,), reader.data.get(name, {})), checks)

    sync = SyncConfig(**section("sync", SYNC_FIELDS))
    env = EnvConfig(**section("env", ENV_FIELDS))
    run = RunConfig(**section("run", RUN_FIELDS))
    services = dict(BUILTIN_SERVICES)
    used_ports: dict[int, str] = {}
    for name, raw in reader.table(("services",), reader.data.get("services", {})).items():
        where = ("services", name)
        if not _HOST_NAME.fullmatch(name):
            raise reader.error(where, f"invalid service name: {_NAME_RULE}")
        values = reader.values(where, reader.table(where, raw), SERVICE_FIELDS)
        builtin = BUILTIN_SERVICES.get(name)
        if builtin is None:
            for required in ("command", "port"):
                if required not in values:
                    raise reader.error(where, f'a custom service needs "{required}"')
        base = builtin or ServiceConfig(name, None, 0)
        services[name] = ServiceConfig(
            name=name,
            command=values.get("command", base.command),
            port=values.get("port", base.port),
            enabled=values.get("enabled", base.enabled),
        )
    for name, service in services.items():
        if not service.enabled:
            continue
        other = used_ports.setdefault(service.port, name)
        if other == name:
            continue
        # Blame the service whose port the file sets: a built-in one not mentioned keeps its usual port.
        blamed = name
        if ("services", other, "port") in reader.lines and ("services", name, "port") not in reader.lines:
            blamed, other = other, name
        implicit = other in BUILTIN_SERVICES and ("services", other, "port") not in reader.lines
        by = f'the built-in service "{other}"' if implicit else f'service "{other}"'
        raise reader.error(("services", blamed, "port"), f"port {service.port} is already used by {by}")
    return ProjectConfig(root=root, path=path, sync=sync, env=env, run=run, services=services)
