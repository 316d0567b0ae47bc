"""The outputs follower: while `gpubox up` holds a host, what runs write in the project's outputs folders comes
home in the background, so a host that dies or is stopped loses at most the last few seconds of it.

Every ``[sync] pull_outputs_seconds`` it lists the outputs on the host and pulls (through
:func:`gpubox.sync.pull.pull`: a temp name and a rename, a changed local copy kept aside) the files that differ
from the local copy, newest first. A file whose size or mtime changed since the previous look is still being
written: it waits for the next look, so no checkpoint comes home half-written. Growing logs (TensorBoard event
files, ``*.log``: :data:`gpubox.sync.pull.GROWING_LOGS`) are whole as far as they go: they come as they grow,
only their new bytes. :meth:`OutputsFollower.final` is the last pull before a stop: it takes everything.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gpubox.errors import AgentError, GpuboxError, HostUnreachable
from gpubox.fmt import plural

if TYPE_CHECKING:
    from gpubox.config import ProjectConfig
    from gpubox.remote.session import HostSession
    from gpubox.sync.engine import Syncer
    from gpubox.sync.pull import PullReport
    from gpubox.sync.scan import Entry

__all__ = ["OutputsFollower", "behind_text"]

# The pull (and the sync engine and pathspec under it) load when the follower first looks, not with this module:
# `gpubox status` imports it for behind_text only.


class OutputsFollower:
    """Pulls *project*'s outputs from the host of *session* every *every* seconds, on a thread of its own."""

    MAX_MESSAGES = 5

    def __init__(
        self,
        session: HostSession,
        project: ProjectConfig,
        syncer: Syncer,
        *,
        every: float,
        say: Callable[[str], None],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.session = session
        self.project = project
        self.syncer = syncer
        self.every = every
        self.say = say
        self.wall = wall
        self.stopping = threading.Event()
        self._one_at_a_time = threading.Lock()
        self._thread: threading.Thread | None = None
        self._previous: dict[str, Entry] = {}
        self.pulled: dict[str, Entry] = {}
        """What this follower found or wrote locally, per path: a local copy that differs was changed here."""
        self.looked_at: float | None = None
        """When the local copy was last compared with the host's and brought up to date (wall clock)."""
        self.behind_files: int | None = None
        self.behind_bytes = 0
        self.waiting = 0
        self.pulled_files = 0
        self.pulled_bytes = 0
        self.error_count = 0
        self.errors: list[str] = []
        self.kept_local: list[str] = []
        self._told: set[str] = set()

    def start(self) -> OutputsFollower:
        self._thread = threading.Thread(target=self._loop, name="gpubox-outputs", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """End the background pulls (a pull under way stops after the file it is on)."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        # The first look at once: until it, `status` can only say the outputs' state is not known yet.
        while not self.stopping.is_set():
            try:
                self.look()
            except (HostUnreachable, AgentError):
                pass  # the link dropped: the supervisor says so and reconnects, and the next look catches up
            except Exception as exc:  # a local disk error, a host that refuses, ...
                self._problem(f"outputs not pulled: {exc}")
            self.stopping.wait(self.every)

    def look(self) -> PullReport:
        """One background round: pull what stood still since the previous look, and what grows."""
        from gpubox.sync.pull import growing_log, pull

        with self._one_at_a_time:
            previous = self._previous

            def ready(rel: str, entry: Entry) -> bool:
                return growing_log(rel) or entry.same(previous.get(rel))

            report = pull(
                self.session,
                self.project,
                (),
                syncer=self.syncer,
                notebooks=False,
                ready=ready,
                pulled=self.pulled,
                should_stop=self.stopping.is_set,
            )
            self._previous = {rel: e for rel, e in report.listing.items() if e.kind == "f"}
            self._took(report)
            return report

    def final(self) -> str:
        """The last pull before the host stops: every file that differs, still changing or not. Raises
        GpuboxError when something could not come home (the caller decides whether to stop anyway)."""
        from gpubox.sync.pull import pull

        with self._one_at_a_time:
            report = pull(
                self.session, self.project, (), syncer=self.syncer, notebooks=False, pulled=self.pulled
            )
            self._previous = {rel: e for rel, e in report.listing.items() if e.kind == "f"}
            self._took(report, final=True)
        if report.errors:
            raise GpuboxError(f"pulling its outputs failed ({report.errors[0]})")
        return f"pulled outputs: {report.summary()}"

    def _took(self, report: PullReport, *, final: bool = False) -> None:
        from gpubox.sync.pull import growing_log

        self.behind_files = report.behind_files
        self.behind_bytes = report.behind_bytes
        self.waiting = report.waiting
        self.pulled_files += report.fetched
        self.pulled_bytes += report.bytes_fetched
        if not report.errors and not (report.behind_files - report.waiting):
            self.looked_at = self.wall()
        shown = [p for p in report.fetched_paths if not growing_log(p)]
        if shown and not final:
            more = f" and {len(shown) - 3} more" if len(shown) > 3 else ""
            self.say(f"outputs: pulled {', '.join(shown[:3])}{more}")
        for kept in report.kept_local:
            self.kept_local = [*self.kept_local, kept][-self.MAX_MESSAGES :]
            self.say(f"! outputs: the local copy had changed here, so it was kept aside: {kept}")
        for error in report.errors:
            if final or error not in self._told:
                self._told.add(error)
                self._problem(error)

    def _problem(self, text: str) -> None:
        self.error_count += 1
        self.errors = [*self.errors, text][-self.MAX_MESSAGES :]
        self.say(f"! {text}")

    def document(self) -> dict[str, Any]:
        """The follower's state for `gpubox status` and the dashboard (published in the monitor report)."""
        return {
            "every_seconds": self.every,
            "behind_files": self.behind_files,
            "behind_bytes": self.behind_bytes,
            "waiting": self.waiting,
            "last_pull_at": self.looked_at,
            "pulled_files": self.pulled_files,
            "pulled_bytes": self.pulled_bytes,
            "errors": self.error_count,
            "recent_errors": list(self.errors),
            "kept_local": list(self.kept_local),
        }


def behind_text(document: dict[str, Any] | None, now: float) -> str | None:
    """``3 files / 40.0 MB behind (2 still being written), last pulled 12 s ago``: how far the local copy of the
    outputs is behind the host's; None without a follower."""
    if not document:
        return None
    from gpubox.fmt import format_duration

    files = document.get("behind_files")
    if files is None:
        text = "first look at the host's outputs pending"
    elif files:
        text = (
            f"{plural(int(files), 'file')} / {float(document.get('behind_bytes') or 0) / 1e6:.1f} MB behind"
        )
        waiting = int(document.get("waiting") or 0)
        if waiting:
            text += f" ({waiting} still being written)"
    else:
        text = "up to date"
    at = document.get("last_pull_at")
    if isinstance(at, int | float):
        age = max(0.0, now - at)
        text += f", last pulled {f'{age:.0f} s' if age < 60 else format_duration(age)} ago"
    elif files is not None:
        text += ", not pulled yet"
    errors = int(document.get("errors") or 0)
    if errors:
        text += f" · {plural(errors, 'error')}"
    return text
