"""gpubox: a rented GPU machine that feels like part of your laptop."""

__version__ = "0.1.0"
