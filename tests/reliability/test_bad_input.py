"""The bad-input corpus: broken and hostile configuration, bad arguments, garbage nvidia-smi output, garbage on
the agent channel, odd file names, a 5 GB sparse file, a run id that does not exist.

Every case runs the real command line in a subprocess against a real OpenSSH sshd (one per module: the cases
share one project that was synced once, as a user's would be). Each must end with exactly one line on stderr
starting ``gpubox: ``, the exit code of the design, no traceback, and no change to anything: the project folder,
gpubox's own folder (its SQLite state compared as a logical dump) and the host's project folder are snapshotted
before and after.

``GPUBOX_CORPUS_TABLE=path`` writes the outcomes as the Markdown table kept in ``tests/reliability/README.md``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gpubox.remote.agent.host import PROTOCOL
from tests.reliability.support_snapshots import difference, state_facts, tree_facts
from tests.support.cli import host_entry
from tests.support.sshd import SshServer

pytestmark = pytest.mark.integration

CAPTURES = Path(__file__).parents[1] / "data" / "nvidia-smi"
A100_X4 = (CAPTURES / "04_a100-sxm4-80gb-x4_555.txt").read_bytes()
RTX_XML = (CAPTURES / "20_rtx-a5000-x2_590_qx.xml.txt").read_bytes()
H200_Q = (CAPTURES / "62_h200_610_q.txt").read_bytes()
NO_RUN = "r-987654321"  # the host's run folder is shared by every test: an id no test reaches
FIVE_GB = 5 << 30
README = Path(__file__).with_name("README.md")

# ------------------------------------------------------------------------------------------- the world


@dataclass
class World:
    """One project, synced once to one real sshd; gpubox's home and HOME are the world's own."""

    base: Path
    project: Path
    remote: Path
    gpubox_home: Path
    fakes: Path
    server: SshServer
    env: dict[str, str]
    transcript: list[subprocess.CompletedProcess[str]] = field(default_factory=list)

    def hosts_toml(self, **extra: object) -> str:
        values: dict[str, object] = {"accept_new": True, "remote_dir": str(self.remote), **extra}
        return host_entry("box", self.server, **values)

    def run(
        self, *argv: str, env: Mapping[str, str] | None = None, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "gpubox", *argv],
            cwd=self.project,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="surrogateescape",
            timeout=timeout,
            env={**self.env, **(env or {})},
        )
        self.transcript.append(result)
        return result

    def snapshot(self, ignore_tables: tuple[str, ...] = ()) -> dict[str, object]:
        facts: dict[str, object] = {}
        for where, found in (
            ("project", tree_facts(self.project)),
            ("gpubox-home", state_facts(self.gpubox_home, ignore_tables=ignore_tables)),
            ("remote", tree_facts(self.remote)),
        ):
            facts.update({f"{where}/{rel}": fact for rel, fact in found.items()})
        return facts

    def normalise(self, text: str) -> str:
        """A message as the README shows it: no temp paths, ports or user names of this run."""
        return (
            text.replace(str(self.base), "<tmp>")
            .replace(f"{self.server.user}@127.0.0.1:{self.server.port}", "<user>@127.0.0.1:<port>")
            .replace(f":{self.server.port}", ":<port>")
        )


FAKE_AGENT = r"""
import json, os, struct, sys

PROTOCOL = @PROTOCOL@  # the one this gpubox speaks: only the cases that mean to differ do

mode = sys.argv[1]
say = lambda data: os.write(1, data)

def frame(body):
    say(struct.pack(">I", len(body)) + body)

def request():
    def exactly(count):
        data = b""
        while len(data) < count:
            chunk = os.read(0, count - len(data))
            if not chunk:
                sys.exit(0)
            data += chunk
        return data
    (length,) = struct.unpack(">I", exactly(4))
    return json.loads(exactly(length))

def answer(req, result, **extra):
    frame(json.dumps(dict({"id": req["id"], "ok": True, "result": result}, **extra)).encode())

if mode == "banner":
    say(b"Welcome to my shell!\n")
    sys.exit(0)
if mode == "silent":
    sys.exit(0)
say(b"GPUBOX-BOOT ok\n")
hello = request()
if mode == "huge-length":
    say(b"\xff\xff\xff\xff" + b"x" * 16)
elif mode == "not-json":
    frame(b"this is not json {")
elif mode == "truncated":
    say(struct.pack(">I", 100) + b'{"id": 1, "ok"')
elif mode == "json-list":
    frame(b"[1, 2, 3]")
elif mode == "error-string":
    frame(json.dumps({"id": hello["id"], "ok": False, "error": "boom"}).encode())
elif mode == "invalid-utf8":
    frame(b'{"id": 1, "ok": true, "result": "\xff\xfe"}')
elif mode == "wrong-protocol":
    answer(hello, {"protocol": 99})
elif mode == "wrong-id":
    frame(json.dumps({"id": 4242, "ok": True, "result": {}}).encode())
elif mode == "huge-blob":
    answer(hello, {"protocol": PROTOCOL}, blob=2**40)
elif mode == "negative-blob":
    answer(hello, {"protocol": PROTOCOL}, blob=-5)
else:
    answer(hello, {"protocol": PROTOCOL, "agent_version": "1", "python": "3", "executable": "/x", "pid": 1, "home": "/"})
    while True:
        req = request()
        if mode == "garbage-listing":
            answer(req, {}, blob=5)
            say(b"zzzzz")
        elif mode == "garbage-runs":
            answer(req, {"runs": [{"id": 5, "state": []}], "run": "x", "size": "big"})
        elif mode == "null-runs":
            answer(req, {"runs": None, "run": None, "size": None})
        else:
            answer(req, {})
sys.exit(0)
"""

FAKE_SMI = {
    "garbage": "head -c 3000 /dev/urandom",
    "truncated": "head -c 700 {a100}",
    "empty": "true",
    "driver-down": 'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."; exit 9',
}


def _executable(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def _fake_python(world: World, agent_mode: str) -> str:
    """A host "python3" that is the hand-made agent above (started over real SSH by gpubox's boot line)."""
    return _executable(
        world.fakes / f"python-agent-{agent_mode}",
        f"#!/bin/sh\nexec {shutil.which('python3')} {world.fakes / 'agent.py'} {agent_mode}\n",
    )


def _python_with_smi(world: World, smi_mode: str) -> str:
    """The host's real python3, with an nvidia-smi on its PATH that prints what *smi_mode* says."""
    folder = world.fakes / f"smi-{smi_mode}"
    folder.mkdir(exist_ok=True)
    script = FAKE_SMI[smi_mode].format(a100=CAPTURES / "04_a100-sxm4-80gb-x4_555.txt")
    _executable(folder / "nvidia-smi", f"#!/bin/sh\n{script}\n")
    return _executable(
        world.fakes / f"python-smi-{smi_mode}",
        f'#!/bin/sh\nPATH="{folder}:$PATH" exec {shutil.which("python3")} "$@"\n',
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("bad-input")
    home = base / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    server = SshServer(base / "sshd").start()
    project = base / "project"
    project.mkdir()
    fakes = base / "fakes"
    fakes.mkdir()
    (fakes / "agent.py").write_text(FAKE_AGENT.replace("@PROTOCOL@", str(PROTOCOL)))
    env = {
        k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "XDG_CONFIG_HOME", "XDG_STATE_HOME")
    }
    env |= {"HOME": str(home), "GPUBOX_HOME": str(base / "gpubox-home")}
    remote = base / f"bad-input-remote-{os.urandom(4).hex()}"  # a name only this module's trash has
    found = World(base, project, remote, base / "gpubox-home", fakes, server, env)
    (project / "gpubox.toml").write_text("[sync]\n")
    (project / "hosts.toml").write_text(found.hosts_toml())
    (project / "train.py").write_text("print('training')\n")
    (project / "data").mkdir()
    (project / "data" / "digits.csv").write_text("1,2,3\n")
    try:
        synced = found.run("sync")  # what a user has before trying anything odd: pins, state, a synced host
        assert synced.returncode == 0, synced.stdout + synced.stderr
        yield found
    finally:
        server.stop()
        # Deletions went to the trash in the session's host home: leave nothing of this module there.
        trash = server.home / ".gpubox" / "trash"
        for folder in trash.glob(f"{remote.name}-*"):
            shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ cases

Maker = bytes | str | Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    code: int
    expect: str
    """A piece of the one line the command must print (from a real run)."""
    what: str
    """The input, in words, for the README."""
    files: Mapping[str, Maker] = field(default_factory=dict)
    """Project files set up for the case (and put back after it)."""
    host: Mapping[str, object] | Callable[[World], Mapping[str, object]] | None = None
    """Extra keys for the host's hosts.toml entry."""
    kind: str = "error"
    """error: one stderr line; report: a `check` report whose one ✗ GPU line says it; warning: exit 0 with one
    stdout line that says what was held back."""
    env: Mapping[str, str] = field(default_factory=dict)
    ignore_tables: tuple[str, ...] = ()
    """State rows a command records by design (check records what the probe saw)."""
    bug: str = ""
    """The regression this case guards, when it found a bug."""


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _folder(path: Path) -> None:
    path.mkdir()


def _sparse(path: Path) -> None:
    with open(path, "wb") as handle:
        handle.truncate(FIVE_GB)


def _dangling(path: Path) -> None:
    path.symlink_to(path.parent / "moved-away.toml")


def _garbage(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _odd_names(path: Path) -> None:
    """A folder of files whose names hold a newline and bytes that are not UTF-8."""
    path.mkdir()
    for name in (b"new\nline.py", b"caf\xe9.py", b"\xff\xfe.bin"):
        with open(os.path.join(os.fsencode(path), name), "wb") as handle:
            handle.write(b"x\n")


XML_BOMB = (
    '<?xml version="1.0"?>\n<!DOCTYPE b [\n <!ENTITY l0 "lol">\n'
    + "".join(f' <!ENTITY l{i} "{f"&l{i - 1};" * 10}">\n' for i in range(1, 10))
    + "]>\n<nvidia_smi_log><driver_version>&l9;</driver_version></nvidia_smi_log>\n"
)

SMI = "smi.txt"  # the offline check's input file, in the project folder
SWEEP = (
    '[sweep]\ncommand = "python3 train.py --lr {lr}"\nmetric = "val_accuracy"\ndirection = "maximize"\n'
    'sampler = "grid"\n\n[sweep.params]\nlr = [0.01, 0.1]\n'
)

CASES = [
    # -- command-line arguments
    Case(
        "cli-unknown-command",
        ("bogus",),
        2,
        "unknown command 'bogus' (one of: init, ",
        "a command that does not exist",
    ),
    Case(
        "cli-open-unknown-service",
        ("open", "foo", "box"),
        2,
        "there is no service 'foo' (this project's: jupyter, tensorboard; [services.NAME] in gpubox.toml adds one)",
        "open a service the project does not have",
    ),
    Case(
        "cli-open-misspelt-service",
        ("open", "tensorbord", "box"),
        2,
        "there is no service 'tensorbord'; did you mean 'tensorboard'? (this project's: jupyter, tensorboard; ",
        "open a misspelt service",
    ),
    Case(
        "cli-misspelt-command",
        ("stauts",),
        2,
        "unknown command 'stauts'; did you mean `gpubox status`?",
        "a misspelt command",
    ),
    Case(
        "cli-unknown-option",
        ("sync", "--frobnicate"),
        2,
        "unrecognized arguments: --frobnicate",
        "an option that does not exist",
    ),
    Case(
        "cli-logs-no-runs",
        ("logs",),
        2,
        "this project has no runs on box yet",
        "logs with no run id, in a project with no runs",
    ),
    Case(
        "cli-stop-nothing-active",
        ("stop",),
        2,
        "this project has no active run on box",
        "stop with no run id and no active run",
    ),
    Case(
        "cli-run-id-traversal", ("logs", "../../etc/passwd"), 2, "is not a run id", "a run id that is a path"
    ),
    Case("cli-run-id-shell", ("stop", "r-1;reboot"), 2, "is not a run id", "a run id with shell syntax"),
    Case("cli-run-id-too-long", ("logs", "r-12345678901"), 2, "is not a run id", "a run id over 9 digits"),
    Case(
        "cli-run-id-not-utf8",
        ("logs", os.fsdecode(b"r-\xff")),
        2,
        "is not a run id",
        "a run id that is not UTF-8",
    ),
    Case(
        "cli-tail-not-a-number",
        ("logs", "r-1", "--tail", "x"),
        2,
        "argument --tail: invalid int value",
        "--tail x",
    ),
    Case(
        "cli-grace-negative",
        ("stop", "r-1", "--grace=-1"),
        2,
        "expected a number of seconds >= 0",
        "--grace=-1",
        bug="was sent to the host, exit 1",
    ),
    Case(
        "cli-grace-nan",
        ("stop", "r-1", "--grace", "nan"),
        2,
        "expected a number of seconds >= 0",
        "--grace nan",
        bug="nan reached the host: SIGKILL at once",
    ),
    Case(
        "cli-since-garbage",
        ("cost", "--since", "yesterday"),
        2,
        "--since: expected a date",
        "--since yesterday",
    ),
    Case(
        "cli-since-impossible-date",
        ("cost", "--since", "2026-02-30"),
        2,
        "--since: expected a date",
        "--since 2026-02-30",
    ),
    Case(
        "cli-watch-with-json",
        ("sync", "--watch", "--json"),
        2,
        "--watch keeps running",
        "--watch with --json",
    ),
    Case(
        "cli-double-dash-where-none-goes",
        ("hosts", "--", "rm", "-rf", "/"),
        2,
        "`--` starts a remote command",
        "`--` after a command that runs nothing",
    ),
    Case(
        "cli-run-without-command", ("run",), 2, "nothing to run", "run with no command and no [run] command"
    ),
    Case(
        "cli-empty-host-list",
        ("run", "--hosts", ",,", "--", "true"),
        2,
        "--hosts needs two or more hosts",
        "--hosts ,,",
    ),
    Case(
        "cli-unknown-host",
        ("ssh", "nohost", "--", "true"),
        2,
        'unknown host "nohost"',
        "a host not in hosts.toml",
    ),
    Case(
        "cli-pull-outside-project",
        ("pull", "/etc"),
        2,
        "/etc: not inside the project folder",
        "pull /etc",
        bug="started the local sshd before refusing",
    ),
    Case("cli-pull-parent", ("pull", "box", "../"), 2, "not inside the project folder", "pull box ../"),
    Case(
        "cli-check-host-and-file",
        ("check", "box", "--nvidia-smi", "x.txt"),
        2,
        "give a HOST or --nvidia-smi FILE, not both",
        "check HOST --nvidia-smi FILE",
    ),
    Case(
        "cli-framework-shell",
        ("check", "--nvidia-smi", SMI, "--framework", "tensorflow==2.21; rm -rf ~"),
        2,
        "cannot read the version specifier '==2.21; rm -rf ~'",
        "--framework with shell syntax",
        files={SMI: A100_X4},
        bug="read as tensorflow==2.21, the rest ignored",
    ),
    Case(
        "cli-framework-trailing-junk",
        ("check", "--nvidia-smi", SMI, "--framework", "tensorflow==2.21x"),
        2,
        "cannot read the version specifier '==2.21x'",
        "--framework tensorflow==2.21x",
        files={SMI: A100_X4},
        bug="read as tensorflow==2.21",
    ),
    Case(
        "cli-framework-unknown",
        ("check", "--nvidia-smi", SMI, "--framework", "pytorch"),
        2,
        "gpubox knows tensorflow and torch",
        "--framework pytorch",
        files={SMI: A100_X4},
    ),
    # -- sweeps (tests/unit/test_sweep.py has more [sweep] mistakes)
    Case(
        "sweep-without-sweep-table",
        ("sweep",),
        2,
        "gpubox.toml: add one (command, metric, direction, [sweep.params])",
        "gpubox sweep in a project whose gpubox.toml has no [sweep]",
    ),
    Case(
        "sweep-unknown-placeholder",
        ("sweep",),
        2,
        "gpubox.toml:2: sweep.command: {width} is not a parameter: [sweep.params] has lr",
        "[sweep] command with a {placeholder} that is no parameter",
        files={"gpubox.toml": SWEEP.replace("--lr {lr}", "--lr {lr} --width {width}")},
    ),
    Case(
        "sweep-bad-name",
        ("sweep", "my sweep;rm"),
        2,
        "'my sweep;rm' is not a sweep name",
        "a sweep name with a space and shell syntax",
        files={"gpubox.toml": SWEEP},
    ),
    Case(
        "sweep-storage-not-a-database",
        ("sweep", "--storage", "redis://localhost/0"),
        2,
        "--storage: 'redis' is not a database gpubox sweeps use (sqlite, postgresql or mysql)",
        "--storage redis://localhost/0",
        files={"gpubox.toml": SWEEP},
    ),
    Case(
        "sweep-trials-zero",
        ("sweep", "--trials", "0"),
        2,
        "--trials must be 1 or more",
        "--trials 0",
        files={"gpubox.toml": SWEEP},
    ),
    Case(
        "sweep-unknown-host",
        ("sweep", "--hosts", "nohost"),
        2,
        'unknown host "nohost"',
        "--hosts naming a host not in hosts.toml",
        files={"gpubox.toml": SWEEP},
    ),
    Case(
        "sweep-show-unknown",
        ("sweep", "nosuch", "--show"),
        2,
        "no sweep nosuch in sqlite:///",
        "--show for a sweep that does not exist (and no study database is made for the asking)",
    ),
    # -- hosts.toml and gpubox.toml, broken and hostile (tests/unit/test_config.py has ~90 more)
    Case(
        "hosts-dangling-symlink",
        ("hosts",),
        2,
        "hosts.toml: is a symbolic link to",
        "hosts.toml links to a missing file",
        files={"hosts.toml": _dangling},
        bug="silently ignored: gpubox fell back to local",
    ),
    Case(
        "hosts-is-a-folder",
        ("hosts",),
        2,
        "hosts.toml: is not a regular file",
        "hosts.toml is a folder",
        files={"hosts.toml": _folder},
        bug="silently ignored",
    ),
    Case(
        "hosts-is-a-fifo",
        ("sync",),
        2,
        "hosts.toml: is not a regular file",
        "hosts.toml is a fifo (no writer)",
        files={"hosts.toml": _fifo},
        bug="silently ignored",
    ),
    Case(
        "hosts-5gb-sparse",
        ("sync",),
        2,
        "hosts.toml: is 5,368,709,120 bytes",
        "hosts.toml is a 5 GB sparse file",
        files={"hosts.toml": _sparse},
        bug="read 5 GB into memory",
    ),
    Case(
        "hosts-nested-too-deep",
        ("hosts",),
        2,
        "hosts.toml: invalid TOML: arrays or tables nested too deep",
        "port = [[[[…]]]] 5,000 deep",
        files={"hosts.toml": "[hosts.a]\nport = " + "[" * 5000 + "]" * 5000 + "\n"},
        bug="RecursionError (internal error)",
    ),
    Case(
        "hosts-huge-integer",
        ("hosts",),
        2,
        "expected an integer 1-65535, got 99999999999999999999999",
        "port = 99999999999999999999999",
        files={"hosts.toml": "[hosts.a]\nport = 99999999999999999999999\n"},
    ),
    Case(
        "hosts-identity-file-newline",
        ("ssh-config",),
        2,
        "identity_file: expected a path without control characters",
        "identity_file with a newline and a ProxyCommand line",
        files={"hosts.toml": '[hosts.a]\nidentity_file = "k\\n    ProxyCommand touch /tmp/gbx-pwned"\n'},
        bug="wrote a ProxyCommand line into the ssh-config Include file",
    ),
    Case(
        "hosts-proxy-jump-shell",
        ("hosts",),
        2,
        "proxy_jump: expected",
        "proxy_jump with ;",
        files={"hosts.toml": '[hosts.a]\nproxy_jump = "gw;touch${IFS}x"\n'},
    ),
    Case(
        "hosts-max-hours-zero",
        ("hosts",),
        2,
        "max_hours: expected a number > 0, got 0",
        "max_hours = 0 (a deadline that has already passed)",
        files={"hosts.toml": "[hosts.a]\nmax_hours = 0\n"},
    ),
    Case(
        "hosts-self-stop-unknown",
        ("hosts",),
        2,
        'self_stop: expected one of "instance", "key", "off", got "always"',
        'self_stop = "always" on a rented host',
        files={"hosts.toml": '[hosts.a]\nprovider = "vast"\ngpu = "RTX 4090"\nself_stop = "always"\n'},
    ),
    Case(
        "hosts-self-stop-ssh",
        ("hosts",),
        2,
        'self_stop: not used by provider "ssh"',
        'self_stop = "key" on an ssh host (no cloud key to place)',
        files={"hosts.toml": '[hosts.a]\nself_stop = "key"\n'},
    ),
    Case(
        "project-is-a-folder",
        ("sync",),
        2,
        "gpubox.toml: is not a regular file",
        "gpubox.toml is a folder",
        files={"gpubox.toml": _folder},
        bug="silently ignored",
    ),
    Case(
        "project-5gb-sparse",
        ("sync",),
        2,
        "gpubox.toml: is 5,368,709,120 bytes",
        "gpubox.toml is a 5 GB sparse file",
        files={"gpubox.toml": _sparse},
        bug="read 5 GB into memory",
    ),
    Case(
        "project-run-cwd-outside",
        ("run", "--", "true"),
        2,
        'run.cwd: expected a folder inside the project, relative to its root (like "src" or ".")',
        "[run] cwd leads out of the project",
        files={"gpubox.toml": '[run]\ncwd = "../elsewhere"\n'},
    ),
    Case(
        "project-max-size-infinite",
        ("sync",),
        2,
        "max_file_size_mb: expected a number > 0, got inf",
        "max_file_size_mb = inf",
        files={"gpubox.toml": "[sync]\nmax_file_size_mb = inf\n"},
    ),
    Case(
        "host-hostname-option",
        ("ssh", "box", "--", "true"),
        3,
        "cannot resolve -oProxyCommand",
        "hostname = -oProxyCommand=…",
        host={"hostname": "-oProxyCommand=touch${IFS}gbx-pwned"},
    ),
    Case(
        "host-python-shell",
        ("runs",),
        1,
        "not found on",
        "python = python3;touch${IFS}…",
        host={"python": "python3;touch${IFS}gbx-pwned"},
    ),
    # -- nvidia-smi output, offline (check --nvidia-smi FILE)
    Case(
        "smi-random-bytes",
        ("check", "--nvidia-smi", SMI),
        2,
        "not an nvidia-smi table, -q text, XML (-q -x) or --query-gpu CSV output",
        "64 KiB of random bytes",
        files={SMI: _garbage(65536, 9)},
    ),
    Case(
        "smi-truncated-table",
        ("check", "--nvidia-smi", SMI),
        2,
        "the nvidia-smi table is cut off after GPU 0",
        "a 4-GPU table cut at 700 bytes",
        files={SMI: A100_X4[:700]},
        bug="read as a complete 1-GPU machine, verdict ok",
    ),
    Case(
        "smi-truncated-xml",
        ("check", "--nvidia-smi", SMI),
        2,
        "not readable as XML",
        "-q -x XML cut in half",
        files={SMI: RTX_XML[: len(RTX_XML) // 2]},
    ),
    Case(
        "smi-truncated-q-text",
        ("check", "--nvidia-smi", SMI),
        2,
        "the nvidia-smi -q text is cut off before its first GPU (it counts 1 attached)",
        "nvidia-smi -q text cut after its header",
        files={SMI: H200_Q[: H200_Q.index(b"GPU 0000")]},
    ),
    Case(
        "smi-empty-file",
        ("check", "--nvidia-smi", SMI),
        2,
        "not an nvidia-smi table",
        "a 0-byte file",
        files={SMI: b""},
    ),
    Case(
        "smi-nul-bytes",
        ("check", "--nvidia-smi", SMI),
        2,
        "not an nvidia-smi table",
        "4 KiB of NUL bytes",
        files={SMI: b"\0" * 4096},
    ),
    Case(
        "smi-xml-bomb",
        ("check", "--nvidia-smi", SMI),
        2,
        "limit on input amplification factor",
        "an XML entity-expansion bomb",
        files={SMI: XML_BOMB},
    ),
    Case(
        "smi-5gb-sparse",
        ("check", "--nvidia-smi", SMI),
        2,
        "over 16 MiB, far more than any nvidia-smi output",
        "a 5 GB sparse file",
        files={SMI: _sparse},
        bug="read 5 GB into memory",
    ),
    Case("smi-folder", ("check", "--nvidia-smi", "data"), 2, "cannot read data: Is a directory", "a folder"),
    Case(
        "smi-missing",
        ("check", "--nvidia-smi", "nope.txt"),
        2,
        "cannot read nope.txt: No such file or directory",
        "a file that does not exist",
    ),
    # -- nvidia-smi output on the host (check HOST): the report says it, one ✗ GPU line, exit 1
    Case(
        "host-smi-garbage",
        ("check", "box"),
        1,
        "could not read the nvidia-smi output",
        "nvidia-smi prints random bytes",
        host=lambda w: {"python": _python_with_smi(w, "garbage")},
        kind="report",
        ignore_tables=("hosts",),
    ),
    Case(
        "host-smi-truncated",
        ("check", "box"),
        1,
        "the nvidia-smi table is cut off after GPU 0",
        "nvidia-smi's table cut at 700 bytes",
        host=lambda w: {"python": _python_with_smi(w, "truncated")},
        kind="report",
        ignore_tables=("hosts",),
        bug="reported 1 of 4 GPUs, verdict ok",
    ),
    Case(
        "host-smi-empty",
        ("check", "box"),
        1,
        "could not read the nvidia-smi output",
        "nvidia-smi prints nothing",
        host=lambda w: {"python": _python_with_smi(w, "empty")},
        kind="report",
        ignore_tables=("hosts",),
    ),
    Case(
        "host-smi-driver-down",
        ("check", "box"),
        1,
        "the NVIDIA kernel module is not loaded",
        "nvidia-smi fails (exit 9)",
        host=lambda w: {"python": _python_with_smi(w, "driver-down")},
        kind="report",
        ignore_tables=("hosts",),
    ),
]

AGENT_CASES = [
    (
        "banner",
        "runs",
        "the gpubox agent did not start on <user>@127.0.0.1:<port>: unexpected 'Welcome to my shell!'",
        "a login banner instead of the agent",
        "",
    ),
    ("silent", "runs", "stopped: exit status 0", "exits without a word", ""),
    ("huge-length", "runs", "sent a frame of 4294967295 bytes", "a length prefix of 4 GiB", ""),
    ("not-json", "runs", "sent something that is not JSON", "a frame that is not JSON", ""),
    ("truncated", "runs", "stopped: exit status 0", "half a frame, then EOF", ""),
    ("json-list", "runs", "answered out of turn", "a JSON array instead of an object", ""),
    (
        "error-string",
        "runs",
        "sent an error gpubox cannot read: 'boom'",
        '"error": "boom" (not an object)',
        "AttributeError (internal error)",
    ),
    ("invalid-utf8", "runs", "sent something that is not JSON", "JSON with bytes that are not UTF-8", ""),
    ("wrong-protocol", "runs", f"speaks protocol 99, this gpubox {PROTOCOL}", "another protocol version", ""),
    ("wrong-id", "runs", "answered out of turn", "an answer to another request", ""),
    (
        "huge-blob",
        "runs",
        "announced a binary part of 1099511627776 bytes",
        "a 1 TiB binary part announced",
        "ignored: the stream fell out of step",
    ),
    (
        "negative-blob",
        "runs",
        "announced a binary part of -5 bytes",
        "a binary part of -5 bytes",
        "ignored: the stream fell out of step",
    ),
    (
        "garbage-listing",
        "sync --verify",
        "sent a file listing gpubox cannot read",
        "a file listing that is not zlib",
        "zlib.error (internal error)",
    ),
    (
        "garbage-runs",
        "runs",
        "sent a run record gpubox cannot read",
        "a run record with id 5",
        "ValueError (internal error)",
    ),
    ("null-runs", "runs", "sent a run list gpubox cannot read", '"runs": null', "TypeError (internal error)"),
    (
        "null-runs",
        f"logs {NO_RUN}",
        "sent a run record gpubox cannot read",
        '"run": null in a log answer',
        "TypeError (internal error)",
    ),
]
for mode, command, expect, what, bug in AGENT_CASES:
    CASES.append(
        Case(
            f"agent-{mode}" + ("" if command == "runs" else "-" + command.split()[0]),
            tuple(command.split()),
            1,
            expect,
            f"agent: {what}",
            host=lambda w, mode=mode: {"python": _fake_python(w, mode)},
            bug=bug,
        )
    )

CASES += [
    # -- files, names, sizes, run ids
    Case(
        "file-5gb-sparse-in-project",
        ("sync",),
        0,
        "skipped big.bin (5368.7 MB, over max_file_size_mb",
        "a 5 GB sparse file in the project",
        files={"big.bin": _sparse},
        kind="warning",
    ),
    Case(
        "file-odd-names-dry-run",
        ("sync", "--dry-run"),
        0,
        "send   'odd/new\\nline.py'",
        "names with a newline and bytes that are not UTF-8 (dry run, strict UTF-8 output)",
        files={"odd": _odd_names},
        kind="warning",
        env={"PYTHONIOENCODING": "utf-8"},
        bug="UnicodeEncodeError (internal error); a newline split one name over two lines",
    ),
    Case(
        "run-missing-logs",
        ("logs", NO_RUN),
        2,
        f"no run {NO_RUN} on this host",
        "logs of a run id that does not exist",
        bug="left an empty log cache file in the state folder",
    ),
    Case(
        "run-missing-tail",
        ("logs", NO_RUN, "--tail", "5"),
        2,
        f"no run {NO_RUN} on this host",
        "logs --tail of a missing run",
    ),
    Case("run-missing-stop", ("stop", NO_RUN), 2, f"no run {NO_RUN} on this host", "stop a missing run"),
]

OUTCOMES: dict[str, tuple[Case, int, str]] = {}


def _make(path: Path, maker: Maker) -> None:
    if callable(maker):
        maker(path)
    else:
        path.write_bytes(maker.encode() if isinstance(maker, str) else maker)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


@pytest.fixture
def staged(world: World, request: pytest.FixtureRequest) -> Iterator[Case]:
    """Set up the case's files (and host entry) in the world's project; put everything back afterwards."""
    case: Case = request.param
    touched = dict(case.files)
    if case.host is not None:
        extra = case.host(world) if callable(case.host) else case.host
        touched["hosts.toml"] = world.hosts_toml(**extra)
    saved = {
        rel: ((world.project / rel).read_bytes(), (world.project / rel).stat())
        for rel in touched
        if (world.project / rel).is_file()
    }
    try:
        for rel, maker in touched.items():
            _remove(world.project / rel)
            _make(world.project / rel, maker)
        yield case
    finally:
        for rel in touched:
            _remove(world.project / rel)
            if rel in saved:
                data, st = saved[rel]
                (world.project / rel).write_bytes(data)
                # The same mtime too: otherwise the next sync would rightly send it again.
                os.utime(world.project / rel, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("staged", CASES, ids=[case.id for case in CASES], indirect=True)
def test_bad_input(world: World, staged: Case) -> None:
    case = staged
    before = world.snapshot(case.ignore_tables)
    result = world.run(*case.argv, env=case.env)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert "internal error" not in output, output
    assert result.returncode == case.code, (result.returncode, result.stdout, result.stderr)
    if case.kind == "error":
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("gpubox: "), result.stderr
        assert result.stdout == "", result.stdout
        line = lines[0]
    elif case.kind == "report":
        assert result.stderr == ""
        crosses = [line for line in result.stdout.splitlines() if line.startswith("  ✗ GPU")]
        assert len(crosses) == 1, result.stdout
        line = crosses[0].strip()
    else:
        assert result.stderr == ""
        said = [line for line in result.stdout.splitlines() if case.expect in line]
        assert len(said) == 1, result.stdout
        line = said[0].strip()
    assert case.expect in world.normalise(line), line
    after = world.snapshot(case.ignore_tables)
    assert before == after, f"{case.id} changed something:\n{difference(before, after)}"
    OUTCOMES[case.id] = (case, result.returncode, world.normalise(line))


def test_enough_cases() -> None:
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)


def test_readme_lists_every_case() -> None:
    text = README.read_text()
    missing = [case.id for case in CASES if f"`{case.id}`" not in text]
    assert not missing, f"tests/reliability/README.md does not list: {missing}"


# ----------------------------------------------------------------------------------- behaviour in depth


def test_hostile_config_values_never_reach_a_shell(world: World) -> None:
    """The hostname and python cases above ran `touch gbx-pwned` nowhere: not on the host, not here."""
    for folder in (
        world.project,
        world.remote,
        Path(world.env["HOME"]),
        world.base,
        Path.home(),
        Path("/tmp"),
    ):
        assert not (folder / "gbx-pwned").exists(), folder
    assert not Path("/tmp/gbx-pwned").exists()


def test_the_5gb_file_is_never_read(world: World) -> None:
    """Held back by its size alone: the whole sync reads far less than the file (counted by the kernel)."""
    big = world.project / "big.bin"
    _sparse(big)
    counter = world.base / "io.txt"
    wrapper = (
        "import sys\nfrom gpubox.cli import main\ncode = main(sys.argv[1:])\n"
        f"open({str(counter)!r}, 'w').write(open('/proc/self/io').read())\nsys.exit(code)\n"
    )
    try:
        for argv in (["sync"], ["sync", "--json"], ["sync", "--dry-run"]):
            result = subprocess.run(
                [sys.executable, "-c", wrapper, *argv],
                cwd=world.project,
                env=world.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 0, result.stderr
            read = int(
                next(line for line in counter.read_text().splitlines() if line.startswith("rchar:")).split()[
                    1
                ]
            )
            assert read < 256 << 20, f"{argv}: gpubox read {read:,} bytes"
            if "--json" in argv:
                document = json.loads(result.stdout)
                assert document["too_large"] == [
                    {"path": "big.bin", "bytes": FIVE_GB, "host_keeps_earlier_copy": False}
                ]
                assert document["sent"] == 0
        assert not (world.remote / "big.bin").exists()
    finally:
        big.unlink()


def test_odd_names_are_carried_faithfully_and_other_files_untouched(world: World) -> None:
    """Names with a newline, Latin-1 and raw bytes arrive byte for byte; then deleting them deletes only them."""
    odd = os.path.join(os.fsencode(world.project), b"odd")
    remote_odd = os.path.join(os.fsencode(world.remote), b"odd")
    names = [b"new\nline.py", b"caf\xe9.py", b"\xff\xfe.bin", b"tab\there.txt", b" leading space.txt"]
    os.mkdir(odd)
    for index, name in enumerate(names):
        with open(os.path.join(odd, name), "wb") as handle:
            handle.write(b"content %d\n" % index)
    remote_before = tree_facts(world.remote)
    try:
        synced = world.run("sync", env={"PYTHONIOENCODING": "utf-8"})
        assert synced.returncode == 0, synced.stdout + synced.stderr
        assert synced.stdout.startswith(f"sync box: {len(names) + 1} sent"), synced.stdout  # and the folder
        assert sorted(os.listdir(remote_odd)) == sorted(names)
        for index, name in enumerate(names):
            with open(os.path.join(remote_odd, name), "rb") as handle:
                assert handle.read() == b"content %d\n" % index
        listed = world.run("sync", "--dry-run", "--json", "--verify")
        assert json.loads(listed.stdout)["would_send"] == []
    finally:
        shutil.rmtree(odd)
    cleaned = world.run("sync")
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"{len(names)} deleted" in cleaned.stdout, cleaned.stdout  # files: their folder goes with them
    assert tree_facts(world.remote) == remote_before


def test_a_zero_byte_file_arrives_as_zero_bytes(world: World) -> None:
    empty = world.project / "empty.txt"
    empty.write_bytes(b"")
    try:
        synced = world.run("sync")
        assert synced.returncode == 0, synced.stderr
        assert (world.remote / "empty.txt").read_bytes() == b""
    finally:
        empty.unlink()
        assert world.run("sync").returncode == 0
    assert not (world.remote / "empty.txt").exists()


def test_a_file_over_one_frame_is_sent_in_pieces(world: World) -> None:
    """70 MB is under the default 100 MB limit but over the agent's 64 MiB frame: it used to stop the whole
    sync (the agent refused the frame and quit); now it goes in pieces and arrives whole, with the others."""
    big = world.project / "weights.bin"
    small = world.project / "config.json"
    big.write_bytes(random.Random(7).randbytes(70_000_000))
    small.write_text("{}\n")
    try:
        synced = world.run("sync")
        assert synced.returncode == 0, synced.stdout + synced.stderr
        assert synced.stdout.startswith("sync box: 2 sent (70.0 MB)"), synced.stdout
        assert (world.remote / "weights.bin").read_bytes() == big.read_bytes()
        assert (world.remote / "config.json").read_text() == "{}\n"
        assert not (world.remote / ".gpubox-staging").exists()
        again = world.run("sync", "--verify")
        assert again.stdout.startswith("sync box: 0 sent"), again.stdout
    finally:
        big.unlink()
        small.unlink()
        assert world.run("sync").returncode == 0


def test_cost_since_far_back_means_everything(world: World) -> None:
    """`--since 99999999999d` and a date in year 1 reach before 1970: all of the ledger, not an overflow."""
    for since in ("99999999999999999999d", "0001-01-01"):
        result = world.run("cost", "--since", since, "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["since"] is not None


def test_every_command_of_the_corpus_left_no_traceback(world: World) -> None:
    assert all("Traceback" not in r.stdout + r.stderr for r in world.transcript)


@pytest.fixture(scope="module", autouse=True)
def _corpus_table() -> Iterator[None]:
    """With GPUBOX_CORPUS_TABLE set, write the outcomes as the README's table once the module is done."""
    yield
    target = os.environ.get("GPUBOX_CORPUS_TABLE")
    if not target:
        return
    rows = ["| case | input | command | exit | the one line it printed |", "| --- | --- | --- | --- | --- |"]
    for case in CASES:
        if case.id not in OUTCOMES:
            continue
        _case, code, line = OUTCOMES[case.id]
        command = "gpubox " + " ".join(a if a.isprintable() else repr(a) for a in case.argv)
        fixed = f" (bug fixed: {case.bug})" if case.bug else ""
        shown = line.replace("|", "\\|")
        rows.append(f"| `{case.id}` | {case.what}{fixed} | `` {command} `` | {code} | `` {shown} `` |")
    Path(target).write_text("\n".join(rows) + "\n")
