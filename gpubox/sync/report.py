"""What one sync pass did, in the words the command line, the watcher and the dashboard use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gpubox.errors import GpuboxError
from gpubox.record import record

if TYPE_CHECKING:
    from gpubox.sync.plan import Op

__all__ = ["BatchProgress", "DeletionsHeld", "SyncReport", "report_document", "report_from_document"]


@record
class BatchProgress:
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int


@dataclass
class SyncReport:
    """What one sync pass did; every list is worth telling the user about."""

    sent: int = 0
    bytes_sent: int = 0
    deleted: int = 0
    moved: int = 0
    """Files renamed or moved on the host instead of sent again."""
    in_sync: int = 0
    seconds: float = 0.0
    verified: bool = False
    """The pass compared with the host's own listing (so host_changed is complete)."""
    conflicts: list[str] = field(default_factory=list)
    host_changed: list[str] = field(default_factory=list)
    kept_on_host: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    held_back: list[str] = field(default_factory=list)
    too_large: list[tuple[str, int]] = field(default_factory=list)
    too_large_kept: list[str] = field(default_factory=list)
    """Files over the size limit the host still holds an earlier copy of (they stay tracked)."""
    outside_links: list[tuple[str, str]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    held_deletions: list[str] = field(default_factory=list)
    """Every deletion held back now (this pass's and earlier ones'): they look like a wipe."""
    held_reason: str | None = None
    planned: list[Op] = field(default_factory=list)

    def then(self, later: SyncReport) -> SyncReport:
        """This pass followed by *later* (held deletions let go after asking), as one report."""
        self.sent += later.sent
        self.bytes_sent += later.bytes_sent
        self.deleted += later.deleted
        self.moved += later.moved
        self.seconds += later.seconds
        self.conflicts += later.conflicts
        self.kept_on_host += later.kept_on_host
        self.errors += later.errors
        self.unreadable += later.unreadable
        self.held_deletions, self.held_reason = later.held_deletions, later.held_reason
        return self

    def summary(self) -> str:
        parts = [f"{self.sent:,} sent ({_size(self.bytes_sent)})"]
        if self.moved:
            parts.append(f"{self.moved:,} moved")
        parts.append(f"{self.deleted:,} deleted")
        if self.in_sync:
            parts.append(f"{self.in_sync:,} already there")
        if self.held_deletions:
            parts.append(f"{len(self.held_deletions):,} deletions held back")
        for label, items in (
            ("conflicts kept on the host", self.conflicts),
            ("changed on the host, left alone", self.host_changed),
            ("errors", self.errors),
            ("unreadable", self.unreadable),
        ):
            if items:
                parts.append(f"{len(items)} {label}")
        return ", ".join(parts) + f" in {self.seconds:.2f} s"


_COUNTS = ("sent", "bytes_sent", "deleted", "moved", "in_sync")
_LISTS = (
    "conflicts",
    "host_changed",
    "kept_on_host",
    "errors",
    "held_back",
    "too_large_kept",
    "held_deletions",
)
_PAIRS = ("too_large", "outside_links", "unreadable")


def report_document(report: SyncReport) -> dict[str, Any]:
    """*report* as JSON (without its planned ops): what a holder's flush answers with (gpubox/remote/control.py)."""
    document: dict[str, Any] = {name: getattr(report, name) for name in (*_COUNTS, *_LISTS, *_PAIRS)}
    document.update(seconds=report.seconds, verified=report.verified, held_reason=report.held_reason)
    return document


def report_from_document(document: dict[str, Any]) -> SyncReport:
    """The report :func:`report_document` wrote (a field missing or of the wrong type reads as empty)."""
    report = SyncReport()
    for name in _COUNTS:
        value = document.get(name)
        setattr(report, name, value if isinstance(value, int) else 0)
    for name in _LISTS:
        value = document.get(name)
        setattr(report, name, [str(item) for item in value] if isinstance(value, list) else [])
    for name in _PAIRS:
        value = document.get(name)
        pairs = value if isinstance(value, list) else []
        setattr(report, name, [tuple(pair) for pair in pairs if isinstance(pair, list) and len(pair) == 2])
    seconds = document.get("seconds")
    report.seconds = float(seconds) if isinstance(seconds, (int, float)) else 0.0
    report.verified = document.get("verified") is True
    reason = document.get("held_reason")
    report.held_reason = reason if isinstance(reason, str) else None
    return report


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{count} B"


class DeletionsHeld(GpuboxError):
    """A one-shot sync that held deletions back: everything else went; the command line says how to go on."""

    def __init__(self, report: SyncReport) -> None:
        count = len(report.held_deletions)
        super().__init__(
            f"{count} deletion{'' if count == 1 else 's'} held back on the host: {report.held_reason}; check the "
            f"project folder, then `gpubox sync --allow-mass-delete` carries them out (into the host's trash)"
        )
        self.report = report
