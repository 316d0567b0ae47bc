"""Local fake servers for the Lambda Cloud, vast.ai and RunPod APIs, for tests that must not touch the internet.

Each fake follows its provider's published API (paths, methods, auth, JSON shapes, error bodies); see the
module docstrings. Typical use::

    with FakeLambda(api_key="k", boot_seconds=0) as cloud:
        client = LambdaClient(api_url=cloud.url, api_key="k")
        ...
        assert cloud.requests_for("launch")
"""

from tests.support.clouds.base import FakeCloud, FakeInstance, RecordedRequest
from tests.support.clouds.lambda_cloud import FakeLambda, LambdaInstanceType, default_lambda_catalog
from tests.support.clouds.runpod import FakeRunPod, RunPodGpuType, default_runpod_catalog
from tests.support.clouds.vast import FakeVast, default_vast_catalog, make_offer

__all__ = [
    "FakeCloud",
    "FakeInstance",
    "FakeLambda",
    "FakeRunPod",
    "FakeVast",
    "LambdaInstanceType",
    "RecordedRequest",
    "RunPodGpuType",
    "default_lambda_catalog",
    "default_runpod_catalog",
    "default_vast_catalog",
    "make_offer",
]
