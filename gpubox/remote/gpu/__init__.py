"""What ``nvidia-smi`` says about a host's GPUs, and whether a framework release can use them. No I/O.

One module per concern; this file is the package's public surface (the rest of gpubox imports from here):

- :mod:`~gpubox.remote.gpu.snapshot`: the frozen facts (:class:`GpuSnapshot`, :class:`SmiSnapshot`); a metric
  nvidia-smi did not give is :data:`NA`, never an exception.
- :mod:`~gpubox.remote.gpu.formats`: one module per form nvidia-smi prints, and the order they are tried in
  (**to read a new form, add a module there**).
- :mod:`~gpubox.remote.gpu.parse`: :func:`parse_nvidia_smi` (any form, never raises on odd input),
  :func:`probe_snapshot` (a whole ``probe`` answer: the table with the host's own compute capabilities),
  :func:`snapshot_from_probe` (one nvidia-smi answer), :func:`offer_snapshot` (a cloud offer).
- :mod:`~gpubox.remote.gpu.readings`: :func:`gpu_readings`, the GPUs' load right now (idle autostop, the
  dashboard), with the one definition of "no GPU".
- :mod:`~gpubox.remote.gpu.rules`: ``gpubox/data/gpu_compat.toml`` (CUDA, drivers, releases, compute
  capabilities), read by :func:`load_rules`.
- :mod:`~gpubox.remote.gpu.frameworks`: which release is judged, by one rule (``--framework``, what the
  project's env has installed, a requirements pin, the newest), and what it says it sees.
- :mod:`~gpubox.remote.gpu.health`: the GPUs' own state (a broken driver stack, faults, ECC, unified memory,
  MIG, native Windows), each with what it means and what to do.
- :mod:`~gpubox.remote.gpu.verdict`: :func:`assess` (ok / warn / fail with reasons) and :func:`suggest`.
- :mod:`~gpubox.remote.gpu.summary`: :func:`summarize`, the one GPU summary (host report, ``hosts``, the
  dashboard), for a framework release the caller chooses and the summary names.
- :mod:`~gpubox.remote.gpu.check`: ``gpubox check`` (:func:`run_check`, the ``--json`` document, the lines).
"""

from typing import TYPE_CHECKING

from gpubox.lazy import lazy_exports

# Each name loads its module on first use (gpubox/lazy.py): pricing a host reads nvidia-smi's answer without
# loading the rules, the verdicts and `gpubox check`.
if TYPE_CHECKING:
    from gpubox.remote.gpu.check import CheckResult, check_document, render_check, run_check
    from gpubox.remote.gpu.frameworks import (
        NEWEST,
        FrameworkChoice,
        FrameworkView,
        choose_framework,
        framework_from_requirements,
        parse_framework_spec,
    )
    from gpubox.remote.gpu.parse import offer_snapshot, parse_nvidia_smi, probe_snapshot, snapshot_from_probe
    from gpubox.remote.gpu.readings import GpuReading, GpuReadings, gpu_readings
    from gpubox.remote.gpu.rules import Arch, CompatRules, FrameworkRelease, load_rules
    from gpubox.remote.gpu.snapshot import NA, GpuSnapshot, NaType, SmiSnapshot
    from gpubox.remote.gpu.summary import MARKS, GpuSummary, describe_gpus, gpu_line_text, summarize
    from gpubox.remote.gpu.verdict import (
        Option,
        Suggestion,
        Verdict,
        assess,
        suggest,
        verdict_summary,
        with_framework_view,
    )

_WHERE = {
    "Arch": "rules",
    "CheckResult": "check",
    "CompatRules": "rules",
    "FrameworkChoice": "frameworks",
    "FrameworkRelease": "rules",
    "FrameworkView": "frameworks",
    "GpuReading": "readings",
    "GpuReadings": "readings",
    "GpuSnapshot": "snapshot",
    "GpuSummary": "summary",
    "MARKS": "summary",
    "NA": "snapshot",
    "NEWEST": "frameworks",
    "NaType": "snapshot",
    "Option": "verdict",
    "SmiSnapshot": "snapshot",
    "Suggestion": "verdict",
    "Verdict": "verdict",
    "assess": "verdict",
    "check_document": "check",
    "choose_framework": "frameworks",
    "describe_gpus": "summary",
    "framework_from_requirements": "frameworks",
    "gpu_line_text": "summary",
    "gpu_readings": "readings",
    "load_rules": "rules",
    "offer_snapshot": "parse",
    "parse_framework_spec": "frameworks",
    "parse_nvidia_smi": "parse",
    "probe_snapshot": "parse",
    "render_check": "check",
    "run_check": "check",
    "snapshot_from_probe": "parse",
    "suggest": "verdict",
    "summarize": "summary",
    "verdict_summary": "verdict",
    "with_framework_view": "verdict",
}

__getattr__ = lazy_exports(__name__, _WHERE)

__all__ = [
    "MARKS",
    "NA",
    "NEWEST",
    "Arch",
    "CheckResult",
    "CompatRules",
    "FrameworkChoice",
    "FrameworkRelease",
    "FrameworkView",
    "GpuReading",
    "GpuReadings",
    "GpuSnapshot",
    "GpuSummary",
    "NaType",
    "Option",
    "SmiSnapshot",
    "Suggestion",
    "Verdict",
    "assess",
    "check_document",
    "choose_framework",
    "describe_gpus",
    "framework_from_requirements",
    "gpu_line_text",
    "gpu_readings",
    "load_rules",
    "offer_snapshot",
    "parse_framework_spec",
    "parse_nvidia_smi",
    "probe_snapshot",
    "render_check",
    "run_check",
    "snapshot_from_probe",
    "suggest",
    "summarize",
    "verdict_summary",
    "with_framework_view",
]
