"""The note of what a sync pass sent that is not yet known to be safe on the host.

A pass killed (or cut off) after the host applied a batch but before its answer was recorded leaves files on the
host that gpubox wrote but its ancestor does not know. Without a note of them, the next pass took them for the
host's own work and set each one aside as a conflict copy as soon as the local file changed again. And the agent
does not make each write durable as it goes: the pass asks for that once, at its end (the agent's `flush`), so a
host that crashes before then may lose or tear writes it had already acknowledged.

So every batch's entries are noted, with the host's boot id, before the batch is sent; the note is removed once
the pass's flush is answered. A pass that finds a note compares with the host: on the same boot, the host copies
that are exactly what gpubox sent are adopted (and flushed); after a reboot, nothing of the note is trusted, and
those files are written again.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path

from gpubox import paths
from gpubox.sync.plan import Op
from gpubox.sync.scan import Entry

__all__ = ["PendingNote", "rewrite", "rewritten"]

BOOT_KEY = "\0boot"
"""The key of a line's boot id (no path holds a NUL); a line without one (an older gpubox) has an unknown boot."""


class PendingNote:
    def __init__(self, path: Path) -> None:
        self.path = path

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> tuple[dict[str, Entry], set[str | None]]:
        """The entries noted (later lines winning) and the boot ids they were sent under; a torn line is skipped."""
        found: dict[str, Entry] = {}
        boots: set[str | None] = set()
        try:
            lines = self.path.read_text(errors="replace").splitlines()
        except OSError:
            return found, boots
        for line in lines:
            try:
                rows = json.loads(line)
                boot = rows.pop(BOOT_KEY, None)
                batch = {str(path): Entry.from_row(row) for path, row in rows.items()}
            except (ValueError, TypeError, AttributeError, IndexError):
                continue
            found.update(batch)
            boots.add(boot if isinstance(boot, str) else None)
        return found, boots

    def note(self, batch: dict[str, Entry], boot: str | None) -> None:
        paths.ensure_private_dir(self.path.parent)
        rows: dict[str, object] = {path: entry.row() for path, entry in batch.items()}
        if boot is not None:
            rows[BOOT_KEY] = boot
        with open(self.path, "a") as handle:
            handle.write(json.dumps(rows) + "\n")

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def rewritten(path: str, suspect: Mapping[str, Entry], local: Mapping[str, Entry]) -> bool:
    entry = local.get(path)
    return path in suspect and entry is not None and entry.kind == "f" and suspect[path].kind == "f"


def rewrite(op: Op, suspect: Mapping[str, Entry]) -> Op:
    """A write of a file an interrupted pass wrote before the host rebooted: whatever the host holds there now,
    written again (a copy that is not what that pass sent is set aside, as any unexpected host copy is)."""
    noted = suspect.get(op.path)
    if op.kind != "write" or noted is None or noted.kind != "f":
        return op
    return Op(op.kind, op.path, op.entry, noted, force=op.force, rewrite=True)
