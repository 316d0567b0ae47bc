"""``nvidia-smi -q`` (also ``-a``): the plain-text long form people paste in issues and chats, read like the XML.

The text is an indented outline: ``Key : value`` lines and section titles, four spaces a level, one
``GPU 00000000:83:00.0`` section per GPU. It is read into that outline first, then the same facts the XML
reader takes are looked up by path (``FB Memory Usage/Total``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from gpubox.remote.gpu.snapshot import (
    NA,
    GpuSnapshot,
    NaType,
    SmiSnapshot,
    fault_in,
    int_or_na,
    value_or_na,
    version_or_na,
)

__all__ = ["read"]

_BANNER = re.compile(r"^=+NVSMI LOG=+\s*$", re.MULTILINE)
_ATTACHED = re.compile(r"^Attached GPUs\s*:\s*\d+", re.MULTILINE)
_GPU_SECTION = re.compile(r"^GPU ([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f])\s*$")
_ENTRY = re.compile(r"^(?P<key>[^:]+?)\s*:\s?(?P<value>.*)$")
_VERSION = re.compile(r"\d+(?:\.\d+)+")
_WINDOWS_DRIVER_MODELS = frozenset({"WDDM", "TCC", "WDM", "MCDM"})


@dataclass
class _Node:
    key: str
    value: str | None = None
    children: list[_Node] = field(default_factory=list)

    def find(self, path: str) -> _Node | None:
        """The node at *path* (``"FB Memory Usage/Total"``), keys compared without case."""
        node: _Node | None = self
        for part in path.split("/"):
            wanted = part.casefold()
            node = (
                next((child for child in node.children if child.key.casefold() == wanted), None)
                if node
                else None
            )
        return node

    def text(self, path: str) -> str | None:
        node = self.find(path)
        return node.value if node is not None else None

    def values(self) -> Iterator[str]:
        for child in self.children:
            if child.value is not None:
                yield child.value
            yield from child.values()


def _outline(text: str) -> _Node:
    root = _Node("")
    stack: list[tuple[int, _Node]] = [(-1, root)]
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(("=", "[...]")):
            continue
        indent = len(line) - len(line.lstrip(" "))
        body = line.strip()
        section = _GPU_SECTION.match(body)
        entry = None if section else _ENTRY.match(body)
        node = (
            _Node("GPU", section.group(1))
            if section
            else _Node(entry.group("key"), entry.group("value").strip() or None)
            if entry
            else _Node(body)
        )
        while stack[-1][0] >= indent:
            stack.pop()
        stack[-1][1].children.append(node)
        stack.append((indent, node))
    return root


def read(text: str) -> SmiSnapshot | None:
    """The ``-q`` text, or None when *text* has neither its ``NVSMI LOG`` banner nor an ``Attached GPUs`` line."""
    if not (_BANNER.search(text) or _ATTACHED.search(text)):
        return None
    root = _outline(text)
    gpus = [_gpu(position, node) for position, node in enumerate(n for n in root.children if n.key == "GPU")]
    attached = int_or_na(root.text("Attached GPUs"))
    if not gpus and isinstance(attached, int) and attached > 0:
        # Reading on would report no GPU on a machine nvidia-smi says has some.
        return SmiSnapshot(
            format="text",
            state="unrecognized",
            message=f"the nvidia-smi -q text is cut off before its first GPU (it counts {attached} attached)",
        )
    driver = _version(root.text("KMD Version") or root.text("Driver Version"))
    cuda = _version(root.text("CUDA UMD Version") or root.text("CUDA Version"))
    return SmiSnapshot(
        format="text",
        state="gpus" if gpus else "no_devices",
        gpus=tuple(gpus),
        driver_version=driver,
        cuda_driver_max=cuda,
        cuda_driver_max_source="nvidia-smi" if cuda else NA,
        attached_gpus=attached,
        message="" if gpus else "the nvidia-smi -q text has no GPU section",
    )


def _version(value: str | None) -> str | NaType:
    """``610.43.02 [Deprecated; will be removed …]`` → ``610.43.02``."""
    found = _VERSION.search(value or "")
    return version_or_na(found.group(0)) if found else NA


def _gpu(position: int, node: _Node) -> GpuSnapshot:
    model = value_or_na(node.text("Driver Model/Current"))
    reset = (node.text("GPU Reset Status/Reset Required") or "").strip() == "Yes"
    return GpuSnapshot(
        # Like the XML, -q has no index: nvidia-smi writes the GPUs in index order.
        index=position,
        name=str(value_or_na(node.text("Product Name")) or "unknown"),
        memory_total_mib=int_or_na(node.text("FB Memory Usage/Total")),
        memory_used_mib=int_or_na(node.text("FB Memory Usage/Used")),
        utilization_gpu_percent=int_or_na(node.text("Utilization/GPU")),
        bus_id=value_or_na(node.value),
        uuid=value_or_na(node.text("GPU UUID")),
        architecture=value_or_na(node.text("Product Architecture")),
        mig_mode=value_or_na(node.text("MIG Mode/Current")),
        driver_model=model if model in _WINDOWS_DRIVER_MODELS else NA,
        error_state=fault_in(node.values()) or ("GPU requires reset" if reset else ""),
        memory_not_supported=(node.text("FB Memory Usage/Total") or "").strip() == "Not Supported",
        ecc_uncorrected=_uncorrected(node),
        ecc_pending=any(
            (node.text(path) or "").strip() == "Yes"
            for path in (
                "Retired Pages/Pending Page Blacklist",
                "Retired Pages/Pending",
                "Remapped Rows/Pending",
            )
        ),
    )


def _uncorrected(node: _Node) -> int | NaType:
    """Volatile uncorrectable ECC errors: DRAM and SRAM (Ampere on), double-bit (before)."""
    volatile = node.find("ECC Errors/Volatile")
    if volatile is None:
        return NA
    counts = [
        int_or_na(child.value)
        for child in volatile.children
        if child.key.startswith(("DRAM Uncorrectable", "SRAM Uncorrectable"))
    ]
    counts.append(int_or_na(volatile.text("Double Bit/Total")))
    numbers = [count for count in counts if isinstance(count, int)]
    return sum(numbers) if numbers else NA
