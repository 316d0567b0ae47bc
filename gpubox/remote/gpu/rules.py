"""The compatibility rules: what ``gpubox/data/gpu_compat.toml`` says, read once.

CUDA toolkits and the drivers they need, per framework release (a :class:`FrameworkRelease` row) its CUDA and
the architectures in its wheels, the last releases that use a GPU on native Windows, and a GPU name → compute
capability table. Every row there names its source;
no fact lives in this code.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping

from gpubox import data as data_files
from gpubox.record import record
from gpubox.remote.gpu.snapshot import NA, NaType

__all__ = ["Arch", "CompatRules", "FrameworkRelease", "Version", "load_rules", "version_numbers"]


Version = tuple[int, ...]


def version_numbers(text: str) -> Version:
    """``"550.54.14"`` → ``(550, 54, 14)``: versions compare as tuples."""
    return tuple(int(part) for part in re.findall(r"\d+", text))


@record
class Arch:
    """One entry of a wheel's architecture list: SASS for ``cc``, plus PTX when ``ptx``."""

    cc: tuple[int, int]
    ptx: bool

    @property
    def label(self) -> str:
        return f"{'compute' if self.ptx else 'sm'}_{self.cc[0]}{self.cc[1]}"

    @property
    def sass_label(self) -> str:
        return f"sm_{self.cc[0]}{self.cc[1]}"


_DISPLAY_NAMES = {"tensorflow": "TensorFlow", "torch": "PyTorch"}


@record
class FrameworkRelease:
    name: str
    version: str
    cuda: str
    cudnn: str
    archs: tuple[Arch, ...]
    confidence: str
    note: str
    source: str

    @property
    def display_name(self) -> str:
        return _DISPLAY_NAMES.get(self.name, self.name)

    @property
    def label(self) -> str:
        return f"{self.display_name} {self.version}"

    @property
    def minimum_cc(self) -> tuple[int, int]:
        return min(arch.cc for arch in self.archs)

    @property
    def arch_list(self) -> str:
        return ", ".join(arch.label for arch in self.archs)


@record
class CompatRules:
    mvc_floor: Mapping[int, str]
    toolkits: tuple[tuple[str, str], ...]
    """(CUDA version, driver of its first runfile), oldest first."""
    releases: tuple[FrameworkRelease, ...]
    capability_rows: tuple[tuple[str, str], ...]
    """(compute capability, model) with the model normalised by :func:`_model_key`."""
    windows_last_gpu_release: Mapping[str, str]
    """Per framework, its last release whose native Windows wheels use the GPU (none listed: all do)."""

    def releases_of(self, name: str) -> list[FrameworkRelease]:
        return sorted((r for r in self.releases if r.name == name), key=lambda r: version_numbers(r.version))

    def release(self, name: str, version: str) -> FrameworkRelease | None:
        wanted = version_numbers(version)[:2]
        return next(
            (r for r in self.releases if r.name == name and version_numbers(r.version) == wanted), None
        )

    def newest(self, name: str = "tensorflow") -> FrameworkRelease:
        return self.releases_of(name)[-1]

    def next_release(self, release: FrameworkRelease) -> FrameworkRelease | None:
        later = [
            r
            for r in self.releases_of(release.name)
            if version_numbers(r.version) > version_numbers(release.version)
        ]
        return later[0] if later else None

    def toolkit_driver(self, cuda: str) -> str | None:
        wanted = version_numbers(cuda)[:2]
        return next((driver for version, driver in self.toolkits if version_numbers(version) == wanted), None)

    def cuda_for_driver(self, driver: str) -> str | None:
        """The newest CUDA whose first runfile's driver is not newer than *driver*."""
        fitting = [
            version for version, needed in self.toolkits if version_numbers(needed) <= version_numbers(driver)
        ]
        return fitting[-1] if fitting else None

    def capability(self, name: str) -> tuple[str | NaType, str]:
        """Compute capability for a GPU name from the table, with how it was found (or why not)."""
        truncated = name.endswith("...")
        key = _model_key(name[:-3] if truncated else name, keep_trailing_space=truncated)
        if not truncated:
            matches = [(model, cc) for cc, model in self.capability_rows if _same_family(model, key)]
            if not matches:
                return NA, "unknown (not in gpubox's name table)"
            return max(matches, key=lambda match: len(match[0]))[1], "name table"
        # The full name starts with what is left; models that extend it are the likely ones.
        extending = {cc for cc, model in self.capability_rows if model.startswith(key)}
        if not extending:
            families = [(model, cc) for cc, model in self.capability_rows if _same_family(model, key)]
            extending = {max(families, key=lambda match: len(match[0]))[1]} if families else set()
        if len(extending) == 1:
            return extending.pop(), "name table (truncated name)"
        if not extending:
            return NA, "unknown (truncated name not in gpubox's name table)"
        return NA, "unknown (truncated name fits models of different compute capabilities)"


_VENDOR_PREFIXES = ("nvidia ", "tesla ", "geforce ")


def _model_key(name: str, *, keep_trailing_space: bool = False) -> str:
    """Case-folded, single-spaced, without the vendor words that drivers add or drop over the years."""
    key = " ".join(name.split()).casefold()
    if keep_trailing_space and name.endswith(" "):
        key += " "
    stripped = True
    while stripped:
        stripped = False
        for prefix in _VENDOR_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _same_family(model: str, name: str) -> bool:
    """``a100`` names ``a100-sxm4-80gb`` and ``a100 80gb pcie`` but not ``a1000``."""
    return name == model or (name.startswith(model) and name[len(model)] in " -")


def _parse_arch(label: str) -> Arch:
    found = re.fullmatch(r"(sm|compute)_(\d+)(\d)", label)
    if not found:
        raise ValueError(f"gpu_compat.toml: bad architecture {label!r} (expected sm_XY or compute_XY)")
    return Arch((int(found.group(2)), int(found.group(3))), found.group(1) == "compute")


@functools.cache
def load_rules() -> CompatRules:
    data = tomllib.loads(data_files.read_text("gpu_compat.toml"))
    for table in ("cuda_major", "cuda_toolkit", "framework", "gpu", "windows"):
        for position, row in enumerate(data.get(table, []), 1):
            if not isinstance(row, dict) or not str(row.get("source", "")).strip():
                raise ValueError(f"gpu_compat.toml: [[{table}]] row {position} has no source")
    releases = tuple(
        FrameworkRelease(
            name=row["name"],
            version=row["version"],
            cuda=row["cuda"],
            cudnn=row["cudnn"],
            archs=tuple(_parse_arch(label) for label in row["archs"]),
            confidence=row["confidence"],
            note=row.get("note", ""),
            source=row["source"],
        )
        for row in data["framework"]
    )
    return CompatRules(
        mvc_floor={row["major"]: row["mvc_min_driver"] for row in data["cuda_major"]},
        toolkits=tuple(
            sorted(
                ((row["version"], row["driver"]) for row in data["cuda_toolkit"]),
                key=lambda r: version_numbers(r[0]),
            )
        ),
        releases=releases,
        capability_rows=tuple(
            (row["cc"], _model_key(model)) for row in data["gpu"] for model in row["models"]
        ),
        windows_last_gpu_release={
            row["framework"]: row["last_gpu_release"] for row in data.get("windows", [])
        },
    )
