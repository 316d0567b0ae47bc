"""gpubox's tunnel against `ssh -L`, to the same HTTP server on the same host, in the same run.

  - 1,000 small GETs (a 2 KB JSON file, the size of a TensorBoard data call), each on a new connection: p50, p99
  - one 200 MB download: throughput
  - 50 concurrent GETs: how many fail

The host is gpubox's private sshd on 127.0.0.1; the HTTP server is Python's http.server on the host's loopback.

    .venv/bin/python bench/tunnel_vs_ssh.py [--gets 1000] [--megabytes 200] [--write]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import machine, publish

SECTION = "## Tunnel vs ssh -L (bench/tunnel_vs_ssh.py)"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return bytes(response.read())


def measure(base: str, gets: int, big_bytes: int) -> tuple[list[float], float, int]:
    latencies = []
    for _ in range(gets):
        started = time.perf_counter()
        get(f"{base}/small.json")
        latencies.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    size = len(get(f"{base}/big.bin"))
    assert size == big_bytes
    throughput = size / (time.perf_counter() - started) / 1e6
    failures = 0
    lock = threading.Lock()

    def one() -> None:
        nonlocal failures
        try:
            get(f"{base}/small.json")
        except Exception:
            with lock:
                failures += 1

    threads = [threading.Thread(target=one) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, throughput, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gets", type=int, default=1000)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--write", action="store_true")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpubox-bench-tunnel-") as folder:
        work = Path(folder)
        os.environ["GPUBOX_HOME"] = str(work / "home")
        served = work / "served"
        served.mkdir()
        (served / "small.json").write_text('{"value": "' + "x" * 2000 + '"}')
        with open(served / "big.bin", "wb") as handle:
            handle.write(os.urandom(1 << 20) * options.megabytes)
        http_port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(http_port), "--bind", "127.0.0.1"],
            cwd=served,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        from gpubox.remote.agent.client import AgentSession
        from gpubox.remote.connection import Connection, Endpoint
        from gpubox.remote.providers.local import LocalSshd
        from gpubox.remote.sshd import SshdFiles
        from gpubox.remote.tunnels import Tunnel

        sshd = LocalSshd().ensure_running()
        files = SshdFiles.in_folder(LocalSshd().folder)
        endpoint = Endpoint(
            "local", "127.0.0.1", sshd.port, identity_files=(str(files.client_key),), use_default_keys=False
        )
        connection = Connection(endpoint, trusted_host_keys=(files.host_public_key,)).open()
        # As under `gpubox up`, the agent's session comes first. It matters: sshd turns on TCP_NODELAY for a
        # connection at its first session; a bare connection carrying only forwards would pay Nagle's 40 ms.
        agent = AgentSession(connection).start()
        tunnel = Tunnel(lambda: connection.transport, http_port, local_port=free_port()).start()
        known = work / "known_hosts"
        known.write_text(f"[127.0.0.1]:{sshd.port} {files.host_public_key}\n")
        ssh_port = free_port()
        ssh = subprocess.Popen(
            [
                "ssh",
                "-N",
                "-p",
                str(sshd.port),
                "-i",
                str(files.client_key),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                f"UserKnownHostsFile={known}",
                "-o",
                "BatchMode=yes",
                "-L",
                f"127.0.0.1:{ssh_port}:127.0.0.1:{http_port}",
                "127.0.0.1",
            ]
        )
        try:
            wait_port(http_port)
            wait_port(ssh_port)
            get(f"http://127.0.0.1:{tunnel.local_port}/small.json")  # warm both paths once
            get(f"http://127.0.0.1:{ssh_port}/small.json")
            ours = measure(f"http://127.0.0.1:{tunnel.local_port}", options.gets, options.megabytes << 20)
            theirs = measure(f"http://127.0.0.1:{ssh_port}", options.gets, options.megabytes << 20)
        finally:
            ssh.terminate()
            tunnel.stop()
            agent.close()
            connection.close()
            server.terminate()
            LocalSshd().stop()

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]

    (our_lat, our_mbps, our_fail), (ssh_lat, ssh_mbps, ssh_fail) = ours, theirs
    lines = [
        SECTION,
        "",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}. Host: gpubox's private sshd on 127.0.0.1; "
        "server: Python's http.server on the host's loopback (one new connection per GET).",
        f"Command: `.venv/bin/python bench/tunnel_vs_ssh.py --gets {options.gets} --megabytes {options.megabytes} --write`",
        "",
        "| measure | gpubox tunnel | ssh -L | ratio | target |",
        "| --- | ---: | ---: | ---: | --- |",
        f"| {options.gets} small GETs, p50 | {statistics.median(our_lat):.2f} ms | {statistics.median(ssh_lat):.2f} ms | "
        f"{statistics.median(our_lat) / statistics.median(ssh_lat):.2f}× | ≤ 1.5× |",
        f"| {options.gets} small GETs, p99 | {pct(our_lat, 0.99):.2f} ms | {pct(ssh_lat, 0.99):.2f} ms | "
        f"{pct(our_lat, 0.99) / pct(ssh_lat, 0.99):.2f}× | |",
        f"| {options.megabytes} MB download | {our_mbps:.0f} MB/s | {ssh_mbps:.0f} MB/s | {our_mbps / ssh_mbps:.2f}× | ≥ 0.5× |",
        f"| 50 concurrent GETs failed | {our_fail} | {ssh_fail} | | 0 |",
        "",
    ]
    publish(SECTION, lines, options.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
