"""What ``nvidia-smi`` says about a host's GPUs, and whether a framework release can use them.

Three parts:

- **Snapshots.** :func:`parse_nvidia_smi` reads any form ``nvidia-smi`` prints (the default table in its old
  narrow and new wide layouts, ``nvidia-smi -q -x`` XML, ``--query-gpu … --format=csv`` with or without
  header and units, and its one-line failure messages), detects which it was given, and returns a frozen
  :class:`SmiSnapshot`. Like nvitop, a metric that is missing is :data:`NA` rather than an exception: the
  parser never raises on odd input, it says what it could not read.
- **Rules.** :func:`load_rules` reads ``gpubox/data/gpu_compat.toml``: CUDA toolkits and the drivers they
  need, per framework release its CUDA and the architectures in its wheels, and a GPU name → compute
  capability table. Every row there names its source; no fact lives in this code.
- **Verdict.** :func:`assess` applies the rules of design.md ("check --json"): ``fail`` when the framework
  cannot use any GPU, ``warn`` when it can at a cost, ``ok`` otherwise, with reasons, and
  :func:`check_document` writes the ``check --json`` document.
"""

from __future__ import annotations

import csv
import functools
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib.resources import files
from typing import Any, Literal, cast

from gpubox.errors import BadInput, UsageError

__all__ = [
    "NA",
    "Arch",
    "CheckResult",
    "CompatRules",
    "FrameworkChoice",
    "FrameworkRelease",
    "FrameworkView",
    "GpuSnapshot",
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
    "load_rules",
    "offer_snapshot",
    "parse_framework_spec",
    "parse_nvidia_smi",
    "render_check",
    "run_check",
    "snapshot_from_probe",
    "suggest",
    "verdict_summary",
    "with_framework_view",
]


class NaType(str):
    """A metric nvidia-smi did not give: prints as ``N/A`` and is falsy (nvitop's convention)."""

    _instance: NaType | None = None

    def __new__(cls) -> NaType:
        if cls._instance is None:
            cls._instance = super().__new__(cls, "N/A")
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NA"


NA = NaType()

Level = Literal["ok", "warn", "fail"]
SmiFormat = Literal["table", "xml", "csv", "message", "none"]
SmiState = Literal[
    "gpus",  # nvidia-smi listed GPUs
    "no_nvidia_smi",  # not installed: a CPU-only host
    "no_devices",  # "No devices were found"
    "driver_unreachable",  # "couldn't communicate with the NVIDIA driver"
    "query_rejected",  # an old nvidia-smi refused a --query-gpu field
    "failed",  # nvidia-smi ran but failed in a way gpubox does not know
    "unrecognized",  # text that is none of the forms above
]
Version = tuple[int, ...]


def _version(text: str) -> Version:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def _json_value(value: Any) -> Any:
    return None if value is NA else value


# ============================================================================================== snapshots


@dataclass(frozen=True)
class GpuSnapshot:
    index: int
    name: str
    """As nvidia-smi printed it; the default table cuts long names to ``…...``."""
    memory_total_mib: int | NaType = NA
    memory_used_mib: int | NaType = NA
    utilization_gpu_percent: int | NaType = NA
    bus_id: str | NaType = NA
    uuid: str | NaType = NA
    architecture: str | NaType = NA
    mig_mode: str | NaType = NA
    mig_devices: int = 0
    compute_capability: str | NaType = NA
    compute_capability_source: str = "unknown"
    """``nvidia-smi`` (its compute_cap field), ``name table``, ``name table (truncated name)`` or why unknown."""

    @property
    def name_truncated(self) -> bool:
        return self.name.endswith("...")


@dataclass(frozen=True)
class SmiSnapshot:
    format: SmiFormat
    state: SmiState
    gpus: tuple[GpuSnapshot, ...] = ()
    driver_version: str | NaType = NA
    """From ``Driver Version:`` (or ``KMD Version:``), never from the ``NVIDIA-SMI`` banner: in a container or
    WSL the nvidia-smi binary can be older or newer than the driver that actually runs."""
    cuda_driver_max: str | NaType = NA
    """The highest CUDA the driver supports (not an installed toolkit)."""
    cuda_driver_max_source: str | NaType = NA
    """``nvidia-smi`` when printed, ``driver table`` when gpubox derived it from the driver version."""
    smi_version: str | NaType = NA
    attached_gpus: int | NaType = NA
    message: str = ""
    """What nvidia-smi (or the probe) said when there is no GPU list, or what could not be read."""


_NA_WORDS = frozenset({"n/a", "not found", "not supported", "unknown", "unknown error", ""})


def _clean(value: str | None) -> str | NaType:
    """A value or NA: ``[N/A]``, ``[Not Supported]``, ``[Requested functionality has been deprecated]``…"""
    if value is None:
        return NA
    text = value.strip()
    if (text.startswith("[") and text.endswith("]")) or text.lower() in _NA_WORDS:
        return NA
    return text


def _leading_int(value: str | None) -> int | NaType:
    """``"81559 MiB"``, ``"81559"``, ``"17 %"`` → the number; anything else → NA."""
    text = _clean(value)
    if text is NA:
        return NA
    found = re.match(r"(\d+)", text)
    return int(found.group(1)) if found else NA


def _version_text(value: str | None) -> str | NaType:
    text = _clean(value)
    return text if text and re.fullmatch(r"\d+(?:\.\d+)+", text) else NA


# --------------------------------------------------------------------------------------- format detection

# The messages are nvidia-smi's own words (reference §4.1); they arrive alone, or in the probe's output.
_STATE_MESSAGES: tuple[tuple[SmiState, re.Pattern[str]], ...] = (
    ("no_devices", re.compile(r"No devices were found", re.IGNORECASE)),
    ("driver_unreachable", re.compile(r"couldn't communicate with the NVIDIA driver", re.IGNORECASE)),
    ("query_rejected", re.compile(r"is not a valid field to query", re.IGNORECASE)),
)
_TABLE_BANNER = re.compile(r"^\s*\|\s*NVIDIA-SMI\s+\S", re.MULTILINE)


def parse_nvidia_smi(text: str) -> SmiSnapshot:
    """Read whatever nvidia-smi printed; never raises on odd input (see :attr:`SmiSnapshot.state`)."""
    cleaned = text.replace("\ufeff", "").strip()  # Windows shells save a BOM in front
    if cleaned.startswith("<"):
        snapshot = _parse_xml(cleaned)
    elif _TABLE_BANNER.search(cleaned):
        snapshot = _parse_table(cleaned)
    else:
        snapshot = _parse_message(cleaned) or _parse_csv(cleaned)
    return _complete(snapshot)


def _parse_message(text: str) -> SmiSnapshot | None:
    for state, pattern in _STATE_MESSAGES:
        if pattern.search(text):
            first = next((line.strip() for line in text.splitlines() if pattern.search(line)), text)
            return SmiSnapshot(format="message", state=state, message=first)
    return None


def snapshot_from_probe(nvidia_smi: Mapping[str, Any]) -> SmiSnapshot:
    """The snapshot behind the agent's ``probe`` answer: ``{available, output, reason, exit_code}``."""
    output = nvidia_smi.get("output") or ""
    if nvidia_smi.get("available"):
        return parse_nvidia_smi(output)
    reason = str(nvidia_smi.get("reason") or "nvidia-smi gave no answer")
    if output.strip():
        # nvidia-smi ran and failed; its words say why ("No devices were found", no driver, …).
        parsed = parse_nvidia_smi(output)
        if parsed.state not in ("gpus", "unrecognized"):
            return parsed
    if "exit_code" not in nvidia_smi and "not found" in reason:
        return SmiSnapshot(format="none", state="no_nvidia_smi", message=reason)
    return SmiSnapshot(format="none", state="failed", message=reason)


# ---------------------------------------------------------------------------------------------- the table

_SMI_VERSION = re.compile(r"NVIDIA-SMI\s+(\d+(?:\.\d+)+)")
# Drivers from R610 print "KMD Version" / "CUDA UMD Version" instead (capture 16).
_DRIVER_VERSION = re.compile(r"(?:Driver|KMD) Version:\s*(\d+(?:\.\d+)+)")
_CUDA_VERSION = re.compile(r"CUDA (?:UMD )?Version:\s*(\d+(?:\.\d+)+)")
# "   0  NVIDIA H100 80GB HBM3          On  ": index, name, then Persistence-M (Linux) or Driver-Model (Windows).
_GPU_CELL = re.compile(r"^(\d+)\s+(.+?)\s+(?:On|Off|WDDM|TCC|WDM|MCDM|N/A)$")
_BUS_ID = re.compile(r"([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f])")
_MEMORY = re.compile(r"(\d+)MiB\s*/\s*(\d+)MiB")
_PERCENT = re.compile(r"^(\d+)%")
# A MIG device row: "  0    2   0   0  " = GPU, GPU instance, compute instance, MIG device.
_MIG_CELL = re.compile(r"^(\d+)\s+(?:\d+|N/A)\s+(?:\d+|N/A)\s+\d+$")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _box_rows(lines: Sequence[str], start: int) -> list[list[str]]:
    """The rows of the box whose ``|===…`` line is at *start*, grouped between ``+---`` borders."""
    groups: list[list[str]] = []
    current: list[str] = []
    for line in lines[start + 1 :]:
        if line.startswith(("+", "|-")):
            if current:
                groups.append(current)
            current = []
            continue
        if not line.startswith("|"):
            break
        current.append(line)
    if current:
        groups.append(current)
    return groups


def _box_closed(lines: Sequence[str], start: int) -> bool:
    """Whether the box whose ``|===…`` line is at *start* ends with its ``+---`` border, i.e. was not cut off."""
    last = ""
    for line in lines[start + 1 :]:
        if not line.startswith(("|", "+")):
            break
        last = line
    return last.startswith("+")


def _first_index(lines: Sequence[str], start: int, marker: re.Pattern[str] | str) -> int | None:
    """The first line from *start* on that contains *marker* (a substring or a pattern)."""
    for position in range(start, len(lines)):
        line = lines[position]
        if (marker.search(line) is not None) if isinstance(marker, re.Pattern) else (marker in line):
            return position
    return None


def _parse_table(text: str) -> SmiSnapshot:
    lines = [line.strip() for line in text.splitlines()]
    smi = _SMI_VERSION.search(text)
    driver = _DRIVER_VERSION.search(text)
    cuda = _CUDA_VERSION.search(text)
    header = _first_index(lines, 0, "Bus-Id")
    ruler = _first_index(lines, header, re.compile(r"^\|=")) if header is not None else None
    mig_counts = _mig_device_counts(lines)
    gpus: list[GpuSnapshot] = []
    for group in _box_rows(lines, ruler) if ruler is not None else []:
        first = _cells(group[0])
        found = _GPU_CELL.match(first[0])
        if not found:
            continue
        index = int(found.group(1))
        bus = _BUS_ID.search(first[1]) if len(first) > 1 else None
        second = _cells(group[1]) if len(group) > 1 else []
        memory = _MEMORY.search(group[1]) if len(group) > 1 else None
        utilization = _PERCENT.match(second[2]) if len(second) > 2 else None
        third = _cells(group[2]) if len(group) > 2 else []
        mig = third[2] if len(third) > 2 and third[2] in ("Enabled", "Disabled") else NA
        gpus.append(
            GpuSnapshot(
                index=index,
                name=found.group(2),
                memory_total_mib=int(memory.group(2)) if memory else NA,
                memory_used_mib=int(memory.group(1)) if memory else NA,
                utilization_gpu_percent=int(utilization.group(1)) if utilization else NA,
                bus_id=bus.group(1) if bus else NA,
                mig_mode=mig,
                mig_devices=mig_counts.get(index, 0),
            )
        )
    if gpus and ruler is not None and not _box_closed(lines, ruler):
        # Reading on would report fewer GPUs than the machine has, as if that were all of them.
        return SmiSnapshot(
            format="table",
            state="unrecognized",
            message=f"the nvidia-smi table is cut off after GPU {gpus[-1].index} (truncated output)",
        )
    return SmiSnapshot(
        format="table",
        state="gpus" if gpus else "unrecognized",
        gpus=tuple(gpus),
        driver_version=driver.group(1) if driver else NA,
        cuda_driver_max=cuda.group(1) if cuda else NA,
        cuda_driver_max_source="nvidia-smi" if cuda else NA,
        smi_version=smi.group(1) if smi else NA,
        message="" if gpus else "the nvidia-smi table has no GPU row gpubox can read",
    )


def _mig_device_counts(lines: Sequence[str]) -> dict[int, int]:
    title = _first_index(lines, 0, "MIG devices:")
    ruler = _first_index(lines, title, re.compile(r"^\|=")) if title is not None else None
    counts: dict[int, int] = {}
    for group in _box_rows(lines, ruler) if ruler is not None else []:
        found = _MIG_CELL.match(_cells(group[0])[0])
        if found:
            counts[int(found.group(1))] = counts.get(int(found.group(1)), 0) + 1
    return counts


# ------------------------------------------------------------------------------------------------ the XML


def _parse_xml(text: str) -> SmiSnapshot:
    # The input comes from the host. expat does not fetch the DOCTYPE's external DTD, and Python >= 3.11 ships
    # an expat that refuses entity-expansion bombs, so the stdlib parser is safe enough for this.
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        return SmiSnapshot(format="xml", state="unrecognized", message=f"not readable as XML: {exc}")
    if root.tag != "nvidia_smi_log":
        return SmiSnapshot(
            format="xml",
            state="unrecognized",
            message=f"XML whose root is <{root.tag}>, not <nvidia_smi_log>",
        )
    gpus = []
    # The XML has no index element; nvidia-smi writes the GPUs in index order (minor_number is not the index:
    # capture 26 lists minor numbers 1, 2, 3, 0).
    for position, gpu in enumerate(root.findall("gpu")):
        gpus.append(
            GpuSnapshot(
                index=position,
                name=str(_clean(gpu.findtext("product_name")) or "unknown"),
                memory_total_mib=_leading_int(gpu.findtext("fb_memory_usage/total")),
                memory_used_mib=_leading_int(gpu.findtext("fb_memory_usage/used")),
                utilization_gpu_percent=_leading_int(gpu.findtext("utilization/gpu_util")),
                bus_id=_clean(gpu.get("id") or gpu.findtext("pci/pci_bus_id")),
                uuid=_clean(gpu.findtext("uuid")),
                architecture=_clean(gpu.findtext("product_architecture")),
                mig_mode=_clean(gpu.findtext("mig_mode/current_mig")),
                mig_devices=len(gpu.findall("mig_devices/mig_device")),
            )
        )
    cuda = _version_text(root.findtext("cuda_version"))
    return SmiSnapshot(
        format="xml",
        state="gpus" if gpus else "no_devices",
        gpus=tuple(gpus),
        driver_version=_version_text(root.findtext("driver_version")),
        cuda_driver_max=cuda,
        cuda_driver_max_source="nvidia-smi" if cuda else NA,
        attached_gpus=_leading_int(root.findtext("attached_gpus")),
        message="" if gpus else "the XML lists no <gpu>",
    )


# ------------------------------------------------------------------------------------------------ the CSV

_NOT_NVIDIA_SMI = "not an nvidia-smi table, XML (-q -x) or --query-gpu CSV output"
# A --query-gpu header cell: a field name, with "[unit]" unless nounits was asked for.
_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9_.]*)(?: \[[^\]]+\])?$")
_KNOWN_FIELDS = frozenset(
    {"index", "name", "uuid", "pci.bus_id", "driver_version", "compute_cap", "memory.total", "count"}
)
# Without a header the columns are told apart by their values. These shapes are nvidia-smi's own.
_SHAPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("uuid", re.compile(r"^GPU-[0-9a-fA-F-]+$")),
    ("pci.bus_id", re.compile(r"^[0-9A-Fa-f]{8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f]$")),
    ("driver_version", re.compile(r"^\d{3}\.\d+(?:\.\d+)?$")),
)
# Product names begin with a brand; enum values (Default, Enabled, P0…) and versions do not.
_BRANDS = re.compile(r"^(?:NVIDIA|Tesla|GeForce|Quadro|TITAN|GRID|RTX|Graphics Device)\b")


def _parse_csv(text: str) -> SmiSnapshot:
    rows = [
        [cell.strip() for cell in row]
        for row in csv.reader((line for line in text.splitlines() if line.strip()), skipinitialspace=True)
    ]
    if not rows or max(len(row) for row in rows) < 2:
        return SmiSnapshot(
            format="none",
            state="unrecognized",
            message=_NOT_NVIDIA_SMI,
        )
    header = _csv_header(rows[0])
    if header is not None:
        columns, body = header, rows[1:]
    else:
        columns, body = _infer_columns(rows), rows
        if "name" not in columns and "uuid" not in columns:
            # Comma-separated text, but nothing in it names a GPU: not --query-gpu output.
            return SmiSnapshot(
                format="none",
                state="unrecognized",
                message=_NOT_NVIDIA_SMI,
            )

    def cell(row: Sequence[str], field: str) -> str | None:
        position = columns.get(field)
        return row[position] if position is not None and position < len(row) else None

    gpus = []
    for position, row in enumerate(body):
        index = _leading_int(cell(row, "index"))
        capability = _clean(cell(row, "compute_cap"))
        gpus.append(
            GpuSnapshot(
                index=index if isinstance(index, int) else position,
                name=str(_clean(cell(row, "name")) or "unknown"),
                memory_total_mib=_leading_int(cell(row, "memory.total")),
                memory_used_mib=_leading_int(cell(row, "memory.used")),
                utilization_gpu_percent=_leading_int(cell(row, "utilization.gpu")),
                bus_id=_clean(cell(row, "pci.bus_id")),
                uuid=_clean(cell(row, "uuid")),
                mig_mode=_clean(cell(row, "mig.mode.current")),
                compute_capability=capability if re.fullmatch(r"\d+\.\d+", capability) else NA,
                compute_capability_source="nvidia-smi" if capability else "unknown",
            )
        )
    drivers = [_version_text(cell(row, "driver_version")) for row in body]
    return SmiSnapshot(
        format="csv",
        state="gpus" if gpus else "no_devices",
        gpus=tuple(gpus),
        driver_version=next((d for d in drivers if d), NA),
        attached_gpus=_leading_int(cell(body[0], "count")) if body else NA,
        message="" if gpus else "the CSV has a header but no GPU row",
    )


def _csv_header(first: Sequence[str]) -> dict[str, int] | None:
    fields = [_FIELD.match(cell) for cell in first]
    if not all(fields) or not any(m.group(1) in _KNOWN_FIELDS for m in fields if m):
        return None
    return {m.group(1): position for position, m in enumerate(fields) if m}


def _infer_columns(rows: Sequence[Sequence[str]]) -> dict[str, int]:
    """Which column is which in ``--format=csv,noheader``, judged by the values (see ``_SHAPES``)."""
    width = min(len(row) for row in rows)
    columns = [[row[position] for row in rows] for position in range(width)]
    known_capabilities = {cc for cc, _ in load_rules().capability_rows}
    counting = [str(n) for n in range(len(rows))]
    found: dict[str, int] = {}
    memory_sums: list[tuple[int, int]] = []
    for position, values in enumerate(columns):
        for field, shape in _SHAPES:
            if field not in found and all(shape.match(value) for value in values):
                found[field] = position
        if "name" not in found and all(_BRANDS.match(value) for value in values):
            found["name"] = position
        if "compute_cap" not in found and all(value in known_capabilities for value in values):
            found["compute_cap"] = position
        # The index column counts the rows from 0, wherever the query put it.
        if "index" not in found and values == counting:
            found["index"] = position
        mebibytes = [_leading_int(value) for value in values if value.endswith(" MiB")]
        if len(mebibytes) == len(values):
            memory_sums.append((sum(n for n in mebibytes if isinstance(n, int)), position))
    if memory_sums:
        # memory.total is never below memory.used, .free or .reserved: the largest MiB column is the total.
        found["memory.total"] = max(memory_sums, key=lambda column: column[0])[1]
    return found


# ----------------------------------------------------------------------------- filling in what is missing


def _complete(snapshot: SmiSnapshot) -> SmiSnapshot:
    """Add what the rules know and nvidia-smi did not say: compute capabilities, the driver's CUDA."""
    rules = load_rules()
    gpus = []
    for gpu in snapshot.gpus:
        if not gpu.compute_capability:
            capability, how = rules.capability(gpu.name)
            gpu = replace(gpu, compute_capability=capability, compute_capability_source=how)
        gpus.append(gpu)
    cuda, source = snapshot.cuda_driver_max, snapshot.cuda_driver_max_source
    if not cuda and snapshot.driver_version:
        derived = rules.cuda_for_driver(snapshot.driver_version)
        if derived:
            cuda, source = derived, "driver table"
    return replace(snapshot, gpus=tuple(gpus), cuda_driver_max=cuda, cuda_driver_max_source=source)


def offer_snapshot(
    gpu_name: str,
    count: int,
    *,
    memory_gb: float | None = None,
    compute_capability: str | None = None,
    driver_version: str | None = None,
    cuda_max: str | None = None,
) -> SmiSnapshot:
    """What nvidia-smi would say about a machine a cloud provider offers, from what the offer tells: the GPU
    name always, its compute capability, driver and highest CUDA where the provider says (vast.ai does)."""
    gpus = tuple(
        GpuSnapshot(
            index=index,
            name=gpu_name,
            memory_total_mib=int(memory_gb * 1024) if memory_gb else NA,
            compute_capability=compute_capability or NA,
            compute_capability_source="the provider" if compute_capability else "unknown",
        )
        for index in range(max(1, count))
    )
    snapshot = SmiSnapshot(
        format="none",
        state="gpus",
        gpus=gpus,
        driver_version=driver_version or NA,
        cuda_driver_max=cuda_max or NA,
        cuda_driver_max_source="the provider" if cuda_max else NA,
        attached_gpus=len(gpus),
    )
    return _complete(snapshot)


# ================================================================================================== rules


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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
    def label(self) -> str:
        return f"{_DISPLAY_NAMES.get(self.name, self.name)} {self.version}"

    @property
    def minimum_cc(self) -> tuple[int, int]:
        return min(arch.cc for arch in self.archs)

    @property
    def arch_list(self) -> str:
        return ", ".join(arch.label for arch in self.archs)


@dataclass(frozen=True)
class CompatRules:
    mvc_floor: Mapping[int, str]
    toolkits: tuple[tuple[str, str], ...]
    """(CUDA version, driver of its first runfile), oldest first."""
    releases: tuple[FrameworkRelease, ...]
    capability_rows: tuple[tuple[str, str], ...]
    """(compute capability, model) with the model normalised by :func:`_model_key`."""

    def releases_of(self, name: str) -> list[FrameworkRelease]:
        return sorted((r for r in self.releases if r.name == name), key=lambda r: _version(r.version))

    def release(self, name: str, version: str) -> FrameworkRelease | None:
        wanted = _version(version)[:2]
        return next((r for r in self.releases if r.name == name and _version(r.version) == wanted), None)

    def newest(self, name: str = "tensorflow") -> FrameworkRelease:
        return self.releases_of(name)[-1]

    def next_release(self, release: FrameworkRelease) -> FrameworkRelease | None:
        later = [r for r in self.releases_of(release.name) if _version(r.version) > _version(release.version)]
        return later[0] if later else None

    def toolkit_driver(self, cuda: str) -> str | None:
        wanted = _version(cuda)[:2]
        return next((driver for version, driver in self.toolkits if _version(version) == wanted), None)

    def cuda_for_driver(self, driver: str) -> str | None:
        """The newest CUDA whose first runfile's driver is not newer than *driver*."""
        fitting = [version for version, needed in self.toolkits if _version(needed) <= _version(driver)]
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
    data = tomllib.loads(files("gpubox.data").joinpath("gpu_compat.toml").read_text(encoding="utf-8"))
    for table in ("cuda_major", "cuda_toolkit", "framework", "gpu"):
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
                key=lambda r: _version(r[0]),
            )
        ),
        releases=releases,
        capability_rows=tuple(
            (row["cc"], _model_key(model)) for row in data["gpu"] for model in row["models"]
        ),
    )


# ====================================================================================== framework choice


@dataclass(frozen=True)
class FrameworkChoice:
    release: FrameworkRelease
    chosen_by: str
    """Where the version came from, in words: ``--framework``, the host, the requirements file, the default."""


_FRAMEWORK_NAMES = {"tensorflow": "tensorflow", "tensorflow-gpu": "tensorflow", "torch": "torch"}
_REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?P<spec>[^;]*)")
_CLAUSE = re.compile(r"^(===|==|!=|~=|<=|>=|<|>)\s*(\d+(?:\.\d+)*)(\.\*)?")


def _distribution(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _satisfies(release: Version, operator: str, version: Version, wildcard: bool) -> bool:
    """Whether *some* patch release of ``release`` (major, minor) meets one PEP 440 clause."""
    pinned = (*version, 0, 0)[:2]
    patch = version[2] if len(version) > 2 else 0
    if operator in ("==", "==="):
        return release[: len(version)] == version[:2] if wildcard else release == pinned
    if operator == "!=":
        return not (wildcard and release[: len(version)] == version[:2])
    if operator == "~=":
        prefix = version[:-1] if len(version) > 1 else version
        return release >= pinned and release[: len(prefix)] == prefix[:2]
    if operator in (">=", ">"):
        return release >= pinned
    if operator == "<=":
        return release <= pinned
    return release < pinned or (release == pinned and patch > 0)  # "<"


def _newest_matching(name: str, spec: str, rules: CompatRules) -> FrameworkRelease | None:
    clauses = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        found = _CLAUSE.match(part)
        if not found:
            raise UsageError(f"cannot read the version specifier {part!r}")
        clauses.append((found.group(1), _version(found.group(2)), bool(found.group(3))))
    matching = [
        release
        for release in rules.releases_of(name)
        if all(_satisfies(_version(release.version), *clause) for clause in clauses)
    ]
    return matching[-1] if matching else None


def _known_range(name: str, rules: CompatRules) -> str:
    known = rules.releases_of(name)
    return f"{known[0].version}–{known[-1].version}"


def parse_framework_spec(spec: str, rules: CompatRules | None = None) -> FrameworkRelease:
    """``tensorflow==2.21``, ``tensorflow==2.21.0``, ``torch==2.10``, ``tensorflow>=2.16`` or a bare name."""
    rules = rules or load_rules()
    found = _REQUIREMENT.match(spec.strip())
    name = _FRAMEWORK_NAMES.get(_distribution(found.group("name"))) if found else None
    if found is None or name is None:
        raise UsageError(f"--framework {spec}: gpubox knows tensorflow and torch (e.g. tensorflow==2.21)")
    if found.end() != len(spec.strip()) or not re.fullmatch(r"[\d\s.*=<>!~,]*", found.group("spec")):
        # Read as a prefix, "tensorflow==2.21x" or "...==2.21; anything" would quietly mean 2.21.
        raise UsageError(f"cannot read the version specifier {spec.strip()[found.start('spec') :]!r}")
    release = _newest_matching(name, found.group("spec"), rules)
    if release is None:
        raise UsageError(
            f"--framework {spec}: gpubox has no rules for that {name} version "
            f"(it knows {_known_range(name, rules)})"
        )
    return release


def framework_from_requirements(text: str, rules: CompatRules | None = None) -> FrameworkRelease | None:
    """The TensorFlow release a requirements file pins (``==``, ``>=``, ``~=``, …), if it pins one.

    Raises :class:`BadInput` when the pin names a version gpubox has no rules for.
    """
    rules = rules or load_rules()
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue  # comments and pip options (-r, -c, --index-url)
        found = _REQUIREMENT.match(line)
        if not found or _FRAMEWORK_NAMES.get(_distribution(found.group("name"))) != "tensorflow":
            continue
        spec = found.group("spec").strip()
        if not spec:
            return None  # unpinned: the newest release is as good a guess as any
        try:
            release = _newest_matching("tensorflow", spec, rules)
        except UsageError as exc:
            raise BadInput(f"{line}: {exc}") from None
        if release is None:
            raise BadInput(
                f"{line}: gpubox has no rules for that TensorFlow version "
                f"(it knows {_known_range('tensorflow', rules)})"
            )
        return release
    return None


def choose_framework(
    requested: FrameworkRelease | None,
    installed: FrameworkView | None,
    requirements: tuple[str, str] | None,
    rules: CompatRules | None = None,
) -> FrameworkChoice:
    """``--framework``, else what is installed on the host, else the requirements pin, else the newest.

    *requirements* is ``(file name, text)``.
    """
    rules = rules or load_rules()
    if requested is not None:
        return FrameworkChoice(requested, "--framework")
    if installed is not None and installed.installed and installed.version:
        release = rules.release("tensorflow", installed.version)
        if release is not None:
            return FrameworkChoice(release, f"installed in {installed.python} on the host")
    if requirements is not None:
        pinned = framework_from_requirements(requirements[1], rules)
        if pinned is not None:
            return FrameworkChoice(pinned, f"pinned in {requirements[0]}")
    return FrameworkChoice(rules.newest("tensorflow"), "the newest release gpubox knows")


# ================================================================================================ verdict


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
    cuda = _version(release.cuda)
    floor = rules.mvc_floor.get(cuda[0])
    native = rules.toolkit_driver(release.cuda)
    needed = floor or native
    reported = snapshot.cuda_driver_max if snapshot.cuda_driver_max_source == "nvidia-smi" else NA
    driver = snapshot.driver_version
    supports = f" (CUDA ≤ {snapshot.cuda_driver_max})" if snapshot.cuda_driver_max else ""
    uses = f"{release.label} uses CUDA {release.cuda}"
    if driver:
        if (reported and _version(reported) >= cuda) or (
            not reported and native and _version(driver) >= _version(native)
        ):
            return _DriverFit(
                "native", needed, f"driver {driver}{supports} runs CUDA {release.cuda} natively"
            )
        if floor and _version(driver) >= _version(floor):
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
        top = _version(snapshot.cuda_driver_max)
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
            f"compute capability {gpu.compute_capability_source}: cannot tell whether {release.label} has kernels for it",
        )
    cc = cast(tuple[int, int], _version(gpu.compute_capability)[:2])
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
    if can_jit and _version(can_jit) < _version(release.cuda):
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


def _groups(gpus: Iterable[GpuSnapshot]) -> list[tuple[GpuSnapshot, list[int]]]:
    """GPUs of one name and compute capability together, in index order: reasons say "8× …" once."""
    found: dict[tuple[str, str], tuple[GpuSnapshot, list[int]]] = {}
    for gpu in gpus:
        found.setdefault((gpu.name, str(gpu.compute_capability)), (gpu, []))[1].append(gpu.index)
    return list(found.values())


def _gpu_words(gpu: GpuSnapshot, indexes: Sequence[int]) -> str:
    cc = f"cc {gpu.compute_capability}" if gpu.compute_capability else "cc unknown"
    which = f"GPU {indexes[0]}" if len(indexes) == 1 else f"GPUs {', '.join(map(str, indexes))}"
    return f"{which} {gpu.name} ({cc})" if len(indexes) <= 2 else f"{len(indexes)}× {gpu.name} ({cc})"


_NO_GPU_REASONS: Mapping[str, str] = {
    "no_nvidia_smi": "no NVIDIA GPU: training runs on CPU ({message})",
    "no_devices": "no NVIDIA GPU: nvidia-smi found no devices ({message})",
    "driver_unreachable": "no usable NVIDIA GPU: the NVIDIA driver is not running ({message})",
    "query_rejected": "nvidia-smi refused the query ({message})",
    "failed": "no usable NVIDIA GPU: {message}",
    "unrecognized": "gpubox could not read the nvidia-smi output ({message})",
}


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
        return Verdict("fail", (_NO_GPU_REASONS[snapshot.state].format(message=snapshot.message),))
    failures: list[str] = []
    warnings: list[str] = []
    notes: list[str] = []

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

    fits = {gpu.index: _kernel_fit(gpu, release, snapshot) for gpu in snapshot.gpus}
    usable = [gpu for gpu in snapshot.gpus if fits[gpu.index].kind != "none"]
    for gpu, indexes in _groups(snapshot.gpus):
        fit = fits[gpu.index]
        words = f"{_gpu_words(gpu, indexes)}: {fit.why}"
        if fit.kind == "none":
            (warnings if usable else failures).append(
                words
                + (f"; {_DISPLAY_NAMES.get(release.name, release.name)} will not use it" if usable else "")
            )
        elif fit.kind in ("ptx", "unknown"):
            warnings.append(words)
        else:
            notes.append(words)
    models = _groups(snapshot.gpus)
    if len({gpu.name for gpu, _ in models}) > 1:
        counts = ", ".join(f"{len(indexes)}× {gpu.name}" for gpu, indexes in models)
        warnings.append(f"mixed GPUs ({counts}): training across them runs at the pace of the slowest")
    if look_ahead and not failures:
        warnings.extend(_dropped_next(snapshot, release, rules, fits))
    notes.extend(_snapshot_notes(snapshot))
    if release.confidence == "U":
        notes.append(f"{release.label}'s data is unconfirmed: {release.note}")
    level: Level = "fail" if failures else "warn" if warnings else "ok"
    return Verdict(level, tuple(failures + warnings + notes))


def _dropped_next(
    snapshot: SmiSnapshot, release: FrameworkRelease, rules: CompatRules, fits: Mapping[int, _KernelFit]
) -> list[str]:
    following = rules.next_release(release)
    if following is None:
        return []
    dropped = []
    for gpu, indexes in _groups(snapshot.gpus):
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
    for gpu in snapshot.gpus:
        if gpu.mig_mode == "Enabled":
            slices = f" into {gpu.mig_devices} MIG devices" if gpu.mig_devices else ""
            notes.append(
                f"GPU {gpu.index} is split{slices} (MIG): a process sees the MIG slices it is given, not the "
                "whole GPU"
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
    current = _version(snapshot.driver_version) if snapshot.driver_version else ()
    candidates = sorted({*(driver for _, driver in rules.toolkits), *rules.mvc_floor.values()}, key=_version)
    for driver in candidates:
        if _version(driver) <= current:
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


# =========================================================================== what TensorFlow itself sees


@dataclass(frozen=True)
class FrameworkView:
    """The agent's ``framework`` answer: what the framework installed in a python on the host reports."""

    python: str
    installed: bool | None
    """None when the python did not answer (timed out, crashed)."""
    version: str | None = None
    gpus: tuple[str, ...] | None = None
    built_with_cuda: bool | None = None
    reason: str = ""

    @classmethod
    def from_agent(cls, answer: Mapping[str, Any]) -> FrameworkView:
        gpus = answer.get("gpus")
        return cls(
            python=str(answer.get("python") or "python"),
            installed=answer.get("installed"),
            version=answer.get("version"),
            gpus=tuple(str(g) for g in gpus) if isinstance(gpus, list) else None,
            built_with_cuda=answer.get("built_with_cuda"),
            reason=str(answer.get("reason") or ""),
        )

    def document(self) -> dict[str, Any]:
        return {
            "python": self.python,
            "installed": self.installed,
            "version": self.version,
            "gpus": list(self.gpus) if self.gpus is not None else None,
            "built_with_cuda": self.built_with_cuda,
            "reason": self.reason or None,
        }


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
                f"TensorFlow in {view.python} on the host: {why}; the verdict rests on gpubox's rules",
            ),
        )
    if _version(view.version)[:2] != _version(release.version)[:2]:
        return replace(
            verdict,
            reasons=(
                *verdict.reasons,
                f"TensorFlow {view.version} is installed in {view.python} on the host (the check is for {release.version})",
            ),
        )
    seen = view.gpus or ()
    if not seen:
        build = "; it is a CPU-only build" if view.built_with_cuda is False else ""
        return Verdict(
            "fail",
            (f"TensorFlow {view.version} in {view.python} sees no GPU{build}", *verdict.reasons),
            verdict.suggestion,
        )
    saw = f"TensorFlow {view.version} in {view.python} sees {len(seen)} GPU{'s' if len(seen) != 1 else ''}"
    if verdict.level == "fail":
        return Verdict(
            "warn", (f"{saw}: it has the last word over gpubox's rules", *verdict.reasons), verdict.suggestion
        )
    return replace(verdict, reasons=(f"{saw}", *verdict.reasons))


# ============================================================================================ the output


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


def describe_gpus(snapshot: SmiSnapshot) -> str:
    """``1× NVIDIA A100-SXM4-40GB  cc 8.0  driver 550.54.14 (CUDA ≤ 12.4)``, as in design.md."""
    parts = []
    for gpu, indexes in _groups(snapshot.gpus):
        cc = f"  cc {gpu.compute_capability}" if gpu.compute_capability else ""
        parts.append(f"{len(indexes)}× {gpu.name}{cc}")
    text = " + ".join(parts)
    if snapshot.driver_version:
        text += f"  driver {snapshot.driver_version}"
        if snapshot.cuda_driver_max:
            text += f" (CUDA ≤ {snapshot.cuda_driver_max})"
    return text or "nvidia-smi answered"


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


# ============================================================================================= the check


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


MARKS: Mapping[str, str] = {"ok": "✓", "warn": "!", "fail": "✗"}


def gpu_line_text(snapshot: SmiSnapshot) -> str:
    """The words after ``GPU`` in the host report: what is there, or why there is no usable GPU."""
    if snapshot.state == "gpus":
        return describe_gpus(snapshot)
    return _NO_GPU_REASONS[snapshot.state].format(message=snapshot.message)


def render_check(result: CheckResult) -> list[str]:
    """``gpubox check`` for people: the GPU line, the verdict line, then the reasons and what would work."""
    snapshot, verdict, release = result.snapshot, result.verdict, result.choice.release
    gpu_mark = "·" if snapshot.state == "no_nvidia_smi" else "✓" if snapshot.state == "gpus" else "✗"
    lines = [
        f"  {gpu_mark} GPU    {gpu_line_text(snapshot)}",
        f"  {MARKS[verdict.level]} {verdict_summary(snapshot, release, verdict)}  ({result.choice.chosen_by})",
    ]
    lines.extend(f"      · {reason}" for reason in verdict.reasons)
    if verdict.suggestion is not None:
        lines.extend(f"      → {option.text}" for option in verdict.suggestion.options)
    return lines
