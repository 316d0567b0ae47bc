"""The one list of providers gpubox knows, one :class:`ProviderSpec` each: what the rest of gpubox asks of a host's
kind (does gpubox rent it, run its sshd, stop it on ``down``, which user logs in) instead of testing its name.

Importing this module stays light (no httpx, no paramiko): the classes behind a spec are named as
``"module:Class"`` strings and imported when first used.

Adding a cloud
--------------

1. Write ``gpubox/remote/providers/NAME.py`` with an API class that keeps
   :class:`~gpubox.remote.providers.cloud.CloudApi`: ``name``, ``settings``, and ``offers``, ``launch``,
   ``instances``, ``instance``, ``terminate``, translating the cloud's answers into
   :class:`~gpubox.remote.providers.base.Offer` and :class:`~gpubox.remote.providers.base.Instance`. Build it on
   :class:`~gpubox.remote.providers.cloud.ApiClient`, which paces, retries and keeps the key out of every
   message (see ``vast.py``: an ``_error_text`` for its error bodies, then one method per call). If it can say
   why a search found nothing, give it ``describe_shortage(query) -> str`` too (see ``lambda_cloud.py``); if
   its instances can be stopped with their disk kept, ``resume(instance_id, gpu_count)`` starts one again (see
   ``vast.py``), and ``up`` resumes what the host's guardian stopped instead of renting anew.
2. Add one line to :data:`SPECS` below, with :func:`_cloud`: its name (what ``provider = "NAME"`` says in
   hosts.toml), the variable holding its API key, its API's URL, the API class, the user its machines log in
   as, the hosts.toml keys it takes beyond :data:`RENTED_KEYS`, which of them a host must set, and what it
   cannot do (a :class:`Capability` with the reason), and where a stopped instance keeps files if not on its
   whole disk (``kept_folder``). A key no cloud took before also needs its check in
   ``HOST_FIELDS`` (``gpubox/config/hosts.py``) and a field on ``HostConfig``.
3. Tests: ``tests/unit/test_provider_registry.py`` iterates :data:`SPECS` and checks the new line (its module
   and class import, the class keeps the contract, a minimal hosts.toml for it loads, its key variable, URL and
   user are set) and talks to its fake server, which it finds by name: write one in
   ``tests/support/clouds/NAME.py`` (a :class:`FakeCloud` subclass with ``PROVIDER = "NAME"``, following the
   cloud's published API) and export it from ``tests/support/clouds/__init__.py``. Add the new name to the
   rented-host cycles in ``tests/integration/test_providers.py`` (``KEY_VARIABLE``, ``WANTS``, ``FAKES``).
4. Show a ``[hosts.NAME]`` for it in ``hosts.example.toml`` (``tests/unit/test_config.py`` loads that file).
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Mapping
from dataclasses import field
from typing import TYPE_CHECKING, Any, cast

from gpubox.record import record

if TYPE_CHECKING:
    from gpubox.config import ProviderSettings
    from gpubox.remote.providers.base import Provider
    from gpubox.remote.providers.cloud import CloudApi

__all__ = [
    "CLOUD_NAMES",
    "EVERY_HOST_KEYS",
    "PROVIDER_NAMES",
    "RENTED_KEYS",
    "SPECS",
    "SSH_KEYS",
    "STOPPED_MARK",
    "Capability",
    "ProviderSpec",
    "Requirement",
    "SelfStop",
    "provider_spec",
]


class Capability(enum.Enum):
    """What some providers can do and others cannot; a spec lists those it cannot, each with the reason."""

    SHORTAGE_REASON = "say why no offer matched a host"
    INSTANCE_KEY = "give an instance a key of its own, for its guardian to stop it with the laptop gone"
    RESUME = "start a stopped instance again, with what its stop kept"


@record
class SelfStop:
    """How a rented instance is stopped from the instance itself (its guardian, with the laptop gone): one
    request to the cloud's API, which the stdlib-only agent sends (PROTOCOL.md, "The guardian", kind
    ``provider``). ``{id}`` in *path* and in *body*'s strings is the instance id."""

    method: str
    path: str
    body: Mapping[str, Any]
    key_env: str = ""
    """The variable in which the cloud gives the instance a key scoped to itself ("" when it gives none: only
    ``self_stop = "key"``, the user's own key placed on the host, can stop it then)."""
    id_env: str = ""
    """The variable in which the cloud tells the instance its own id (checked against gpubox's record)."""
    keeps_disk: bool = True
    """The call stops the instance and keeps its disk (False: it terminates it, the disk with it)."""
    done: str = "stopped {provider} instance {id}"
    """What was done, in words, for the guardian's log."""
    stop_note: Mapping[str, Any] | None = None
    """For a cloud whose API never says when an instance stopped: a body sent first, with the same method and
    path, that leaves the guardian's stop time in the cloud's own record of the instance (``{name}``: gpubox's
    name for it; ``{at}``: the time, in seconds since the epoch), so that the ledger closes there even if the
    instance is terminated without being started again. The stop is sent whether or not the cloud took it."""


STOPPED_MARK = " stopped@"
"""Between gpubox's name for an instance and the guardian's stop time, in a name that carries both."""


@record
class Requirement:
    """Keys a host of this provider must set: at least one of *keys*."""

    keys: tuple[str, ...]
    needs: str
    """The end of the message ``a NAME host needs ...`` when none is set."""


@record
class ProviderSpec:
    """One kind of host, as data."""

    name: str
    """What ``provider = "NAME"`` says in hosts.toml."""
    provider_class: str
    """``"module:Class"`` of its :class:`~gpubox.remote.providers.base.Provider`, built with this spec."""
    keys: frozenset[str]
    """The ``[hosts.NAME]`` keys it takes; ``gpubox.config`` checks their values."""
    requires: tuple[Requirement, ...] = ()
    rents: bool = False
    """gpubox rents the machine from a cloud's API: ``up`` launches one (after asking), ``down`` terminates it,
    and its address and price come from the API."""
    runs_own_sshd: bool = False
    """gpubox runs a private sshd for it, started on connect and stopped by ``down``; it made the host key."""
    on_this_machine: bool = False
    """The host is the computer gpubox runs on: it costs nothing, and its terminals are the user's own."""
    stops_on_down: bool = False
    """``down``, autostop and a spent budget end the machine itself (without a ``stop_command``)."""
    default_user: str | None = None
    """Who logs in when hosts.toml names no user; None: ``~/.ssh/config``, else the user gpubox runs as."""
    api_key_env: str = ""
    """The environment variable holding the API key, for a cloud (``api_key_env`` in ``[providers.NAME]``)."""
    api_url: str = ""
    api_class: str = ""
    """``"module:Class"`` of its :class:`~gpubox.remote.providers.cloud.CloudApi`, for a cloud."""
    self_stop: SelfStop | None = None
    """How its instances stop themselves, for a cloud."""
    kept_folder: str = ""
    """Where a stopped instance keeps files, when not its whole disk (RunPod keeps only its volume, mounted
    there): the project's folder goes under it, so that outputs left on a stopped instance are still there when
    ``up`` starts it again. "" : a stop keeps the whole disk (and with it the sshd's host key)."""
    unsupported: Mapping[Capability, str] = field(default_factory=dict)
    """What it cannot do, and why."""

    def supports(self, capability: Capability) -> bool:
        return capability not in self.unsupported

    def provider(self) -> Provider:
        return cast("Provider", _load(self.provider_class)(self))

    def api(self, settings: ProviderSettings) -> CloudApi:
        """Its API client (the key is read from the environment when first needed)."""
        if not self.api_class:
            raise TypeError(f"provider {self.name} has no API: gpubox does not rent its hosts")
        return cast("CloudApi", _load(self.api_class)(settings))


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


# The hosts.toml keys each kind takes (HOST_FIELDS in gpubox/config/hosts.py checks their values).
EVERY_HOST_KEYS = frozenset(
    {
        "provider",
        "connect_timeout",
        "keepalive_seconds",
        "remote_dir",
        "python",
        "budget_usd",
        "on_budget",
        "autostop_minutes",
        "autostop_gpu_percent",
        "max_hours",
        "stall_minutes",
    }
)
SSH_KEYS = frozenset(
    {"hostname", "port", "user", "identity_file", "proxy_jump", "accept_new", "stop_command"}
)
RENTED_KEYS = EVERY_HOST_KEYS | {
    "user",
    "identity_file",
    "accept_new",
    "gpu",
    "gpu_count",
    "max_price_per_hour",
    "launch_timeout",
    "self_stop",
}
"""What every rented host takes: not its address (the API tells) nor its price (the API charges it)."""


def _cloud(
    name: str,
    api_key_env: str,
    api_url: str,
    api_class: str,
    *,
    user: str,
    keys: set[str],
    requires: tuple[Requirement, ...],
    self_stop: SelfStop,
    kept_folder: str = "",
    unsupported: Mapping[Capability, str] | None = None,
) -> ProviderSpec:
    return ProviderSpec(
        name=name,
        provider_class="gpubox.remote.providers.cloud:CloudProvider",
        keys=RENTED_KEYS | keys,
        requires=requires,
        rents=True,
        stops_on_down=True,
        default_user=user,
        api_key_env=api_key_env,
        api_url=api_url,
        api_class=api_class,
        self_stop=self_stop,
        kept_folder=kept_folder,
        unsupported=unsupported or {},
    )


_NEEDS_GPU = Requirement(("gpu",), 'gpu: the GPU model to rent, such as "RTX 4090"')

SPECS: tuple[ProviderSpec, ...] = (
    ProviderSpec(
        "ssh",
        "gpubox.remote.providers.ssh:SshProvider",
        keys=EVERY_HOST_KEYS | SSH_KEYS | {"price_per_hour"},
    ),
    ProviderSpec(
        "local",
        "gpubox.remote.providers.local:LocalProvider",
        keys=EVERY_HOST_KEYS | {"price_per_hour"},
        runs_own_sshd=True,
        on_this_machine=True,
        stops_on_down=True,
    ),
    _cloud(
        "lambda",
        "LAMBDA_API_KEY",
        "https://cloud.lambda.ai/api/v1",
        "gpubox.remote.providers.lambda_cloud:LambdaApi",
        user="ubuntu",
        keys={"instance_type", "region", "ssh_key_name"},
        requires=(
            Requirement(("ssh_key_name",), "ssh_key_name: the name of an SSH key in your Lambda account"),
            Requirement(("instance_type", "gpu"), 'instance_type (such as "gpu_1x_a100_sxm4") or gpu'),
        ),
        # Lambda cannot stop (pause) an instance, only terminate it; and it gives an instance no identity.
        self_stop=SelfStop(
            "POST",
            "/instance-operations/terminate",
            {"instance_ids": ["{id}"]},
            keeps_disk=False,
            done="terminated lambda instance {id} through its API",
        ),
        unsupported={
            Capability.INSTANCE_KEY: "a Lambda instance carries no key or identity of its own: with "
            'self_stop = "key" its guardian uses your API key, placed on the host (a 0600 file)',
            Capability.RESUME: "Lambda cannot stop an instance, only terminate it: there is never a stopped "
            "one to start",
        },
    ),
    _cloud(
        "vast",
        "VAST_API_KEY",
        "https://console.vast.ai",
        "gpubox.remote.providers.vast:VastApi",
        user="root",
        keys={"region", "image", "disk_gb"},
        requires=(_NEEDS_GPU,),
        # Every instance gets CONTAINER_API_KEY, a key scoped to itself, and CONTAINER_ID.
        self_stop=SelfStop(
            "PUT",
            "/api/v0/instances/{id}/",
            {"state": "stopped"},
            key_env="CONTAINER_API_KEY",
            id_env="CONTAINER_ID",
            done="stopped vast instance {id} through its API (its disk kept)",
            # vast's instance list has no stop time; its label (the same PUT) keeps one until `up` restores it.
            stop_note={"label": "{name}" + STOPPED_MARK + "{at}"},
        ),
        unsupported={
            Capability.SHORTAGE_REASON: "its offer search answers with the offers that match, never why none did"
        },
    ),
    _cloud(
        "runpod",
        "RUNPOD_API_KEY",
        "https://api.runpod.io",
        "gpubox.remote.providers.runpod:RunPodApi",
        user="root",
        keys={"image", "disk_gb", "cloud_type"},
        requires=(_NEEDS_GPU,),
        # Every pod gets RUNPOD_API_KEY, a key scoped to the pod, and RUNPOD_POD_ID (runpodctl uses them).
        self_stop=SelfStop(
            "POST",
            "/graphql",
            {"query": 'mutation { podStop(input: {podId: "{id}"}) { id desiredStatus } }'},
            key_env="RUNPOD_API_KEY",
            id_env="RUNPOD_POD_ID",
            done="stopped runpod pod {id} through its API (its volume kept)",
        ),
        # A stopped pod keeps only its volume: its container disk (the home folder, the sshd's host key) is
        # made anew when it starts again.
        kept_folder="/workspace",
        unsupported={
            Capability.SHORTAGE_REASON: "not written yet: its GPU list could tell a type out of stock from an "
            "unknown one"
        },
    ),
)
"""Every provider, in the order hosts.toml's messages list them."""

_BY_NAME = {spec.name: spec for spec in SPECS}
PROVIDER_NAMES = tuple(_BY_NAME)
CLOUD_NAMES = tuple(spec.name for spec in SPECS if spec.rents)
"""The providers gpubox rents from."""


def provider_spec(name: str) -> ProviderSpec:
    """The spec of provider *name* (a KeyError for one gpubox does not know: hosts.toml is checked on
    reading)."""
    return _BY_NAME[name]
