"""Throwaway "remote" hosts for tests: network namespaces joined to this machine by veths, each running sshd.

Host ``i`` of a lab is the namespace ``gbx<random>-<i>``. Its veth pair has the root side ``gbx<random>-<i>h``
addressed ``10.251.<k>.1/24`` and the namespace side ``eth0`` addressed ``10.251.<k>.2/24``, where an sshd
listens on port 22. Nothing here ever addresses anything but this machine and those namespaces, and every
lab removes its namespaces and veths (and with them their routes and qdiscs) when it closes, however far its
setup got.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from tests.support.sshd import SshServer

__all__ = [
    "NetemUnavailable",
    "NetnsHost",
    "NetnsHostsFactory",
    "NetnsLab",
    "netns_available",
    "netns_hosts",
    "netns_pair",
    "netns_unavailable_reason",
]

SUBNET_PREFIX = "10.251"
NAME_PREFIX = "gbx"
NAMESPACE_IFACE = "eth0"
_COMMAND_TIMEOUT = 30.0

NetnsHostsFactory = Callable[[int], list["NetnsHost"]]


class NetemUnavailable(RuntimeError):
    """The kernel lacks the netem qdisc (``CONFIG_NET_SCH_NETEM``), so delay and loss cannot be injected."""


def _run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _namespaces() -> set[str]:
    listing = _run(["ip", "netns", "list"]).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def _link_exists(name: str) -> bool:
    return _run(["ip", "link", "show", "dev", name], check=False).returncode == 0


@dataclass
class NetnsHost:
    """One namespace "host": its sshd answers on ``ip`` port 22, reached through root-side veth ``veth``."""

    name: str
    netns: str
    ip: str
    veth: str
    gateway: str
    server: SshServer = field(repr=False)
    _uplink: str | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return self.server.port

    def known_hosts_line(self) -> str:
        return self.server.known_hosts_line()

    def exec(self, *argv: str, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run *argv* inside the namespace; defaults: captured text output, ``check=True``, a 30 s timeout."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("check", True)
        kwargs.setdefault("timeout", _COMMAND_TIMEOUT)
        return subprocess.run(["ip", "netns", "exec", self.netns, *argv], **kwargs)

    def link_down(self) -> None:
        """Cut the wire: packets to and from the host are dropped until :meth:`link_up`.

        The namespace end goes down, which takes the carrier off the root-side end while leaving it
        administratively up. Downing the root-side end itself would delete its connected route and send
        traffic for ``ip`` out through the default gateway, i.e. off this machine; with only the carrier
        gone the route stays, so new connections time out (as they do to a crashed or unplugged host)
        instead of leaking or failing fast.
        """
        _run(["ip", "-n", self.netns, "link", "set", NAMESPACE_IFACE, "down"])
        route = _run(["ip", "-o", "route", "get", self.ip], check=False).stdout
        if f"dev {self.veth} " not in route + " ":
            # E.g. net.ipv4.conf.all.ignore_routes_with_linkdown=1: better to refuse than to leak.
            self.link_up()
            raise RuntimeError(f"with {self.veth} down, {self.ip} would be routed elsewhere: {route.strip()}")

    def link_up(self) -> None:
        _run(["ip", "-n", self.netns, "link", "set", NAMESPACE_IFACE, "up"])

    def uplink(self) -> str:
        """A second wire, ``eth1``, from the host to this machine, apart from the laptop's (``eth0``, which
        :meth:`link_down` cuts): the host's way to the cloud's API, which stays up when the laptop's link goes.
        Returns this machine's address on it, for a fake cloud to listen on. Made once; the namespace's
        deletion removes it."""
        if self._uplink is None:
            with _allocation_lock():
                (octet,) = _free_octets(1)
                veth = f"{self.netns}u"
                _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth1", "netns", self.netns])
                _run(["ip", "addr", "add", f"{SUBNET_PREFIX}.{octet}.1/24", "dev", veth])
                _run(["ip", "link", "set", veth, "up"])
                _run(["ip", "-n", self.netns, "addr", "add", f"{SUBNET_PREFIX}.{octet}.2/24", "dev", "eth1"])
                _run(["ip", "-n", self.netns, "link", "set", "eth1", "up"])
                self._uplink = f"{SUBNET_PREFIX}.{octet}.1"
        return self._uplink

    def netem(self, delay_ms: int = 0, loss_percent: float = 0.0) -> None:
        """Delay and/or drop packets sent to the host (root-side veth egress); replaces earlier settings.

        Only one direction is shaped, so ``delay_ms`` is added once to every round trip.
        """
        if delay_ms < 0 or not 0.0 <= loss_percent <= 100.0:
            raise ValueError(
                f"netem needs delay_ms >= 0 and 0 <= loss_percent <= 100, got {delay_ms}, {loss_percent}"
            )
        argv = ["tc", "qdisc", "replace", "dev", self.veth, "root", "netem", "delay", f"{delay_ms}ms"]
        if loss_percent:
            argv += ["loss", f"{loss_percent}%"]
        result = _run(argv, check=False)
        if result.returncode != 0:
            message = f"`{' '.join(argv)}` failed: {result.stderr.strip()}"
            if "unknown" in result.stderr.lower():
                raise NetemUnavailable(f"this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM): {message}")
            raise RuntimeError(message)

    def clear_netem(self) -> None:
        if "netem" in self.qdiscs():
            _run(["tc", "qdisc", "del", "dev", self.veth, "root"])

    def qdiscs(self) -> str:
        """``tc qdisc show`` for the root-side veth."""
        return _run(["tc", "qdisc", "show", "dev", self.veth]).stdout


# Within one process a thread lock suffices; the file lock covers concurrent pytest processes (xdist workers,
# two checkouts) that would otherwise scan the same free subnet before either has claimed it.
_allocation_thread_lock = threading.Lock()
_ALLOCATION_LOCK_FILE = Path(tempfile.gettempdir()) / "gpubox-netns.lock"


@contextlib.contextmanager
def _allocation_lock() -> Iterator[None]:
    with _allocation_thread_lock, open(_ALLOCATION_LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _free_octets(count: int) -> list[int]:
    """Third octets of ``10.251.<k>.0/24`` subnets that no address or route in the root namespace uses."""
    seen = (
        _run(["ip", "-o", "-4", "addr", "show"]).stdout
        + _run(["ip", "-4", "route", "show", "table", "all"]).stdout
    )
    used = {int(k) for k in re.findall(rf"\b{re.escape(SUBNET_PREFIX)}\.(\d+)\.", seen)}
    free = [k for k in range(1, 255) if k not in used]
    if len(free) < count:
        raise RuntimeError(f"only {len(free)} free {SUBNET_PREFIX}.x.0/24 subnets left, {count} needed")
    return free[:count]


# Labs not yet closed, so an interpreter exit that skipped fixture teardown still removes them.
_open_labs: set[NetnsLab] = set()


@atexit.register
def _close_forgotten_labs() -> None:
    for lab in list(_open_labs):
        with contextlib.suppress(Exception):
            lab.close()


class NetnsLab:
    """``count`` :class:`NetnsHost` s; use as a context manager or call :meth:`start` and :meth:`close`."""

    def __init__(self, count: int, folder: Path) -> None:
        if count < 1:
            raise ValueError(f"a lab needs at least one host, got {count}")
        self.count = count
        self.folder = folder
        self.tag = NAME_PREFIX + secrets.token_hex(3)
        self.hosts: list[NetnsHost] = []
        self._owned: set[tuple[str, str]] = set()

    @property
    def namespaces(self) -> list[str]:
        return [host.netns for host in self.hosts]

    @property
    def veths(self) -> list[str]:
        return [host.veth for host in self.hosts]

    def start(self) -> NetnsLab:
        _open_labs.add(self)
        try:
            with _allocation_lock():
                for index, octet in enumerate(_free_octets(self.count)):
                    netns = f"{self.tag}-{index}"
                    ip = f"{SUBNET_PREFIX}.{octet}.2"
                    host = NetnsHost(
                        name=f"host{index}",
                        netns=netns,
                        ip=ip,
                        veth=f"{netns}h",
                        gateway=f"{SUBNET_PREFIX}.{octet}.1",
                        server=SshServer(self.folder / f"sshd-{index}", listen=ip, netns=netns),
                    )
                    self.hosts.append(host)
                    self._wire(host)
            for host in self.hosts:
                host.server.start()
        except BaseException as exc:
            try:
                self.close()
            except Exception as cleanup:
                exc.add_note(str(cleanup))
            raise
        return self

    def _wire(self, host: NetnsHost) -> None:
        # Ownership is recorded only once a step succeeded: a name clash with someone else's namespace or
        # link must not make close() delete theirs.
        _run(["ip", "netns", "add", host.netns])
        self._owned.add(("netns", host.netns))
        veth_pair = ["type", "veth", "peer", "name", NAMESPACE_IFACE, "netns", host.netns]
        _run(["ip", "link", "add", host.veth, *veth_pair])
        self._owned.add(("link", host.veth))
        _run(["ip", "addr", "add", f"{host.gateway}/24", "dev", host.veth])
        _run(["ip", "link", "set", host.veth, "up"])
        _run(["ip", "-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", NAMESPACE_IFACE])
        _run(["ip", "-n", host.netns, "link", "set", NAMESPACE_IFACE, "up"])
        _run(["ip", "-n", host.netns, "link", "set", "lo", "up"])

    def close(self) -> None:
        """Stop every sshd and delete every namespace and veth; safe to call twice or after a failed start.

        Every step is attempted even when an earlier one fails; the failures are raised together at the end.
        """
        errors: list[str] = []

        def attempt(what: str, action: Callable[[], object]) -> None:
            try:
                action()
            except Exception as exc:
                errors.append(f"{what}: {exc}")

        namespaces = _namespaces()
        for host in reversed(self.hosts):
            has_netns = ("netns", host.netns) in self._owned and host.netns in namespaces
            has_veth = ("link", host.veth) in self._owned and _link_exists(host.veth)
            if has_netns and has_veth:
                # Mend the wire first, so the sshd's FIN/RST reaches clients still connected from this side
                # and their sockets do not keep retransmitting towards an address about to lose its route.
                attempt(f"clear netem on {host.veth}", host.clear_netem)
                attempt(f"link up {host.netns}", host.link_up)
            attempt(f"stop sshd in {host.netns}", host.server.stop)
            if has_netns:
                attempt(
                    f"kill processes left in {host.netns}", partial(_kill_namespace_processes, host.netns)
                )
            if has_veth:
                # Deleting one end deletes the pair, its address, route and qdisc.
                attempt(f"delete {host.veth}", partial(_run, ["ip", "link", "del", host.veth]))
            if has_netns:
                attempt(f"delete {host.netns}", partial(_run, ["ip", "netns", "del", host.netns]))
        left = self.leftovers()
        if left:
            errors.append(f"still present after cleanup: {', '.join(left)}")
        else:
            self._owned.clear()
            _open_labs.discard(self)
        if errors:
            raise RuntimeError(f"netns lab {self.tag} cleanup failed: " + "; ".join(errors))

    def leftovers(self) -> list[str]:
        """Namespaces and root-side veths this lab created that still exist."""
        namespaces = _namespaces()
        return [
            f"{kind} {name}"
            for kind, name in sorted(self._owned)
            if (name in namespaces if kind == "netns" else _link_exists(name))
        ]

    def __enter__(self) -> NetnsLab:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _kill_namespace_processes(netns: str) -> None:
    """End what still runs in *netns*: SSH sessions setsid() away from the sshd's process group.

    Everything in one of our namespaces was started by this lab (its sshd and what clients ran through it),
    and a namespace with processes in it outlives ``ip netns del``. SIGTERM comes first because the namespace
    shares the filesystem with everything else: a session shell SIGKILLed inside its rc files can leave
    a lock behind (pyenv's rehash lock did, stalling every later login on the machine).
    """
    listing = _run(["ip", "netns", "pids", netns], check=False).stdout
    pids = [int(pid) for pid in listing.split() if pid.isdigit() and int(pid) != os.getpid()]
    for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie (state Z) left for a parent that has not reaped it yet no longer holds the namespace.
    return status.rsplit(")", 1)[-1].split()[0] != "Z"


def netns_unavailable_reason() -> str | None:
    """Why this process cannot build network namespaces, or None when it can."""
    if os.geteuid() != 0:
        return f"not running as root (euid {os.geteuid()})"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=_COMMAND_TIMEOUT)
    if probe.returncode != 0:
        return f"`ip netns list` failed: {probe.stderr.strip()}"
    return None


@pytest.fixture
def netns_available() -> None:
    """Skips the test where namespaces cannot be built; for tests that use :class:`NetnsLab` directly."""
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(f"network namespaces need root: {reason}")
    if not (shutil.which("sshd") or os.path.exists("/usr/sbin/sshd")):
        pytest.fail("OpenSSH sshd is missing: the README's test command installs openssh-server")


@pytest.fixture
def netns_hosts(netns_available: None, tmp_path: Path) -> Iterator[NetnsHostsFactory]:
    """``netns_hosts(n)``: n fresh namespace hosts with sshd on port 22; all removed at teardown."""
    labs: list[NetnsLab] = []

    def make(count: int) -> list[NetnsHost]:
        lab = NetnsLab(count, tmp_path / f"netns-lab{len(labs)}")
        labs.append(lab)
        return list(lab.start().hosts)

    try:
        yield make
    finally:
        errors: list[Exception] = []
        for lab in reversed(labs):
            try:
                lab.close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise RuntimeError("; ".join(str(error) for error in errors))


@pytest.fixture
def netns_pair(netns_hosts: NetnsHostsFactory) -> tuple[NetnsHost, NetnsHost]:
    first, second = netns_hosts(2)
    return first, second
