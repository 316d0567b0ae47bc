"""A small file of gpubox's own state that a crash may tear or leave stale: a header line says what it is (the
stamp) and holds its body's CRC-32, and a reader takes the body only under the very stamp it expects."""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from pathlib import Path

from gpubox import paths

__all__ = ["read_stamped", "write_stamped"]


def read_stamped(path: Path, stamp: list[object]) -> bytes | None:
    """What :func:`write_stamped` wrote under exactly *stamp*, when its checksum holds; else None."""
    try:
        header, _, body = path.read_bytes().partition(b"\n")
        found = json.loads(header)
    except (OSError, ValueError):
        return None
    if not isinstance(found, list) or found[:-1] != stamp or found[-1] != zlib.crc32(body):
        return None
    return body


def write_stamped(path: Path, stamp: list[object], body: bytes) -> bool:
    """Replace *path* with *body* under a JSON header line (*stamp* and the body's CRC-32). No fsync: a file lost
    or torn in a crash is not used (its stamp or checksum does not match)."""
    temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        paths.ensure_private_dir(temp.parent)
        with open(temp, "wb") as handle:
            handle.write(json.dumps([*stamp, zlib.crc32(body)]).encode() + b"\n" + body)
        os.replace(temp, path)
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink()
        return False
    return True
