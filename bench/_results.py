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


def compile_gpubox() -> None:
    """Write gpubox's bytecode once, as installing it would (pip compiles at install time).

    From a checkout under PYTHONDONTWRITEBYTECODE=1 (set on some development machines) every command would
    otherwise compile all of gpubox's sources again, ~0.6 s of each one-shot command on a 2-core machine: a
    cost no installed user pays.
    """
    import compileall

    import gpubox

    compileall.compile_dir(str(Path(gpubox.__file__).parent), quiet=1)
