"""``nvidia-smi --query-gpu=… --format=csv``, with or without header and units."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence

from gpubox.remote.gpu.rules import load_rules
from gpubox.remote.gpu.snapshot import (
    NA,
    GpuSnapshot,
    SmiSnapshot,
    fault_in,
    int_or_na,
    value_or_na,
    version_or_na,
)

__all__ = ["read"]

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


def read(text: str) -> SmiSnapshot | None:
    """The CSV, or None when *text* is not comma-separated or nothing in it names a GPU."""
    rows = [
        [cell.strip() for cell in row]
        for row in csv.reader((line for line in text.splitlines() if line.strip()), skipinitialspace=True)
    ]
    if not rows or max(len(row) for row in rows) < 2:
        return None
    header = _csv_header(rows[0])
    if header is not None:
        columns, body = header, rows[1:]
    else:
        columns, body = _infer_columns(rows), rows
        if "name" not in columns and "uuid" not in columns:
            # Comma-separated text, but nothing in it names a GPU: not --query-gpu output.
            return None

    def cell(row: Sequence[str], field: str) -> str | None:
        position = columns.get(field)
        return row[position] if position is not None and position < len(row) else None

    gpus = []
    for position, row in enumerate(body):
        index = int_or_na(cell(row, "index"))
        capability = value_or_na(cell(row, "compute_cap"))
        model = value_or_na(cell(row, "driver_model.current"))
        gpus.append(
            GpuSnapshot(
                index=index if isinstance(index, int) else position,
                name=str(value_or_na(cell(row, "name")) or "unknown"),
                memory_total_mib=int_or_na(cell(row, "memory.total")),
                memory_used_mib=int_or_na(cell(row, "memory.used")),
                utilization_gpu_percent=int_or_na(cell(row, "utilization.gpu")),
                bus_id=value_or_na(cell(row, "pci.bus_id")),
                uuid=value_or_na(cell(row, "uuid")),
                mig_mode=value_or_na(cell(row, "mig.mode.current")),
                compute_capability=capability if re.fullmatch(r"\d+\.\d+", capability) else NA,
                compute_capability_source="nvidia-smi" if capability else "unknown",
                driver_model=model if model in ("WDDM", "TCC", "WDM", "MCDM") else NA,
                error_state=fault_in(row),
            )
        )
    drivers = [version_or_na(cell(row, "driver_version")) for row in body]
    return SmiSnapshot(
        format="csv",
        state="gpus" if gpus else "no_devices",
        gpus=tuple(gpus),
        driver_version=next((d for d in drivers if d), NA),
        attached_gpus=int_or_na(cell(body[0], "count")) if body else NA,
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
        mebibytes = [int_or_na(value) for value in values if value.endswith(" MiB")]
        if len(mebibytes) == len(values):
            memory_sums.append((sum(n for n in mebibytes if isinstance(n, int)), position))
    if memory_sums:
        # memory.total is never below memory.used, .free or .reserved: the largest MiB column is the total.
        found["memory.total"] = max(memory_sums, key=lambda column: column[0])[1]
    return found
