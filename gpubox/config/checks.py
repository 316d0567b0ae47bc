"""The checks of single values in gpubox's TOML files: each returns the value (normalised) or raises
:class:`Invalid` saying what was expected; :class:`~gpubox.config.reader.Reader` adds where and what was got."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from gpubox.fmt import shorten

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
"""A host or service name."""
NAME_RULE = 'use letters, digits, ".", "_" and "-", starting with a letter or digit (at most 63 characters)'


def show(value: Any) -> str:
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


class Invalid(Exception):
    """Raised by a check; the message is what was expected."""

    show_value = True


class InvalidSecret(Invalid):
    """Like :class:`Invalid`, for a value that may be a secret pasted in the wrong place: never echoed."""

    show_value = False


Check = Callable[[Any], Any]


def path_string(value: Any) -> str:
    """A file path: a control character in one (a newline) would break the files gpubox writes it into."""
    text = nonempty_string(value)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise Invalid("expected a path without control characters (such as a newline)")
    return text


def relative_folder(value: Any) -> str:
    """A folder inside the project, relative to its root (``src/train``; ``.`` is the root itself)."""
    text = path_string(value).strip()
    parts = [part for part in text.replace("\\", "/").split("/") if part not in ("", ".")]
    if text.startswith(("/", "~")) or ".." in parts:
        raise Invalid('expected a folder inside the project, relative to its root (like "src" or ".")')
    return "/".join(parts)


def nonempty_string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid("expected a non-empty string")
    return value


def no_space_string(what: str) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value or any(c.isspace() for c in value):
            raise Invalid(f"expected {what} (a string without spaces)")
        return value

    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid("expected true or false")
    return value


def integer(low: int, high: int | None = None) -> Check:
    bounds = f"{low}-{high}" if high is not None else f">= {low}"

    def check(value: Any) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < low
            or (high is not None and value > high)
        ):
            raise Invalid(f"expected an integer {bounds}")
        return value

    return check


def number(low: float, *, above: bool = False) -> Check:
    bounds = f"> {low:g}" if above else f">= {low:g}"

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"expected a number {bounds}")
        number = float(value)
        if (
            number != number
            or number in (float("inf"), float("-inf"))
            or number < low
            or (above and number == low)
        ):
            raise Invalid(f"expected a number {bounds}")
        return number

    return check


def percent(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise Invalid("expected a percentage: a number 0-100")
    return float(value)


def minutes_or_off(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
        raise Invalid("expected minutes: a number >= 0 (0 turns autostop off)")
    return float(value)


def share(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise Invalid("expected a share: a number above 0 and at most 1")
    return float(value)


def choice(*options: str) -> Check:
    quoted = [f'"{o}"' for o in options]
    expected = " or ".join(quoted) if len(quoted) <= 2 else "one of " + ", ".join(quoted)

    def check(value: Any) -> str:
        if value not in options:
            raise Invalid(f"expected {expected}")
        return str(value)

    return check


def string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise Invalid("expected a list of non-empty strings")
    return tuple(value)


def command(value: Any) -> str:
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        import shlex

        return shlex.join(value)
    if isinstance(value, str) and value.strip():
        return value
    raise Invalid("expected a command: a non-empty string or a list of strings")


def ssh_target(value: Any) -> str:
    """A ProxyJump value: [user@]host[:port], comma-separated for a chain."""
    if not isinstance(value, str) or not value:
        raise Invalid('expected "[user@]host[:port]" (several separated by commas)')
    for hop in value.split(","):
        if not re.fullmatch(r"(?:[^@\s,]+@)?[A-Za-z0-9._\-\[\]:]+", hop.strip()):
            raise Invalid('expected "[user@]host[:port]" (several separated by commas)')
    return value


def env_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", value):
        # Someone may paste the key itself here: say what is wanted without repeating it.
        raise InvalidSecret(
            "expected the NAME of an environment variable (letters, digits, _), such as LAMBDA_API_KEY; "
            "the key itself belongs in that variable, never in this file"
        )
    return value


def http_url(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^\s/?#@]+(?:/[^\s?#]*)?", value):
        raise Invalid(
            'expected an http(s) URL such as "https://proxy.example.com/api/v1" (no query, no user@)'
        )
    return value.rstrip("/")


def gpu_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise Invalid('expected a GPU model such as "A100", "RTX 4090" or "H100 SXM"')
    return value.strip()
