"""The dashboard's data, UI-free (cut into views, read, poller and model in the next commit)."""

from gpubox.dashboard.model import *  # noqa: F403
from gpubox.dashboard.model import GpuReading, __all__, parse_gpus  # noqa: F401
