"""gpubox's data files: the GPU compatibility rules, the price catalog, the example configuration files."""

from __future__ import annotations

from pathlib import Path

__all__ = ["read_text"]


def read_text(name: str) -> str:
    """The data file *name*, as text. Read beside this module, where an install puts it; through
    importlib.resources only where that fails (a zipped install): importing that costs a one-shot command ~7 ms
    (tempfile, shutil and the compression modules under it)."""
    try:
        return (Path(__file__).parent / name).read_text(encoding="utf-8")
    except OSError:
        from importlib.resources import files

        return files(__name__).joinpath(name).read_text(encoding="utf-8")
