"""Shared by the benchmarks: where results go and what machine produced them."""

from __future__ import annotations

import os
import platform
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


def write_section(title: str, report: str) -> None:
    """Replace the section headed *title* in RESULTS.md (or add it), keeping every other benchmark's section."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    start = text.find(title)
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + report
    else:
        end = text.find("\n## ", start + len(title))
        text = text[:start] + report + ("" if end == -1 else text[end:])
    RESULTS.write_text(text.rstrip("\n") + "\n")


def publish(title: str, lines: list[str], write: bool) -> None:
    """Print a benchmark's section and, with --write, record it in RESULTS.md."""
    report = "\n".join(lines)
    print(report)
    if write:
        write_section(title, report)
