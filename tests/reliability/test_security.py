"""The security promises of the design, each tested through the real parts.

- A changed host key is refused by every command, with both fingerprints, and nothing changes anywhere.
- Tunnels and the host's Jupyter/TensorBoard listen on 127.0.0.1 only; from another network namespace no port
  answers (root only).
- A symlink in the project that points to ~/.ssh is never followed: not by sync, not by pull.
- The agent refuses every path that resolves outside the project root (``..``, absolute paths, symlinked parents,
  a parent swapped for a symlink between manifest and apply), and answers garbage frames with one protocol
  error, writing nothing. The requests are hand-made frames on a real SSH channel to a real sshd.
- Jupyter's token appears in nothing gpubox wrote: its state folder (files, SQLite rows, logs), the output of
  every command (``--json`` included) and the host's ``~/.gpubox``, except the one file where it must live.
- Shell syntax in configuration values never runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from gpubox.errors import GpuboxError, RemoteError
from gpubox.remote.agent.client import AgentSession
from gpubox.remote.agent.host import MAX_FRAME, PROTOCOL
from gpubox.remote.connection import Connection, Endpoint
from tests.reliability.support_snapshots import difference, sqlite_dump, state_facts, tree_facts
from tests.support.cli import host_entry
from tests.support.netns import NetnsLab, netns_unavailable_reason
from tests.support.sshd import SshServer

pytestmark = pytest.mark.integration

KEY_MARK = b"GBX-PRIVATE-KEY-MARK"


@dataclass
class Place:
    """A project folder, its host folder on a real sshd, and a gpubox home of its own."""

    base: Path
    project: Path
    remote: Path
    home: Path
    gpubox_home: Path
    server: SshServer
    env: dict[str, str]
    transcript: list[tuple[tuple[str, ...], subprocess.CompletedProcess[str]]] = field(default_factory=list)

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "gpubox", *argv],
            cwd=self.project,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="surrogateescape",
            timeout=timeout,
            env=self.env,
        )
        self.transcript.append((argv, result))
        return result

    def ok(self, *argv: str, timeout: float = 120) -> str:
        result = self.run(*argv, timeout=timeout)
        assert result.returncode == 0, (argv, result.stdout, result.stderr)
        assert "Traceback" not in result.stdout + result.stderr
        return result.stdout

    def snapshot(self) -> dict[str, object]:
        facts: dict[str, object] = {}
        for where, found in (
            ("project", tree_facts(self.project)),
            ("gpubox-home", state_facts(self.gpubox_home)),
            ("remote", tree_facts(self.remote)),
            ("home/.ssh", tree_facts(self.home / ".ssh")),
        ):
            facts.update({f"{where}/{rel}": fact for rel, fact in found.items()})
        return facts

    @property
    def host_home(self) -> Path:
        """The ssh user's home on the host (the session's test host home): where the agent keeps ~/.gpubox."""
        return self.server.home


def _place(base: Path, **host: object) -> Place:
    home = base / "user-home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (home / ".ssh" / "id_ed25519").write_bytes(KEY_MARK + b"\n")
    (home / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAA-the-users-own\n")
    server = SshServer(base / "sshd").start()
    project = base / "project"
    project.mkdir()
    remote = base / f"remote-{os.urandom(4).hex()}"
    (project / "gpubox.toml").write_text("[sync]\n")
    (project / "hosts.toml").write_text(
        host_entry("box", server, **{"accept_new": True, "remote_dir": str(remote), **host})
    )
    (project / "train.py").write_text("print('training')\n")
    env = {
        k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "XDG_CONFIG_HOME", "XDG_STATE_HOME")
    }
    env |= {"HOME": str(home), "GPUBOX_HOME": str(base / "gpubox-home")}
    return Place(base, project, remote, home, base / "gpubox-home", server, env)


def _cleanup(place: Place) -> None:
    place.server.stop()
    for trash in (place.host_home / ".gpubox" / "trash").glob(f"{place.remote.name}-*"):
        shutil.rmtree(trash, ignore_errors=True)


def _fingerprint(server: SshServer) -> str:
    public = server.files.host_key.with_name(server.files.host_key.name + ".pub")
    listed = subprocess.run(["ssh-keygen", "-lf", str(public)], capture_output=True, text=True, check=True)
    return listed.stdout.split()[1]


# ---------------------------------------------------------------------------------- 1. changed host key


@dataclass
class Impostor:
    place: Place
    impostor: SshServer
    pinned: str
    presented: str


@pytest.fixture(scope="module")
def impostor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Impostor]:
    """A project synced to a host whose key gpubox pinned; then another sshd, with another key, on its port."""
    place = _place(tmp_path_factory.mktemp("hostkey"))
    place.ok("sync")
    place.ok("run", "--", "echo", "a run to look at later")
    pinned = _fingerprint(place.server)
    port = place.server.port
    place.server.stop()
    impostor = SshServer(place.base / "impostor", port=port).start()
    try:
        yield Impostor(place, impostor, pinned, _fingerprint(impostor))
    finally:
        impostor.stop()
        _cleanup(place)


HOST_COMMANDS = [
    ("ssh", "box", "--", "touch", "gbx-was-here"),
    ("ssh", "box", "--accept-new", "--", "true"),
    ("sync",),
    ("sync", "--accept-new", "--verify"),
    ("pull",),
    ("run", "--", "touch", "gbx-was-here"),
    ("runs",),
    ("logs", "r-1"),
    ("stop", "r-1"),
    ("check", "box", "--accept-new"),
]


@pytest.mark.parametrize("argv", HOST_COMMANDS, ids=["-".join(a).replace("--", "") for a in HOST_COMMANDS])
def test_a_changed_host_key_is_refused_by_every_command(impostor: Impostor, argv: tuple[str, ...]) -> None:
    """accept_new = true in hosts.toml, and --accept-new on the command line, change nothing about it."""
    place = impostor.place
    (place.project / "new-file.py").write_text("would be sent\n")
    try:
        before = place.snapshot()
        result = place.run(*argv)
        after = place.snapshot()
    finally:
        (place.project / "new-file.py").unlink()
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpubox: "), result.stderr
    assert f"HOST KEY CHANGED for [127.0.0.1]:{impostor.impostor.port}" in lines[0]
    assert f"expected ED25519 {impostor.pinned}, got ED25519 {impostor.presented}" in lines[0]
    assert before == after, difference(before, after)  # the pin, the state, the project, the host folder
    assert not (place.remote / "new-file.py").exists()
    assert not list(place.host_home.glob("gbx-was-here")) and not (place.remote / "gbx-was-here").exists()


def test_a_changed_key_pinned_in_the_users_known_hosts_is_refused(tmp_path: Path) -> None:
    place = _place(tmp_path, accept_new=False)
    try:
        (place.home / ".ssh" / "known_hosts").write_text(place.server.known_hosts_line())
        place.ok("sync")
        pinned = _fingerprint(place.server)
        port = place.server.port
        place.server.stop()
        impostor = SshServer(tmp_path / "impostor", port=port).start()
        try:
            before = place.snapshot()
            result = place.run("sync", "--accept-new", "--verify")
            assert result.returncode == 3, result.stderr
            assert f"expected ED25519 {pinned}, got ED25519 {_fingerprint(impostor)}" in result.stderr
            assert before == place.snapshot()
        finally:
            impostor.stop()
    finally:
        _cleanup(place)


# ------------------------------------------------------------------------ 2. services and their tunnels


@dataclass
class Services:
    place: Place
    status: dict[str, object]
    token: str
    tunnel_ports: dict[str, int]
    host_ports: dict[str, int]
    key: str


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """`gpubox up --detach` on a real sshd host: Jupyter and TensorBoard on the host, tunnels here."""
    place = _place(tmp_path_factory.mktemp("services"))
    try:
        up = place.ok("up", "box", "--detach", timeout=900)
        assert "jupyter      http://127.0.0.1:" in up and "?token=<redacted>" in up, up
        status = json.loads(place.ok("status", "--json"))
        (box,) = [h for h in status["hosts"] if h["name"] == "box"]
        tunnel_ports = {s["name"]: int(s["url"].split(":")[2].split("/")[0]) for s in box["services"]}
        host_ports = {s["name"]: int(s["host_port"]) for s in box["services"]}
        assert set(tunnel_ports) == {"jupyter", "tensorboard"}, box
        secret = json.loads(place.ok("status", "--json", "--show-secrets"))  # the user asks: shown
        (shown,) = [
            s["url"]
            for h in secret["hosts"]
            if h["name"] == "box"
            for s in h["services"]
            if s["name"] == "jupyter"
        ]
        token = shown.split("token=")[1]
        keys = [
            p.parent.name
            for p in (place.host_home / ".gpubox" / "services").glob(f"{place.remote.name}-*/jupyter")
        ]
        assert len(keys) == 1, keys
        yield Services(place, status, token, tunnel_ports, host_ports, keys[0])
    finally:
        place.run("down", "box", "--yes", timeout=120)
        _cleanup(place)


def _listeners() -> dict[int, set[str]]:
    """Every TCP port in LISTEN state on this machine, with the addresses it is bound to."""
    found: dict[int, set[str]] = {}
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with contextlib.suppress(OSError), open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] != "0A":  # LISTEN
                    continue
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)
                if family == socket.AF_INET:
                    raw = raw[::-1]
                else:
                    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                found.setdefault(int(port, 16), set()).add(socket.inet_ntop(family, raw))
    return found


def test_tunnels_and_services_listen_on_loopback_only(services: Services) -> None:
    listening = _listeners()
    for name, port in [*services.tunnel_ports.items(), *services.host_ports.items()]:
        # 127.0.0.1, and never a wildcard or an outside address (another program may hold ::1 on that port).
        bound = listening.get(port, set())
        assert "127.0.0.1" in bound and bound <= {"127.0.0.1", "::1"}, (name, port, bound)
    jupyter = f"http://127.0.0.1:{services.tunnel_ports['jupyter']}"
    assert httpx.get(f"{jupyter}/api/status", timeout=30).status_code == 403  # Jupyter keeps its token
    assert httpx.get(f"{jupyter}/api/status", params={"token": services.token}, timeout=30).status_code == 200


@pytest.mark.netns
def test_no_tunnel_or_service_port_answers_from_another_namespace(services: Services, tmp_path: Path) -> None:
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(f"network namespaces need root: {reason}")
    ports = sorted({*services.tunnel_ports.values(), *services.host_ports.values()})
    probe = (
        "import socket, sys\n"
        "for port in map(int, sys.argv[2:]):\n"
        "    s = socket.socket()\n"
        "    s.settimeout(3)\n"
        "    print(port, s.connect_ex((sys.argv[1], port)))\n"
    )
    with NetnsLab(1, tmp_path / "lab") as lab:
        (outsider,) = lab.hosts
        # This machine as the namespace sees it: its veth address, the namespace's only way out.
        seen = outsider.exec("python3", "-c", probe, outsider.gateway, *map(str, ports)).stdout.split("\n")
        sshd = outsider.exec("python3", "-c", probe, outsider.gateway, str(services.place.server.port)).stdout
    answers = dict(line.split() for line in seen if line)
    assert all(code != "0" for code in answers.values()), answers
    assert set(answers) == {str(p) for p in ports}
    assert sshd.split()[1] != "0"  # the test sshd is on loopback too


# ----------------------------------------------------------------------- 3. Jupyter's token stays secret


def _holding(root: Path, secret: bytes, *, skip: tuple[str, ...] = ()) -> list[str]:
    """The files under *root* whose bytes contain *secret* (symlinks not followed)."""
    found = []
    for folder, folders, files in os.walk(root):
        folders[:] = [f for f in folders if os.path.join(folder, f) not in skip]
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with contextlib.suppress(OSError), open(path, "rb") as handle:
                if secret in handle.read():
                    found.append(os.path.relpath(path, root))
    return found


def test_the_jupyter_token_is_nowhere_gpubox_wrote(services: Services) -> None:
    place, token = services.place, services.token
    assert re.fullmatch(r"[0-9a-f]{48}", token), token
    secret = token.encode()
    # Commands of every kind, their --json forms and an error or two, so their output can be searched.
    for argv in (
        ("status",),
        ("status", "--json"),
        ("hosts",),
        ("hosts", "--json"),
        ("runs", "--json"),
        ("cost", "--json"),
        ("sync", "--json"),
        ("check", "box", "--json"),
        ("up", "box"),  # refused: already up (one error line)
        ("open", "nosuch"),
    ):
        place.run(*argv)
    asked = {("status", "--json", "--show-secrets"), ("open", "jupyter", "--print")}
    place.run("open", "jupyter", "--print")
    for argv, result in place.transcript:
        if argv in asked:
            assert token in result.stdout, argv  # the user asked for it: there it is
            continue
        assert token not in result.stdout + result.stderr, argv
    # gpubox's own folder: state database (raw bytes and rows), pins, logs of the detached gpubox.
    assert _holding(place.gpubox_home, secret) == []
    assert not [row for row in sqlite_dump(place.gpubox_home / "state" / "gpubox.db") if token in row]
    assert (place.gpubox_home / "state" / "logs").is_dir()  # the detached `up` logged there, and was searched
    # The host's ~/.gpubox: only the service's spec (0600, in a 0700 folder) holds it, for `open` and `status
    # --show-secrets` from any gpubox, and for the idle monitor's question to Jupyter about busy kernels.
    gpubox_dir = place.host_home / ".gpubox"
    found = _holding(gpubox_dir, secret, skip=(str(gpubox_dir / "envs"),))
    spec = f"services/{services.key}/jupyter/spec.json"
    assert found == [spec], found
    assert (gpubox_dir / spec).stat().st_mode & 0o777 == 0o600
    assert (gpubox_dir / spec).parent.stat().st_mode & 0o777 == 0o700
    assert (gpubox_dir / spec).parent.joinpath("log").is_file()  # Jupyter's own log: searched, token-free
    # Nor on any command line (`ps`): it travels in Jupyter's environment.
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            assert secret not in cmdline.read_bytes(), cmdline


# ------------------------------------------------------------------------------ 4. symlinks to ~/.ssh


@pytest.fixture
def place(tmp_path: Path) -> Iterator[Place]:
    found = _place(tmp_path)
    try:
        yield found
    finally:
        _cleanup(found)


def test_a_symlink_to_dot_ssh_in_the_project_is_not_followed(place: Place) -> None:
    ssh = place.home / ".ssh"
    (place.project / "keys").symlink_to(ssh)  # absolute, to the folder
    (place.project / "id").symlink_to(ssh / "id_ed25519")  # absolute, to the key
    (place.project / "src").mkdir()
    (place.project / "src" / "up").symlink_to(
        os.path.relpath(ssh, place.project / "src")
    )  # relative, escaping
    (place.project / "src" / "here").symlink_to("../train.py")  # inside: kept as a link
    out = place.ok("sync")
    for name, target in (("keys", ssh), ("id", ssh / "id_ed25519")):
        assert f"skipped symlink {name} -> {target} (points outside the project)" in out, out
    report = json.loads(place.ok("sync", "--json", "--verify"))
    assert {link["path"] for link in report["outside_links"]} == {"keys", "id", "src/up"}
    assert sorted(os.listdir(place.remote)) == ["gpubox.toml", "hosts.toml", "src", "train.py"]
    assert os.readlink(place.remote / "src" / "here") == "../train.py"
    assert not (place.remote / "src" / "up").exists()
    assert _holding(place.remote, KEY_MARK) == []
    assert _holding(place.host_home / ".gpubox" / "trash", KEY_MARK) == []


def test_private_keys_copied_into_the_project_are_held_back(place: Place) -> None:
    """Every kind of `id_*` key (the legacy DSA one was sent before), a .pem and a .env stay here."""
    (place.project / ".ssh").mkdir()
    for name in ("id_ed25519", "id_dsa", "id_ecdsa_sk", "id_rsa.old"):
        (place.project / ".ssh" / name).write_bytes(KEY_MARK + name.encode())
    (place.project / "deploy.pem").write_bytes(KEY_MARK)
    (place.project / ".env").write_bytes(b"API_KEY=" + KEY_MARK)
    out = place.ok("sync")
    assert "held back 6 secret file(s)" in out, out
    assert _holding(place.remote, KEY_MARK) == []


def test_pull_never_writes_through_a_local_symlink(place: Place) -> None:
    """Regression: `outputs -> ~/.ssh` in the project let `gpubox pull` put the host's outputs/authorized_keys
    into ~/.ssh. Now every path that would go through a local symlink is refused, and the rest is pulled."""
    place.ok("sync")
    for rel in ("outputs/authorized_keys", "runs/sub/authorized_keys", "checkpoints/model.ckpt"):
        (place.remote / rel).parent.mkdir(parents=True, exist_ok=True)
        (place.remote / rel).write_text("ssh-ed25519 AAAA-the-hosts-key\n")
    (place.project / "outputs").symlink_to(place.home / ".ssh")
    (place.project / "runs").mkdir()
    (place.project / "runs" / "sub").symlink_to(place.home / ".ssh")
    before = tree_facts(place.home / ".ssh")
    result = place.run("pull")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "outputs/authorized_keys: refusing to write through the local symlink outputs" in result.stdout
    assert "runs/sub/authorized_keys: refusing to write through the local symlink runs/sub" in result.stdout
    assert tree_facts(place.home / ".ssh") == before
    assert (place.project / "checkpoints" / "model.ckpt").is_file()  # the rest came back


def test_shell_syntax_in_configuration_never_runs(tmp_path: Path) -> None:
    odd = "r-$(touch gbx-pwned)-`touch gbx-pwned`-;touch gbx-pwned"
    place = _place(tmp_path)
    try:
        remote = tmp_path / odd
        (place.project / "hosts.toml").write_text(
            host_entry("box", place.server, accept_new=True, remote_dir=str(remote))
        )
        place.ok("sync")
        assert (remote / "train.py").is_file()
        assert place.ok("ssh", "box", "--", "pwd").strip() == str(remote)
        place.ok("run", "-f", "--", "ls")
        for folder in (tmp_path, place.project, remote, place.host_home, Path.cwd()):
            assert not (folder / "gbx-pwned").exists(), folder
    finally:
        place.remote = remote
        _cleanup(place)


# ----------------------------------------------------------------- 5. the agent, spoken to by hand


@pytest.fixture
def agent(sshd: SshServer, tmp_path: Path) -> Iterator[AgentSession]:
    """The real agent, started the way gpubox starts it, on a real SSH channel to a real sshd."""
    endpoint = Endpoint(
        alias="t",
        hostname=sshd.host,
        port=sshd.port,
        user=sshd.user,
        identity_files=(str(sshd.client_key),),
        use_default_keys=False,
    )
    with Connection(endpoint, accept_new=True, pin_file=tmp_path / "pins").open() as connection:
        session = AgentSession(connection).start()
        try:
            yield session
        finally:
            session.close()


@dataclass
class Ground:
    root: Path
    outside: Path

    def everything(self) -> dict[str, object]:
        return {"root": tree_facts(self.root), "outside": tree_facts(self.outside)}


@pytest.fixture
def ground(tmp_path: Path) -> Ground:
    """A project root on the host with symlinks out of it, next to an 'outside' with files to protect."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    for rel in ("victim.txt", "inner/secret.txt"):
        (outside / rel).parent.mkdir(parents=True, exist_ok=True)
        (outside / rel).write_text("do not touch\n")
    (root / "real" / "deeper").mkdir(parents=True)
    (root / "linked").symlink_to(outside)  # a symlinked folder at the top
    (root / "real" / "linked").symlink_to(outside / "inner")  # and one level down
    (root / "real" / "deeper" / "up").symlink_to("../../../outside")  # relative, through two parents
    (root / "file-link").symlink_to(outside / "victim.txt")  # a symlink as the last part
    return Ground(root, outside)


def _crafted(outside: Path) -> list[str]:
    return [
        "../outside/victim.txt",
        "real/../../outside/new.txt",
        str(outside / "victim.txt"),
        "/etc/passwd",
        "linked/victim.txt",
        "linked/new.txt",
        "real/linked/secret.txt",
        "real/linked/new/deep.txt",
        "real/deeper/up/victim.txt",
        "real/deeper/up/inner/secret.txt",
        ".gpubox-staging/../../outside/x",
        "a//b",
        "./x",
        "nul\0byte",
        "",
    ]


def test_the_agent_refuses_every_path_outside_the_root(agent: AgentSession, ground: Ground) -> None:
    root = str(ground.root)
    before = ground.everything()
    trash = f"gbx-security-{os.urandom(4).hex()}"
    stat_of_victim = ["f", 13, (ground.outside / "victim.txt").stat().st_mtime_ns, False, ""]
    for path in _crafted(ground.outside):
        for op in (
            {"o": "w", "p": path, "e": None, "n": 5, "m": 0, "x": False},
            {"o": "w", "p": path, "e": stat_of_victim, "n": 5, "m": 0, "x": True},
            {"o": "l", "p": path, "e": None, "t": "/etc"},
            {"o": "d", "p": path, "e": None},
            {"o": "rm", "p": path, "e": stat_of_victim},
            {"o": "rmdir", "p": path, "e": ["d", 0, 0, False, ""]},
        ):
            try:
                result, _ = agent.request_with_blob(
                    "apply", {"root": root, "trash": trash, "ops": [op]}, b"EVIL!" if op["o"] == "w" else b""
                )
            except RemoteError as exc:
                assert "refusing" in str(exc), (path, op, exc)
            else:
                (outcome,) = result["results"]
                assert outcome[0] in ("refused", "gone"), (path, op, outcome)
        with pytest.raises(RemoteError, match="refusing"):
            agent.request_with_blob("read", {"root": root, "files": [[path, 0, 100]]})
        try:
            _result, blob = agent.request_with_blob("manifest", {"root": root, "only": [path]})
        except RemoteError as exc:
            assert "refusing" in str(exc), (path, exc)
        else:
            assert json.loads(zlib.decompress(blob)) == [], path
    # A symlink as the last part is read as nothing: O_NOFOLLOW, an error for that file, no bytes.
    answer, data = agent.request_with_blob("read", {"root": root, "files": [["file-link", 0, 100]]})
    assert answer["files"][0][1] is None and data == b""
    # Listing the whole root lists the links as links, and never walks into them.
    _result, blob = agent.request_with_blob("manifest", {"root": root})
    listed = {row[0]: row[1] for row in json.loads(zlib.decompress(blob))}
    assert listed["linked"] == "l" and listed["real/deeper/up"] == "l" and "linked/victim.txt" not in listed
    # The staging of large files names only this agent's own staged files.
    for name in ("../../outside/victim.txt", "/etc/passwd", "1-part-1", f"{os.getpid()}-part-1", "x"):
        with pytest.raises(GpuboxError, match="not a file this agent staged"):
            agent.request_with_blob("stage", {"root": root, "name": name, "offset": 0}, b"EVIL!")
        op = {"o": "w", "p": "ok.txt", "e": None, "n": 13, "m": 0, "x": False, "s": name}
        with pytest.raises(GpuboxError):
            agent.request_with_blob("apply", {"root": root, "trash": trash, "ops": [op]})
    assert ground.everything() == before, difference(before, ground.everything())
    assert not (Path(agent.hello["home"]) / ".gpubox" / "trash" / trash).exists()


def test_a_folder_swapped_for_a_symlink_after_the_manifest_is_refused(
    agent: AgentSession, ground: Ground
) -> None:
    """The client plans against a manifest; before its batch arrives the host's folder becomes a symlink out."""
    root = str(ground.root)
    (ground.root / "data").mkdir()
    (ground.root / "data" / "victim.txt").write_text("do not touch\n")
    _result, blob = agent.request_with_blob("manifest", {"root": root})
    listed = {row[0]: row[1:] for row in json.loads(zlib.decompress(blob))}
    expect = listed["data/victim.txt"]
    # The swap: the real folder goes, a symlink to the outside takes its name (with a same-looking victim).
    shutil.rmtree(ground.root / "data")
    (ground.root / "data").symlink_to(ground.outside)
    os.utime(ground.outside / "victim.txt", ns=(expect[2], expect[2]))
    before = ground.everything()
    ops = [
        {"o": "w", "p": "data/victim.txt", "e": expect, "n": 5, "m": 1, "x": False},
        {"o": "w", "p": "data/new.txt", "e": None, "n": 5, "m": 1, "x": False},
        {"o": "rm", "p": "data/victim.txt", "e": expect},
        {"o": "d", "p": "data/sub", "e": None},
        {"o": "l", "p": "data/link", "e": None, "t": "/etc/passwd"},
    ]
    result, _ = agent.request_with_blob(
        "apply", {"root": root, "trash": "gbx-swap", "ops": ops}, b"EVIL!EVIL!"
    )
    assert [outcome[0] for outcome in result["results"]] == ["refused"] * len(ops), result
    assert ground.everything() == before, difference(before, ground.everything())


def _raw_exchange(
    agent: AgentSession, data: bytes, *, close: bool = False
) -> tuple[dict[str, object] | None, int]:
    """Send *data* as is on the agent's channel; return the one answer (None at EOF) and the exit status."""
    channel = agent.channel
    assert channel is not None
    channel.sendall(data)
    if close:
        channel.shutdown_write()
    answer = None
    with contextlib.suppress(GpuboxError):
        (length,) = struct.unpack(">I", agent._read_exact(4))
        answer = json.loads(agent._read_exact(length))
    deadline = time.monotonic() + 10
    while not channel.exit_status_ready() and time.monotonic() < deadline:
        time.sleep(0.02)
    return answer, channel.recv_exit_status()


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


GARBAGE = {
    "length-over-the-limit": struct.pack(">I", MAX_FRAME + 1) + b"{}",
    "length-4-gib": b"\xff\xff\xff\xff" + b"x" * 64,
    "not-json": _frame(b"not json!"),
    "not-utf8": _frame(b'"\xff"'),
    "json-array": _frame(b'["apply"]'),
    "blob-negative": _frame(b'{"id": 1, "op": "apply", "blob": -1}'),
    "blob-string": _frame(b'{"id": 1, "op": "apply", "blob": "9"}'),
    "blob-over-the-limit": _frame(b'{"id": 1, "op": "apply", "blob": %d}' % (MAX_FRAME + 1)),
}


@pytest.mark.parametrize("garbage", list(GARBAGE), ids=list(GARBAGE))
def test_the_agent_answers_a_garbage_frame_with_one_protocol_error(
    agent: AgentSession, ground: Ground, garbage: str
) -> None:
    before = ground.everything()
    answer, status = _raw_exchange(agent, GARBAGE[garbage])
    assert answer is not None and answer["ok"] is False, answer
    assert answer["error"]["kind"] == "protocol", answer  # type: ignore[index]
    assert status == 2
    assert ground.everything() == before


def test_the_agent_stops_quietly_on_a_truncated_frame(agent: AgentSession, ground: Ground) -> None:
    before = ground.everything()
    body = json.dumps({"id": 1, "op": "apply", "args": {"root": str(ground.root), "ops": []}}).encode()
    answer, status = _raw_exchange(agent, struct.pack(">I", len(body)) + body[:10], close=True)
    assert (answer, status) == (None, 0)
    assert ground.everything() == before


def test_a_good_request_after_a_refused_one_still_works(agent: AgentSession, ground: Ground) -> None:
    """One bad request does not end the session (only a broken frame does)."""
    with pytest.raises(GpuboxError):
        agent.request("apply", {"root": str(ground.root), "trash": "x", "ops": "not a list"})
    assert agent.request("hello")["protocol"] == PROTOCOL


# ------------------------------------------------------------------------------------ 6. provider API keys


def test_a_provider_api_key_is_nowhere_gpubox_wrote(tmp_path: Path, sshd: SshServer) -> None:
    """A rented host's whole day (offers, up, status, a run that prints its environment, cost, down, and a
    refused key) against the fake vast.ai whose instance is a real sshd: the key read from the environment
    variable appears in no output, no file under GPUBOX_HOME (SQLite rows included), nothing on the host."""
    from tests.support.clouds import FakeVast

    key = f"vast-secret-{os.urandom(12).hex()}"
    wrong = f"wrong-secret-{os.urandom(12).hex()}"
    cloud = FakeVast(api_key=key, ssh_host=sshd.host, ssh_port=sshd.port, boot_seconds=0.5).start()
    place = Place(
        tmp_path,
        tmp_path / "project",
        tmp_path / f"remote-{os.urandom(4).hex()}",
        tmp_path,
        tmp_path / "gh",
        sshd,
        {},
    )
    place.project.mkdir()
    (place.project / "train.py").write_text("print('training')\n")
    (place.project / "hosts.toml").write_text(
        f'[providers.vast]\napi_key_env = "GBX_TEST_VAST_KEY"\napi_url = "{cloud.url}"\n\n'
        f'[hosts.vast-box]\nprovider = "vast"\ngpu = "RTX 4090"\nuser = "{sshd.user}"\n'
        f'identity_file = "{sshd.client_key}"\nremote_dir = "{place.remote}"\nlaunch_timeout = 30\n'
    )
    place.env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    place.env |= {"GPUBOX_HOME": str(place.gpubox_home), "GBX_TEST_VAST_KEY": key}
    try:
        place.ok("offers", "--json")
        place.ok("offers")
        place.ok(
            "up", "vast-box", "--yes", "--no-tui", "--detach", "--no-services", "--accept-new", timeout=300
        )
        place.ok("status", "--json")
        place.ok("hosts", "--json")
        shown = place.ok("run", "--host", "vast-box", "-f", "--", "env", timeout=300)
        assert "GPUBOX_RUN_ID=" in shown  # the run's whole environment was printed, and searched
        place.ok("runs", "--host", "vast-box", "--json")
        place.ok("cost", "--json")
        place.env["GBX_TEST_VAST_KEY"] = wrong
        refused = place.run("offers", "--provider", "vast")
        assert refused.returncode == 3 and "GBX_TEST_VAST_KEY" in refused.stderr, refused.stderr
        place.env["GBX_TEST_VAST_KEY"] = key
        place.ok("down", "vast-box", "--yes", timeout=300)
        assert not cloud.instances
    finally:
        cloud.stop()
    for secret in (key.encode(), wrong.encode()):
        for argv, result in place.transcript:
            assert secret.decode() not in result.stdout + result.stderr, argv
        assert _holding(place.gpubox_home, secret) == []
        assert not [
            row for row in sqlite_dump(place.gpubox_home / "state" / "gpubox.db") if secret.decode() in row
        ]
        assert _holding(place.project, secret) == []
        assert _holding(place.remote, secret) == []
        gpubox_dir = place.host_home / ".gpubox"
        assert _holding(gpubox_dir, secret, skip=(str(gpubox_dir / "envs"),)) == []
