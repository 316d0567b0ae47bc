"""``nvidia-smi -q -x``: the XML report."""

from __future__ import annotations

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

__all__ = ["read"]


def read(text: str) -> SmiSnapshot | None:
    """The XML, or None when *text* does not start with ``<``."""
    if not text.startswith("<"):
        return None
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
                name=str(value_or_na(gpu.findtext("product_name")) or "unknown"),
                memory_total_mib=int_or_na(gpu.findtext("fb_memory_usage/total")),
                memory_used_mib=int_or_na(gpu.findtext("fb_memory_usage/used")),
                utilization_gpu_percent=int_or_na(gpu.findtext("utilization/gpu_util")),
                bus_id=value_or_na(gpu.get("id") or gpu.findtext("pci/pci_bus_id")),
                uuid=value_or_na(gpu.findtext("uuid")),
                architecture=value_or_na(gpu.findtext("product_architecture")),
                mig_mode=value_or_na(gpu.findtext("mig_mode/current_mig")),
                mig_devices=len(gpu.findall("mig_devices/mig_device")),
                driver_model=_windows_driver_model(gpu.findtext("driver_model/current_dm")),
                error_state=fault_in(element.text for element in gpu.iter()),
                memory_not_supported=(gpu.findtext("fb_memory_usage/total") or "").strip() == "Not Supported",
                ecc_uncorrected=_uncorrected(gpu),
                ecc_pending=any(
                    (gpu.findtext(path) or "").strip() == "Yes"
                    for path in (
                        "retired_pages/pending_blacklist",
                        "retired_pages/pending_retirement",
                        "remapped_rows/remapped_row_pending",
                    )
                ),
            )
        )
    cuda = version_or_na(root.findtext("cuda_version"))
    return SmiSnapshot(
        format="xml",
        state="gpus" if gpus else "no_devices",
        gpus=tuple(gpus),
        driver_version=version_or_na(root.findtext("driver_version")),
        cuda_driver_max=cuda,
        cuda_driver_max_source="nvidia-smi" if cuda else NA,
        attached_gpus=int_or_na(root.findtext("attached_gpus")),
        message="" if gpus else "the XML lists no <gpu>",
    )


def _windows_driver_model(value: str | None) -> str | NaType:
    model = value_or_na(value)
    return model if model in ("WDDM", "TCC", "WDM", "MCDM") else NA


def _uncorrected(gpu: Element) -> int | NaType:
    """Volatile uncorrectable ECC errors: DRAM + SRAM on Ampere and later, double-bit before."""
    counts = [
        int_or_na(gpu.findtext(path))
        for path in (
            "ecc_errors/volatile/dram_uncorrectable",
            "ecc_errors/volatile/sram_uncorrectable",
            "ecc_errors/volatile/double_bit/total",
        )
    ]
    numbers = [count for count in counts if isinstance(count, int)]
    return sum(numbers) if numbers else NA
