"""Renting machines: offers from every configured provider at once, launching a host's instance and waiting for
it to answer SSH, and finding instances gpubox launched that nobody holds (so none is forgotten, billing).

UI-free: the command line and the dashboard call these with their own way to ask and to show progress.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from gpubox.config import HostConfig, HostsConfig, ProjectConfig, ProviderSettings, configured_providers
from gpubox.errors import BadInput, GpuboxError, HostError, HostUnreachable, ProviderError, UsageError
from gpubox.remote.agent import calls
from gpubox.remote.providers.base import Instance, Offer
from gpubox.remote.providers.cloud import (
    CloudApi,
    ExplainsShortage,
    OfferQuery,
    Resumes,
    describe_instance,
    forget_instance,
    forget_vanished,
    host_from_instance_name,
    instance_name,
    note_instance,
    resumed_elsewhere,
    settle_ended,
    settle_stopped,
    terminate_recorded,
)
from gpubox.remote.providers.registry import CLOUD_NAMES, Capability

if TYPE_CHECKING:
    from gpubox.state import InstanceRecord

__all__ = [
    "OffersReport",
    "Orphan",
    "OrphanReport",
    "RatedOffer",
    "collect_offers",
    "ensure_instance",
    "find_orphans",
    "refuse_unpulled_stopped",
    "terminate_orphans",
]

Confirm = Callable[[str], bool]
Say = Callable[[str], None]

UNKNOWN_DRIVER = "the provider does not say the driver: `gpubox check` tells once the host is up"


@dataclass(frozen=True)
class RatedOffer:
    offer: Offer
    verdict: str
    """``ok``, ``warn`` or ``fail`` for the project's TensorFlow version; ``unknown`` when it cannot be told."""
    reasons: tuple[str, ...]
    host: str | None
    """The configured host this offer would be launched as, if any."""


@dataclass(frozen=True)
class OffersReport:
    offers: list[RatedOffer]
    """Cheapest first."""
    problems: list[tuple[str, str]]
    """(provider, what went wrong) for providers that failed or did not answer in time."""
    framework: str = ""
    """The release judged against ("TensorFlow 2.21") and why that one."""
    asked: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    failures: dict[str, BaseException] = field(default_factory=dict)
    """The error behind each problem (a timeout has none)."""


def _api(settings: ProviderSettings) -> CloudApi:
    from gpubox.remote.providers import cloud_api

    return cloud_api(settings)


def _in_parallel(
    jobs: dict[str, Callable[[], object]],
    budgets: dict[str, float],
    failures: dict[str, BaseException] | None = None,
) -> tuple[dict[str, object], dict[str, str], dict[str, float]]:
    """Run each job in its own daemon thread and wait at most its budget: a slow provider never holds up the
    others, nor the exit of gpubox (a thread still waiting on it is simply abandoned)."""
    results: dict[str, object] = {}
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    done = {name: threading.Event() for name in jobs}
    started = time.monotonic()

    def work(name: str, job: Callable[[], object]) -> None:
        try:
            results[name] = job()
        except (GpuboxError, OSError) as exc:
            errors[name] = str(exc)
            if failures is not None:
                failures[name] = exc
        except Exception as exc:  # a provider's odd answer must not take the others down
            errors[name] = f"{type(exc).__name__}: {exc}"
        finally:
            seconds[name] = round(time.monotonic() - started, 3)
            done[name].set()

    for name, job in jobs.items():
        threading.Thread(target=work, args=(name, job), name=f"gpubox-{name}", daemon=True).start()
    for name in jobs:
        left = budgets[name] - (time.monotonic() - started)
        if not done[name].wait(max(0.0, left)):
            errors[name] = f"no answer within {budgets[name]:g} s (offers_timeout); shown without it"
            seconds[name] = budgets[name]
    return {k: v for k, v in results.items() if k not in errors}, errors, seconds


# ------------------------------------------------------------------------------------------------ offers


def collect_offers(
    hosts: HostsConfig,
    project: ProjectConfig,
    *,
    provider: str | None = None,
    gpu: str | None = None,
    max_price: float | None = None,
    compatible_only: bool = False,
    gpu_count: int | None = None,
) -> OffersReport:
    from gpubox.remote import gpu as gpu_rules

    if provider is not None and provider not in CLOUD_NAMES:
        raise UsageError(f'unknown provider "{provider}" (the cloud providers are {", ".join(CLOUD_NAMES)})')
    providers = [hosts.provider_settings(provider)] if provider else configured_providers(hosts)
    query = OfferQuery(gpu=gpu, gpu_count=gpu_count, max_price=max_price, cloud_type="all")
    jobs: dict[str, Callable[[], object]] = {}
    for settings in providers:
        api = _api(settings)
        jobs[settings.name] = lambda api=api: api.offers(query)  # type: ignore[misc]
    failures: dict[str, BaseException] = {}
    results, errors, seconds = _in_parallel(jobs, {s.name: s.offers_timeout for s in providers}, failures)

    choice = gpu_rules.choose_framework(None, None, _requirements(project))
    release = choice.release
    rated: list[RatedOffer] = []
    for found in results.values():
        for offer in found:  # type: ignore[attr-defined]
            snapshot = gpu_rules.offer_snapshot(
                offer.gpu,
                offer.gpu_count,
                memory_gb=offer.gpu_memory_gb,
                compute_capability=offer.compute_capability,
                driver_version=offer.driver_version,
                cuda_max=offer.cuda_max,
            )
            verdict = gpu_rules.assess(snapshot, release, unknown_driver_note=UNKNOWN_DRIVER)
            level: str = verdict.level
            if level == "warn" and not any(gpu.compute_capability for gpu in snapshot.gpus):
                level = "unknown"
            rated.append(RatedOffer(offer, level, verdict.reasons, _host_for(hosts, offer)))
    if compatible_only:
        rated = [r for r in rated if r.verdict in ("ok", "warn")]
    rated.sort(key=lambda r: (r.offer.price_per_hour, -r.offer.gpu_count, r.offer.provider, r.offer.gpu))
    return OffersReport(
        offers=rated,
        problems=[(name, errors[name]) for name in jobs if name in errors],
        framework=f"{release.label} ({choice.chosen_by})",
        asked=list(jobs),
        seconds=seconds,
        failures={name: exc for name, exc in failures.items() if name in errors},
    )


def _requirements(project: ProjectConfig) -> tuple[str, str] | None:
    name = project.env.requirements or "requirements.txt"
    path = project.root / name
    try:
        return (name, path.read_text(encoding="utf-8", errors="replace")) if path.is_file() else None
    except OSError:
        return None


def _host_for(hosts: HostsConfig, offer: Offer) -> str | None:
    """The configured host that `gpubox up` would rent this offer for (its provider, GPU, count, region and
    price cap all fit), if any."""
    for host in hosts.hosts.values():
        if host.provider == offer.provider and OfferQuery.for_host(host).matches(offer):
            return host.name
    return None


# ---------------------------------------------------------------------------------------------- launching


def _recorded(host: HostConfig) -> InstanceRecord | None:
    from gpubox.state import open_state

    with open_state() as state:
        return state.current_instance(host.name)


def ensure_instance(
    host: HostConfig,
    *,
    confirm: Confirm,
    say: Say,
    offer_id: str | None = None,
    poll_seconds: float = 2.0,
) -> Instance:
    """Make sure *host* has a running instance that answers SSH, renting one (after *confirm*) if it has none.

    The instance id is recorded the moment the provider gives it, with billing running from then on, so a
    launch that never comes up, or a gpubox killed while waiting, still leaves it known and terminable."""
    if not host.spec.rents:
        raise UsageError(f"{host.name} is not a rented host (provider {host.provider})")
    api = _api(host.provider_settings())
    record = _recorded(host)
    if record is not None:
        instance = api.instance(record.instance_id)
        if instance is not None and instance.phase == "stopping":
            raise ProviderError(
                f"{host.provider} instance {record.instance_id} of {host.name} is stopping right now; once it has "
                f"stopped, `gpubox up {host.name}` starts it again",
                provider=host.provider,
            )
        if instance is not None and instance.billing:
            if record.stopped:
                resumed_elsewhere(host, record, instance)
            note_instance(record, instance)
            if record.state == "running" and instance.ssh_ready:
                say(f"{describe_instance(instance, record.launched_at)}")
            else:
                say(f"{host.provider} instance {record.instance_id} was launched earlier; waiting for it")
            return wait_for_ssh(api, host, record.instance_id, say, poll_seconds=poll_seconds)
        if instance is not None and instance.phase == "stopped":
            return _start_again(
                api, host, record, instance, confirm=confirm, say=say, poll_seconds=poll_seconds
            )
        say(settle_ended(host, record, instance))

    offer = _choose_offer(api, host, offer_id)
    memory = f" {offer.gpu_memory_gb:g} GB" if offer.gpu_memory_gb else ""
    what = offer.instance_type or offer.gpu
    from gpubox.fmt import format_usd

    question = (
        f"rent {host.provider} {what} ({offer.gpu_count}× {offer.gpu}{memory}) in {offer.region or 'any region'} "
        f"at {format_usd(offer.price_per_hour)}/h for {host.name}?"
    )
    if not confirm(question):
        raise GpuboxError(f"nothing rented: {host.name} stays down")
    name = instance_name(host.name)
    instance_id = api.launch(host, offer, name)
    _record_launch(host, instance_id, name, offer)
    say(
        f"launched {host.provider} instance {instance_id} ({name}) at {format_usd(offer.price_per_hour)}/h: "
        "billing from now"
    )
    return wait_for_ssh(api, host, instance_id, say, poll_seconds=poll_seconds)


def _start_again(
    api: CloudApi,
    host: HostConfig,
    record: InstanceRecord,
    instance: Instance,
    *,
    confirm: Confirm,
    say: Say,
    poll_seconds: float,
) -> Instance:
    """Start the host's stopped instance again (after *confirm*) rather than rent a new one: its disk holds the
    project and whatever outputs its guardian left there when it stopped it with the laptop gone."""
    from gpubox import paths
    from gpubox.fmt import format_duration, format_usd
    from gpubox.state import open_state

    settle_stopped(host, record, instance)  # the ledger closes where it stopped, before it bills again
    name, provider, instance_id = host.name, host.provider, record.instance_id
    if not host.spec.supports(Capability.RESUME):
        raise ProviderError(
            f"{provider} instance {instance_id} of {name} is stopped and gpubox cannot start it again "
            f"({host.spec.unsupported[Capability.RESUME]}); `gpubox down {name}` terminates it",
            provider=provider,
        )
    price = instance.price_per_hour if instance.price_per_hour is not None else record.price_per_hour
    rate = f" at {format_usd(price)}/h" if price is not None else ""
    when = instance.stopped_at or record.stopped_at
    ago = f" {format_duration(max(0.0, time.time() - when))} ago" if when is not None else ""
    kept = f"its {host.spec.kept_folder} volume" if host.spec.kept_folder else "its disk"
    if not confirm(
        f"start {provider} instance {instance_id} of {name} again (stopped{ago}; {kept} as it was left){rate}?"
    ):
        raise GpuboxError(
            f"nothing started: {name} stays stopped, its disk billed by {provider} for storage; "
            f"`gpubox down {name}` terminates it"
        )
    try:
        cast(Resumes, api).resume(instance_id, instance.gpu_count or host.gpu_count or 1, record.name)
    except ProviderError as exc:
        raise ProviderError(
            f"{provider} could not start instance {instance_id} of {name} again ({exc}); it stays stopped with "
            f"its disk: `gpubox up {name}` tries again, `gpubox down {name} --no-pull` terminates it (its disk "
            "with it) so that the next `gpubox up` rents another",
            provider=provider,
            code=exc.code,
        ) from None
    with open_state() as state:
        state.resume_instance(provider, instance_id)
        state.open_billing(name, price, price_source=f"live price from {provider}", estimate=False)
    if host.spec.kept_folder:
        # Only the volume was kept: the container, its sshd's host key with it, is made anew. The new key is
        # trusted as a new rental's is (this instance, at the address its provider gives), not as a changed one.
        (paths.state_dir() / "instances" / f"{provider}-{instance_id}.known_hosts").unlink(missing_ok=True)
    say(f"started {provider} instance {instance_id} of {name} again{rate}: billing from now")
    return wait_for_ssh(api, host, instance_id, say, poll_seconds=poll_seconds)


def _choose_offer(api: CloudApi, host: HostConfig, offer_id: str | None) -> Offer:
    query = OfferQuery.for_host(host)
    if offer_id is not None:
        chosen = [o for o in api.offers(OfferQuery(cloud_type="all")) if o.offer_id == offer_id]
        if not chosen:
            raise ProviderError(
                f"{host.provider}: offer {offer_id} is no longer available; list offers again",
                provider=host.provider,
            )
        if host.max_price_per_hour is not None and chosen[0].price_per_hour > host.max_price_per_hour + 1e-9:
            raise UsageError(
                f"offer {offer_id} costs more than max_price_per_hour of {host.name} ({host.max_price_per_hour:g})"
            )
        return chosen[0]
    offers = api.offers(query)
    if offers:
        return min(offers, key=lambda o: (o.price_per_hour, o.region))
    wanted = ", ".join(
        part
        for part in (
            query.instance_type,
            f"{query.gpu_count}× {query.gpu}" if query.gpu else None,
            f"in {query.region}" if query.region else None,
            f"at most ${query.max_price:g}/h" if query.max_price is not None else None,
        )
        if part
    )
    why = ""
    if host.spec.supports(Capability.SHORTAGE_REASON):
        why = cast(ExplainsShortage, api).describe_shortage(query)
    raise ProviderError(
        f"{host.provider} has nothing matching {host.name} ({wanted}) right now"
        + (f": {why}" if why else "")
        + f"; `gpubox offers --provider {host.provider}` shows what there is",
        provider=host.provider,
        code="capacity",
    )


def _record_launch(host: HostConfig, instance_id: str, name: str, offer: Offer) -> None:
    from gpubox.state import open_state

    settings = host.provider_settings()
    with open_state() as state:
        state.record_instance(
            provider=host.provider,
            instance_id=instance_id,
            host=host.name,
            name=name,
            api_url=settings.api_url,
            price_per_hour=offer.price_per_hour,
            gpu=f"{offer.gpu_count}× {offer.gpu}",
            region=offer.region,
        )
        state.record_host(host.name, host.provider)
        # Billing runs from the launch, held by no gpubox process: the provider charges whether or not one is.
        state.open_billing(
            host.name, offer.price_per_hour, price_source=f"live price from {host.provider}", estimate=False
        )


def wait_for_ssh(
    api: CloudApi,
    host: HostConfig,
    instance_id: str,
    say: Say,
    *,
    poll_seconds: float = 2.0,
    recheck_seconds: float = 10.0,
) -> Instance:
    """Wait until the provider says the instance runs and its SSH port answers with an SSH banner, for at most
    the host's launch_timeout; on timeout the instance stays recorded (and billing) and the error says how to
    go on."""
    from gpubox.remote.sshd import banner_answers
    from gpubox.state import open_state

    deadline = time.monotonic() + host.launch_timeout
    said = ""
    instance: Instance | None = None
    next_api = 0.0
    while True:
        now = time.monotonic()
        if instance is None or not instance.ssh_ready or now >= next_api:
            try:
                instance = api.instance(instance_id)
            except (HostError, ProviderError) as exc:
                if time.monotonic() >= deadline:
                    raise
                if said != str(exc):
                    said = str(exc)
                    say(f"! {exc} (still waiting)")
                time.sleep(poll_seconds)
                continue
            next_api = time.monotonic() + recheck_seconds
            with open_state() as state:
                record = state.instance(host.provider, instance_id)
            if instance is None or not instance.billing:
                status = instance.status_text if instance is not None else "gone"
                if instance is not None and instance.phase == "stopped":
                    if record is not None:
                        settle_stopped(host, record, instance)
                    raise ProviderError(
                        f"{host.provider} instance {instance_id} stopped while starting (the provider says: "
                        f"{status}); `gpubox up {host.name}` starts it again, `gpubox down {host.name}` "
                        "terminates it",
                        provider=host.provider,
                    )
                if record is not None:
                    forget_instance(host, record, f"ended while starting ({status})")
                raise ProviderError(
                    f"{host.provider} instance {instance_id} ended while starting (the provider says: {status})",
                    provider=host.provider,
                )
            if record is not None:
                note_instance(record, instance)
            text = (
                f"{instance.status_text or instance.phase}: SSH at {instance.ssh_host}:{instance.ssh_port}"
                if instance.ssh_ready
                else f"{instance.status_text or instance.phase}: waiting for an address"
            )
            if text != said:
                said = text
                say(f"instance {instance_id} {text}")
        assert instance is not None
        if (
            instance.ssh_ready
            and instance.ssh_host
            and instance.ssh_port
            and banner_answers(instance.ssh_host, instance.ssh_port, timeout=min(5.0, poll_seconds + 1))
        ):
            with open_state() as state:
                state.update_instance(host.provider, instance_id, instance_state="running")
            say(f"SSH answers on {instance.ssh_host}:{instance.ssh_port}")
            return instance
        if time.monotonic() >= deadline:
            price = f" at ${instance.price_per_hour:g}/h" if instance.price_per_hour is not None else ""
            raise HostUnreachable(
                f"{host.provider} instance {instance_id} of {host.name} did not answer SSH within "
                f"{host.launch_timeout:g} s (launch_timeout); it is still running and billing{price}: "
                f"`gpubox up {host.name}` waits again, `gpubox down {host.name}` terminates it"
            )
        time.sleep(poll_seconds)


# ------------------------------------------------------------------------------------------------ orphans


@dataclass(frozen=True)
class Orphan:
    """An instance gpubox launched that bills while no gpubox process holds it up: its machine, or (stopped, and
    recorded nowhere) its disk."""

    provider: str
    instance: Instance
    host: str | None
    """The host it was launched for, from its name."""
    why: str
    recorded: bool
    """Whether this machine's state knows it (False: launched elsewhere, or the state was lost)."""

    @property
    def stopped(self) -> bool:
        """Stopped with its disk kept: only the disk bills, at the provider's storage rate."""
        return self.instance.phase == "stopped"

    def describe(self) -> str:
        return f"{describe_instance(self.instance)}, named {self.instance.name}: {self.why}"


@dataclass(frozen=True)
class OrphanReport:
    orphans: list[Orphan]
    problems: list[tuple[str, str]]
    asked: list[str]


def find_orphans(hosts: HostsConfig, *, providers: Sequence[ProviderSettings] | None = None) -> OrphanReport:
    """Ask each configured provider which instances exist; every billing one that gpubox named and no gpubox
    process holds is an orphan. Recorded instances the provider no longer has are ended on the way."""
    from gpubox.state import open_state

    chosen = list(providers) if providers is not None else configured_providers(hosts)
    jobs: dict[str, Callable[[], object]] = {}
    for settings in chosen:
        api = _api(settings)
        jobs[settings.name] = api.instances
    budgets = {s.name: s.offers_timeout for s in chosen}
    results, errors, _seconds = _in_parallel(jobs, budgets)
    with open_state() as state:
        recorded = state.kept_instances()
        held = {s.host for s in state.supervisors() if s.alive()}
    orphans: list[Orphan] = []
    for settings in chosen:
        if settings.name not in results:
            continue
        listed: list[Instance] = results[settings.name]  # type: ignore[assignment]
        listed_ids = {i.instance_id for i in listed}
        mine = [r for r in recorded if r.provider == settings.name and r.api_url == settings.api_url]
        for gone in mine:
            if gone.instance_id not in listed_ids:
                forget_vanished(gone.host, gone)
        by_id = {r.instance_id: r for r in mine}
        for instance in listed:
            host = host_from_instance_name(instance.name)
            if host is None:
                continue
            record = by_id.get(instance.instance_id)
            if instance.phase == "stopped":
                # Stopped with its disk kept: one this machine recorded is its host's (`status` shows it, `up`
                # starts it again); one recorded nowhere would bill its disk unseen for ever.
                if record is None:
                    why = (
                        f"stopped with its disk kept (billed by {settings.name} for storage), recorded nowhere on "
                        "this machine (launched elsewhere, or gpubox's state was lost)"
                    )
                    orphans.append(Orphan(settings.name, instance, host, why, False))
                continue
            if not instance.billing:
                continue
            if record is not None and record.host in held:
                continue
            if record is None:
                why = "not recorded on this machine (launched elsewhere, or gpubox's state was lost)"
            else:
                why = f"launched for {record.host}, which no gpubox process holds up"
            orphans.append(Orphan(settings.name, instance, host, why, record is not None))
    return OrphanReport(orphans, [(name, errors[name]) for name in jobs if name in errors], list(jobs))


def terminate_orphans(hosts: HostsConfig, orphans: Sequence[Orphan], say: Say) -> list[str]:
    """Terminate each orphan; return what failed (each failure also leaves a recorded instance billing)."""
    from gpubox.state import open_state

    failures = []
    for orphan in orphans:
        api = _api(hosts.provider_settings(orphan.provider))
        with open_state() as state:
            known = state.instance(orphan.provider, orphan.instance.instance_id)
        try:
            if known is not None and known.billing:
                say(terminate_recorded(api, known.host, known))
            else:
                api.terminate(orphan.instance.instance_id)
                say(
                    f"terminated {orphan.provider} instance {orphan.instance.instance_id} ({orphan.instance.name})"
                )
        except (ProviderError, HostError, BadInput) as exc:
            failures.append(
                f"{orphan.provider} instance {orphan.instance.instance_id}: {exc}"
                + ("" if known is not None else "; IT IS STILL RUNNING AND BILLING")
            )
    return failures


# ---------------------------------------------------------------------------------------------- down


def refuse_unpulled_stopped(host: HostConfig) -> None:
    """`down` with its last pull, of a host whose instance is stopped with its disk kept: outputs written since
    the laptop last pulled may be on that disk and cannot be pulled without starting the instance, so
    terminating it takes a choice: `up` first, or --no-pull."""
    record = _recorded(host)
    if record is not None and record.stopped:
        raise GpuboxError(
            f"{host.provider} instance {record.instance_id} of {host.name} is stopped with its disk kept: outputs "
            "written since the last pull may be on it, and gpubox cannot pull them without starting it; nothing "
            f"was terminated: `gpubox up {host.name}` starts it (`gpubox down {host.name}` then pulls them and "
            f"terminates it), `gpubox down {host.name} --no-pull` terminates it and its disk now"
        )


def take_down_rented(
    host: HostConfig,
    project: ProjectConfig,
    *,
    keep_instance: bool = False,
    pull_outputs: bool = True,
    confirm: Confirm | None = None,
    say: Say,
    ask_to_pin: object = None,
) -> None:
    """`gpubox down` of a rented host (its supervisor already stopped): pull the outputs, stop the services, then
    terminate the instance, unless *keep_instance*.

    Terminating loses whatever is on the machine, so a pull that fails stops here, before it (unless
    *pull_outputs* is off). *confirm*, when given, is asked before terminating under active runs. A terminate
    the provider refuses raises, and the instance stays recorded as billing."""
    from gpubox.fmt import format_usd
    from gpubox.remote.providers.cloud import CloudProvider
    from gpubox.remote.session import connect_host
    from gpubox.sync.pull import pull
    from gpubox.train.runs import list_runs
    from gpubox.train.services import service_key

    provider = CloudProvider(host.spec)
    record = provider.recorded(host)
    if record is None:
        say(f"{host.name}: no {host.provider} instance recorded, nothing to terminate")
        return
    price = f" at {format_usd(record.price_per_hour)}/h" if record.price_per_hour is not None else ""
    # Only a machine gpubox has reached can hold anything of the project's.
    reached = record.state in ("running", "terminate-failed") and record.ssh_host is not None
    if reached:
        try:
            session = connect_host(
                host,
                project,
                probe=False,
                launch=False,
                ask=ask_to_pin,  # type: ignore[arg-type]
                folder="check",
            )
        except HostError as exc:
            if pull_outputs:
                raise GpuboxError(
                    f"cannot reach {host.name} to pull its outputs ({exc}); nothing was terminated: "
                    f"`gpubox down {host.name} --no-pull` terminates it without them"
                ) from None
            say(f"! could not reach {host.name}: {exc}")
        else:
            try:
                active = [r for r in list_runs(session) if not r.finished]
                if active and not keep_instance and confirm is not None:
                    names = ", ".join(f"{r.id} ({r.command})" for r in active[:3])
                    if not confirm(
                        f"{len(active)} run(s) still running on {host.name}: {names}; terminate anyway?"
                    ):
                        raise GpuboxError(f"nothing terminated: {host.name} keeps running{price}")
                if pull_outputs:
                    report = pull(session, project, [])
                    say(f"pulled outputs from {host.name}: {report.summary()}")
                    if report.errors:
                        raise GpuboxError(
                            f"pulling outputs from {host.name} failed ({report.errors[0]}); nothing was "
                            f"terminated: fix it, or `gpubox down {host.name} --no-pull` to terminate without them"
                        )
                key = None if not keep_instance else service_key(session)
                stopped = []
                for service in calls.service_list(session.agent, key=key).get("services", []):
                    if service.get("state") != "stopped":
                        calls.service_stop(session.agent, key=service["key"], name=service["name"])
                        stopped.append(str(service["name"]))
                if stopped:
                    say(f"stopped {', '.join(stopped)} on {host.name}")
            finally:
                session.close()
    if keep_instance and record.stopped:
        say(
            f"kept {host.provider} instance {record.instance_id} of {host.name} stopped (--keep-instance); its "
            f"disk bills at {host.provider}'s storage rate until `gpubox down {host.name}` terminates it"
        )
        return
    if keep_instance:
        say(
            f"kept {host.provider} instance {record.instance_id} of {host.name} running (--keep-instance){price}"
        )
        return
    say(provider.terminate(host))


def describe_orphans(report: OrphanReport) -> list[str]:
    """Lines for `gpubox status` and `gpubox hosts`: every orphan, and providers that could not be asked."""
    lines = [
        f"! {'its disk billing' if orphan.stopped else 'billing'}, held by no gpubox: {orphan.describe()}"
        for orphan in report.orphans
    ]
    if report.orphans:
        lines.append("  `gpubox down --orphans` terminates them (it asks first)")
    lines.extend(f"! {name}: could not check for instances: {problem}" for name, problem in report.problems)
    return lines
