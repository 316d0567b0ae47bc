"""``gpubox check``: which release, the verdict, what would work, as the ``check --json`` document and as
lines for people."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from gpubox.remote.gpu.frameworks import FrameworkChoice, FrameworkView, choose_framework
from gpubox.remote.gpu.rules import CompatRules, FrameworkRelease, load_rules
from gpubox.remote.gpu.snapshot import NA, SmiSnapshot
from gpubox.remote.gpu.summary import MARKS, gpu_line_text
from gpubox.remote.gpu.verdict import Verdict, assess, suggest, verdict_summary, with_framework_view

__all__ = ["CheckResult", "check_document", "render_check", "run_check"]


def _json_value(value: Any) -> Any:
    return None if value is NA else value


def check_document(
    snapshot: SmiSnapshot,
    choice: FrameworkChoice,
    verdict: Verdict,
    *,
    host: str | None,
    framework_view: FrameworkView | None = None,
) -> dict[str, Any]:
    """The ``check --json`` document of design.md; fields after ``reasons`` are gpubox's additions."""
    release = choice.release
    document: dict[str, Any] = {
        "host": host,
        "driver_version": _json_value(snapshot.driver_version),
        "cuda_driver_max": _json_value(snapshot.cuda_driver_max),
        "gpus": [
            {
                "index": gpu.index,
                "name": gpu.name,
                "compute_capability": _json_value(gpu.compute_capability),
                "memory_total_mib": _json_value(gpu.memory_total_mib),
                "compute_capability_source": gpu.compute_capability_source,
            }
            for gpu in snapshot.gpus
        ],
        "framework": {
            "name": release.name,
            "version": release.version,
            "cuda": release.cuda,
            "cudnn": release.cudnn,
            "chosen_by": choice.chosen_by,
        },
        "verdict": verdict.level,
        "reasons": list(verdict.reasons),
        "suggestion": None
        if verdict.suggestion is None
        else {
            "text": verdict.suggestion.text,
            "options": [
                {
                    "framework": {"name": option.release.name, "version": option.release.version},
                    "driver_at_least": option.driver,
                    "verdict": option.level,
                }
                for option in verdict.suggestion.options
            ],
        },
        "nvidia_smi": {
            "format": snapshot.format,
            "state": snapshot.state,
            "version": _json_value(snapshot.smi_version),
            "cuda_driver_max_source": _json_value(snapshot.cuda_driver_max_source),
        },
    }
    if framework_view is not None:
        document["framework_sees"] = framework_view.document()
    return document


@dataclass(frozen=True)
class CheckResult:
    snapshot: SmiSnapshot
    choice: FrameworkChoice
    verdict: Verdict
    document: dict[str, Any]


def run_check(
    snapshot: SmiSnapshot,
    *,
    host: str | None,
    requested: FrameworkRelease | None = None,
    framework_view: FrameworkView | None = None,
    requirements: tuple[str, str] | None = None,
    rules: CompatRules | None = None,
) -> CheckResult:
    """Everything ``gpubox check`` decides, from a snapshot: which release, the verdict, what would work."""
    rules = rules or load_rules()
    choice = choose_framework(requested, framework_view, requirements, rules)
    by_rules = assess(snapshot, choice.release, rules)
    # Suggestions come from the rules: when TensorFlow itself sees no GPU the cause is on the host (a
    # CPU-only build, a missing library), not something a different release or driver is known to fix.
    verdict = replace(by_rules, suggestion=suggest(snapshot, choice.release, by_rules, rules))
    if snapshot.state == "gpus":
        # Without a GPU the verdict is already fail; what TensorFlow sees stays in the document only.
        verdict = with_framework_view(verdict, choice.release, framework_view)
    document = check_document(snapshot, choice, verdict, host=host, framework_view=framework_view)
    return CheckResult(snapshot, choice, verdict, document)


def render_check(result: CheckResult) -> list[str]:
    """``gpubox check`` for people: the GPU line, the verdict line, then the reasons and what would work."""
    snapshot, verdict, release = result.snapshot, result.verdict, result.choice.release
    usable = snapshot.state == "gpus" and any(gpu.usable for gpu in snapshot.gpus)
    gpu_mark = "·" if snapshot.state == "no_nvidia_smi" else "✓" if usable else "✗"
    lines = [
        f"  {gpu_mark} GPU    {gpu_line_text(snapshot)}",
        f"  {MARKS[verdict.level]} {verdict_summary(snapshot, release, verdict)}  ({result.choice.chosen_by})",
    ]
    # Without GPUs the GPU line already says why, and what to do.
    said = gpu_line_text(snapshot)
    lines.extend(f"      · {reason}" for reason in verdict.reasons if reason != said)
    if verdict.suggestion is not None:
        lines.extend(f"      → {option.text}" for option in verdict.suggestion.options)
    return lines
