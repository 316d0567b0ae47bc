"""One module per form ``nvidia-smi`` prints, and the order they are tried in.

Each module has ``read(text) -> SmiSnapshot | None``: a snapshot when *text* is its form (state
``unrecognized``, with a message saying why, when it is but cannot be read), None when it is not.

To read a new form: add a module here with that ``read``, and put it in :data:`READERS` ahead of any reader
that would otherwise claim the text. Nothing else changes: :func:`gpubox.remote.gpu.parse.parse_nvidia_smi`
tries the readers and fills in what the rules know.
"""

from __future__ import annotations

from collections.abc import Callable

from gpubox.remote.gpu.formats import csv, message, table, text, xml
from gpubox.remote.gpu.snapshot import SmiSnapshot

__all__ = ["READERS", "Reader", "read_any"]

Reader = Callable[[str], SmiSnapshot | None]

READERS: tuple[Reader, ...] = (xml.read, table.read, text.read, message.read, csv.read)
"""In this order: the XML (text starting with ``<``), the table (its ``| NVIDIA-SMI`` banner) and the ``-q`` text
(its ``NVSMI LOG`` banner or ``Attached GPUs`` line) announce themselves; nvidia-smi's failure messages come
before the CSV, which is told by its columns."""


def read_any(text: str) -> SmiSnapshot | None:
    """What the first reader that knows *text*'s form makes of it; None when none does."""
    for reader in READERS:
        snapshot = reader(text)
        if snapshot is not None:
            return snapshot
    return None
