"""Live sync across a dropped link: the host dies mid-watch, edits go on locally, and after the supervisor
reconnects (with backoff) the host ends identical to local, nothing lost and nothing applied twice."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gpubox.actions.supervisor import supervise
from gpubox.config import HostConfig, load_project
from gpubox.remote.session import connect_host
from gpubox.sync.engine import Syncer
from gpubox.sync.watch import LiveSync
from tests.support.sshd import SshServer
from tests.support.trees import same_tree, wait_until, write

pytestmark = pytest.mark.integration


def test_watch_mode_survives_the_host_dying_and_coming_back(tmp_path: Path, sshd: SshServer) -> None:
    project_root = tmp_path / "proj"
    for index in range(40):
        write(project_root, f"src/m{index}.py", f"v0 {index}\n")
    remote = tmp_path / "remote"
    host = HostConfig(
        name="box",
        hostname=sshd.host,
        port=sshd.port,
        user=sshd.user,
        identity_file=str(sshd.client_key),
        accept_new=True,
        remote_dir=str(remote),
    )
    session = connect_host(host, "proj", probe=False)
    syncer = Syncer(session, load_project(project_root))
    syncer.full()
    stop, wake = threading.Event(), threading.Event()
    reasons: list[str] = []
    live = LiveSync(
        syncer,
        on_report=lambda report, why: reasons.append(why),
        on_link_lost=wake.set,
        link_generation=lambda: session.generation,
    ).start()
    # Called in a lambda, not through Thread's kwargs, so a renamed parameter is a type error, not a thread
    # that dies quietly while the test waits for a catch-up that cannot come.
    keeper = threading.Thread(
        target=lambda: supervise(
            session=session, stop=stop, wake=wake, say=lambda text: None, heartbeat_seconds=0.2
        )
    )
    keeper.start()
    try:
        write(project_root, "src/m0.py", "v1 before the drop\n")
        assert wait_until(lambda: (remote / "src/m0.py").read_text() == "v1 before the drop\n")
        sshd.kill()
        # Edits, a deletion and a new folder while the host is unreachable.
        for index in range(1, 20):
            write(project_root, f"src/m{index}.py", f"v2 while down {index}\n")
        (project_root / "src" / "m39.py").unlink()
        write(project_root, "new/pkg/mod.py", "added while down\n")
        threading.Event().wait(1.0)
        sshd.start()
        assert wait_until(lambda: same_tree(project_root, remote), timeout=30), "host never caught up"
        # The report reaches the callback just after the batch that made the trees equal.
        assert wait_until(lambda: "reconnected" in reasons, timeout=10), reasons
        assert session.generation >= 1
        # And the watch still works after the reconnect.
        write(project_root, "src/m5.py", "v3 after\n")
        assert wait_until(lambda: (remote / "src/m5.py").read_text() == "v3 after\n")
    finally:
        stop.set()
        wake.set()
        keeper.join(15)
        live.stop()
        session.close()
