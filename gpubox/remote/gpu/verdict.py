"""The verdict of design.md ("check --json") for one framework release on one host: ``fail`` when the
framework cannot use any GPU, ``warn`` when it can at a cost, ``ok`` otherwise, with the reasons; and what
would work.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, cast

from gpubox.remote.gpu.frameworks import FrameworkView
from gpubox.remote.gpu.health import gpu_findings, no_gpu_reason, windows_failure
from gpubox.remote.gpu.rules import CompatRules, FrameworkRelease, load_rules, version_numbers
from gpubox.remote.gpu.snapshot import NA, GpuSnapshot, SmiSnapshot

__all__ = [
    "Level",
    "Option",
    "Suggestion",
    "Verdict",
    "assess",
    "gpu_groups",
    "no_gpu_reason",
    "suggest",
    "verdict_summary",
    "with_framework_view",
]

Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Option:
    """One way to a working GPU: a framework release, with the oldest driver it needs if this one is too old."""

    release: FrameworkRelease
    driver: str | None
    level: Level

    @property
    def text(self) -> str:
        verdict = "" if self.level == "ok" else " (with warnings)"
        if self.driver is None:
            return f"{self.release.label} works with this driver{verdict}"
        return f"{self.release.label} works with a driver ≥ {self.driver}{verdict}"


@dataclass(frozen=True)
class Suggestion:
    options: tuple[Option, ...]

    @property
    def text(self) -> str:
        return "; or ".join(option.text for option in self.options)


@dataclass(frozen=True)
class Verdict:
    level: Level
    reasons: tuple[str, ...]
    suggestion: Suggestion | None = None


@dataclass(frozen=True)
class _KernelFit:
    kind: Literal["native", "ptx", "none", "unknown"]
    why: str


@dataclass(frozen=True)
class _DriverFit:
    kind: Literal["native", "mvc", "too_old", "unknown"]
    needed: str | None
    why: str


def _cc_text(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


def _driver_fit(snapshot: SmiSnapshot, release: FrameworkRelease, rules: CompatRules) -> _DriverFit:
    """Whether the driver runs the release's CUDA: natively (nvidia-smi's own "CUDA Version" when it printed
    one, else the toolkit table), through minor-version compatibility, or not at all."""
    cuda = version_numbers(release.cuda)
    floor = rules.mvc_floor.get(cuda[0])
    native = rules.toolkit_driver(release.cuda)
    needed = floor or native
    reported = snapshot.cuda_driver_max if snapshot.cuda_driver_max_source == "nvidia-smi" else NA
    driver = snapshot.driver_version
    supports = f" (CUDA ≤ {snapshot.cuda_driver_max})" if snapshot.cuda_driver_max else ""
    uses = f"{release.label} uses CUDA {release.cuda}"
    if driver:
        if (reported and version_numbers(reported) >= cuda) or (
            not reported and native and version_numbers(driver) >= version_numbers(native)
        ):
            return _DriverFit(
                "native", needed, f"driver {driver}{supports} runs CUDA {release.cuda} natively"
            )
        if floor and version_numbers(driver) >= version_numbers(floor):
            return _DriverFit(
                "mvc",
                needed,
                f"driver {driver}{supports}: {uses} through minor-version compatibility "
                f"(CUDA {cuda[0]}.x runs on drivers ≥ {floor})",
            )
        return _DriverFit(
            "too_old",
            needed,
            f"driver {driver}{supports} is too old: {uses}, which needs a driver ≥ {needed}",
        )
    if snapshot.cuda_driver_max:
        top = version_numbers(snapshot.cuda_driver_max)
        if top >= cuda:
            return _DriverFit("native", needed, f"the driver supports CUDA ≤ {snapshot.cuda_driver_max}")
        if top[0] == cuda[0]:
            return _DriverFit(
                "mvc",
                needed,
                f"the driver supports CUDA ≤ {snapshot.cuda_driver_max}: {uses} through minor-version compatibility",
            )
        return _DriverFit(
            "too_old",
            needed,
            f"the driver supports only CUDA ≤ {snapshot.cuda_driver_max}: {uses}, which needs a driver ≥ {needed}",
        )
    return _DriverFit(
        "unknown",
        needed,
        f"nvidia-smi gave no driver version: cannot check it against {uses} (needs ≥ {needed})",
    )


def _kernel_fit(gpu: GpuSnapshot, release: FrameworkRelease, snapshot: SmiSnapshot) -> _KernelFit:
    if not gpu.compute_capability:
        return _KernelFit(
            "unknown",
            f"cannot tell the compute capability of {gpu.name} ({gpu.compute_capability_source}), so not whether "
            f"{release.label} has kernels for it",
        )
    cc = cast(tuple[int, int], version_numbers(gpu.compute_capability)[:2])
    # Machine code for X.y runs on X.z with z >= y; PTX is compiled forward by the driver for any newer GPU.
    sass = [arch for arch in release.archs if arch.cc[0] == cc[0] and arch.cc[1] <= cc[1]]
    if sass:
        best = max(sass, key=lambda arch: arch.cc)
        return _KernelFit("native", f"runs {release.label}'s {best.sass_label} kernels")
    ptx = [arch for arch in release.archs if arch.ptx and arch.cc <= cc]
    if not ptx:
        if cc < release.minimum_cc:
            missing = f"below {release.label}'s minimum compute capability {_cc_text(release.minimum_cc)}"
        else:
            missing = f"no kernels for it in {release.label}"
        return _KernelFit("none", f"{missing} (its wheels carry {release.arch_list})")
    source = max(ptx, key=lambda arch: arch.cc)
    can_jit = snapshot.cuda_driver_max
    if can_jit and version_numbers(can_jit) < version_numbers(release.cuda):
        return _KernelFit(
            "none",
            f"no {_cc_label(cc)} kernels in {release.label}; only PTX JIT of {source.label} would run, and that "
            f"needs a driver for CUDA ≥ {release.cuda} (this one supports ≤ {can_jit})",
        )
    return _KernelFit(
        "ptx",
        f"no {_cc_label(cc)} kernels in {release.label}: runs only through PTX JIT of {source.label} "
        "(the driver compiles every kernel on first use: slow start, possibly slower kernels)",
    )


def _cc_label(cc: tuple[int, int]) -> str:
    return f"sm_{cc[0]}{cc[1]}"


def gpu_groups(gpus: Iterable[GpuSnapshot]) -> list[tuple[GpuSnapshot, list[int]]]:
    """GPUs of one name and compute capability together, in index order: reasons say "8× …" once."""
    found: dict[tuple[str, str], tuple[GpuSnapshot, list[int]]] = {}
    for gpu in gpus:
        found.setdefault((gpu.name, str(gpu.compute_capability)), (gpu, []))[1].append(gpu.index)
    return list(found.values())


def _gpu_words(gpu: GpuSnapshot, indexes: Sequence[int]) -> str:
    cc = f"cc {gpu.compute_capability}" if gpu.compute_capability else "cc unknown"
    which = f"GPU {indexes[0]}" if len(indexes) == 1 else f"GPUs {', '.join(map(str, indexes))}"
    return f"{which} {gpu.name} ({cc})" if len(indexes) <= 2 else f"{len(indexes)}× {gpu.name} ({cc})"


def assess(
    snapshot: SmiSnapshot,
    release: FrameworkRelease,
    rules: CompatRules | None = None,
    *,
    look_ahead: bool = True,
    unknown_driver_note: str | None = None,
) -> Verdict:
    """The verdict of design.md for *release* on the host *snapshot* describes (without suggestion).

    ``look_ahead`` adds the warning that the next release drops a GPU; suggestions turn it off, since the
    newest release that still runs a GPU is no worse for being the last one. ``unknown_driver_note`` judges a
    machine whose driver nobody can know yet (a cloud offer) on its GPUs alone, with that note as the reason.
    """
    rules = rules or load_rules()
    if snapshot.state != "gpus":
        return Verdict("fail", (no_gpu_reason(snapshot),))
    findings = gpu_findings(snapshot)
    healthy = [gpu for gpu in snapshot.gpus if gpu.usable]
    if not healthy:
        return Verdict("fail", findings.lines)
    failures: list[str] = []
    warnings: list[str] = list(findings.lines)
    notes: list[str] = []
    windows = windows_failure(snapshot, release, rules)
    if windows is not None:
        failures.append(windows)

    driver = _driver_fit(snapshot, release, rules)
    if driver.kind == "too_old":
        failures.append(driver.why)
    elif driver.kind == "unknown":
        if unknown_driver_note is None:
            warnings.append(driver.why)
        else:
            notes.append(
                f"{unknown_driver_note} (needs ≥ {driver.needed})" if driver.needed else unknown_driver_note
            )
    else:
        notes.append(driver.why)

    fits = {gpu.index: _kernel_fit(gpu, release, snapshot) for gpu in healthy}
    usable = [gpu for gpu in healthy if fits[gpu.index].kind != "none"]
    models = gpu_groups(healthy)
    for gpu, indexes in models:
        fit = fits[gpu.index]
        words = f"{_gpu_words(gpu, indexes)}: {fit.why}"
        if fit.kind == "none":
            (warnings if usable else failures).append(
                words + (f"; {release.display_name} will not use it" if usable else "")
            )
        elif fit.kind in ("ptx", "unknown"):
            warnings.append(words)
        else:
            notes.append(words)
    if len({gpu.name for gpu, _ in models}) > 1:
        counts = ", ".join(f"{len(indexes)}× {gpu.name}" for gpu, indexes in models)
        warnings.append(f"mixed GPUs ({counts}): training across them runs at the pace of the slowest")
    if look_ahead and not failures:
        warnings.extend(_dropped_next(healthy, release, rules, fits, snapshot))
    notes.extend(_snapshot_notes(snapshot))
    if release.confidence == "U":
        notes.append(f"{release.label}'s data is unconfirmed: {release.note}")
    level: Level = "fail" if failures else "warn" if warnings else "ok"
    return Verdict(level, tuple(failures + warnings + notes))


def _dropped_next(
    gpus: Sequence[GpuSnapshot],
    release: FrameworkRelease,
    rules: CompatRules,
    fits: Mapping[int, _KernelFit],
    snapshot: SmiSnapshot,
) -> list[str]:
    following = rules.next_release(release)
    if following is None:
        return []
    dropped = []
    for gpu, indexes in gpu_groups(gpus):
        if fits[gpu.index].kind in ("native", "ptx") and _kernel_fit(gpu, following, snapshot).kind == "none":
            dropped.append(
                f"{following.label} drops {_gpu_words(gpu, indexes)}: {release.label} is the last release "
                "gpubox knows that runs it"
            )
    return dropped


def _snapshot_notes(snapshot: SmiSnapshot) -> list[str]:
    notes = []
    if snapshot.smi_version and snapshot.driver_version and snapshot.smi_version != snapshot.driver_version:
        notes.append(
            f"nvidia-smi {snapshot.smi_version} differs from driver {snapshot.driver_version} (a container or "
            "WSL): gpubox goes by the driver"
        )
    if isinstance(snapshot.attached_gpus, int) and snapshot.attached_gpus != len(snapshot.gpus):
        notes.append(
            f"nvidia-smi counts {snapshot.attached_gpus} attached GPUs but describes {len(snapshot.gpus)}: "
            "the verdict covers the ones described"
        )
    return notes


def suggest(
    snapshot: SmiSnapshot, release: FrameworkRelease, verdict: Verdict, rules: CompatRules | None = None
) -> Suggestion | None:
    """What would work, for a ``fail`` or ``warn``: the requested release with a newer driver, the newest
    release that works with this driver, or failing both the newest release that works with some driver."""
    rules = rules or load_rules()
    if verdict.level == "ok" or snapshot.state != "gpus":
        return None
    # A warning is only worth trading for a clean verdict; a failure for anything that uses a GPU.
    acceptable: tuple[Level, ...] = ("ok",) if verdict.level == "warn" else ("ok", "warn")
    newest_first = list(reversed(rules.releases_of(release.name)))
    options: list[Option] = []
    if verdict.level == "fail":
        with_driver = _with_newer_driver(snapshot, release, rules)
        if with_driver is not None:
            options.append(Option(release, *with_driver))
    levels = {r.version: assess(snapshot, r, rules, look_ahead=False).level for r in newest_first}
    for wanted in acceptable:
        found = next((r for r in newest_first if levels[r.version] == wanted), None)
        if found is not None:
            if found.version != release.version:
                options.append(Option(found, None, wanted))
            break
    if not options and verdict.level == "fail":
        for candidate in newest_first:
            upgrade = _with_newer_driver(snapshot, candidate, rules)
            if upgrade is not None:
                options.append(Option(candidate, *upgrade))
                break
    return Suggestion(tuple(options)) if options else None


def _with_newer_driver(
    snapshot: SmiSnapshot, release: FrameworkRelease, rules: CompatRules
) -> tuple[str, Level] | None:
    """The oldest driver named in the rules that lets *release* use a GPU here, with the verdict it gets."""
    current = version_numbers(snapshot.driver_version) if snapshot.driver_version else ()
    candidates = sorted(
        {*(driver for _, driver in rules.toolkits), *rules.mvc_floor.values()}, key=version_numbers
    )
    for driver in candidates:
        if version_numbers(driver) <= current:
            continue
        upgraded = replace(
            snapshot,
            driver_version=driver,
            cuda_driver_max=rules.cuda_for_driver(driver) or NA,
            cuda_driver_max_source="driver table",
        )
        level = assess(upgraded, release, rules, look_ahead=False).level
        if level != "fail":
            return driver, level
    return None


def with_framework_view(verdict: Verdict, release: FrameworkRelease, view: FrameworkView | None) -> Verdict:
    """TensorFlow's own answer, when it is installed at the version checked, is the final word."""
    if view is None or release.name != "tensorflow":
        return verdict
    if not view.installed or not view.version:
        why = view.reason or "not installed"
        return replace(
            verdict,
            reasons=(
                *verdict.reasons,
                f"TensorFlow in {view.where}: {why}; the verdict rests on gpubox's rules",
            ),
        )
    if version_numbers(view.version)[:2] != version_numbers(release.version)[:2]:
        return replace(
            verdict,
            reasons=(
                *verdict.reasons,
                f"TensorFlow {view.version} is installed in {view.where} (the check is for {release.version})",
            ),
        )
    seen = view.gpus or ()
    if not seen:
        build = "; it is a CPU-only build" if view.built_with_cuda is False else ""
        return Verdict(
            "fail",
            (f"TensorFlow {view.version} in {view.where} sees no GPU{build}", *verdict.reasons),
            verdict.suggestion,
        )
    saw = f"TensorFlow {view.version} in {view.where} sees {len(seen)} GPU{'s' if len(seen) != 1 else ''}"
    if verdict.level == "fail":
        return Verdict(
            "warn", (f"{saw}: it has the last word over gpubox's rules", *verdict.reasons), verdict.suggestion
        )
    return replace(verdict, reasons=(f"{saw}", *verdict.reasons))


_SUMMARY = {"ok": "compatible", "warn": "usable, with warnings", "fail": "cannot use the GPU"}


def verdict_summary(snapshot: SmiSnapshot, release: FrameworkRelease, verdict: Verdict) -> str:
    """``TensorFlow 2.21 (CUDA 12.5 via minor-version compatibility): compatible``."""
    how = ""
    if snapshot.state == "gpus":
        driver = _driver_fit(snapshot, release, load_rules())
        how = {
            "native": f" (CUDA {release.cuda})",
            "mvc": f" (CUDA {release.cuda} via minor-version compatibility)",
            "too_old": f" (CUDA {release.cuda} needs driver ≥ {driver.needed})",
            "unknown": f" (CUDA {release.cuda})",
        }[driver.kind]
    return f"{release.label}{how}: {_SUMMARY[verdict.level]}"
