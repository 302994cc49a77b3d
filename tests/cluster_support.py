"""A real Ray cluster on one machine, for the multi-node and fault tests.

Each node is `ray start` run in a session of its own: the node's processes (raylet, object
store, agents, and the workers the raylet forks) stay in that session after `ray start` returns,
so SIGKILL to every process of the session is the node dying. Each node has its own loopback address
(127.0.0.2, 127.0.0.3, ...: Ray Train groups workers by node IP), its own CPUs and its own
session folder under a short root (Unix socket paths are capped at 107 bytes). Token
authentication is on, with a token the nodes, drivers and queries share through the
environment, as on a real cluster. Nothing here touches Ray processes it did not start:
`ray stop` would kill every Ray on the machine.

The test process itself never joins the cluster (one process, one Ray): questions to the
cluster (nodes, tasks, actors) go through a short-lived subprocess, see `query`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
_MARK = "Z2H-QUERY "
# State API listing options; the address is explicit: other Ray clusters may run on this machine.
_LIST = "address={address!r}, detail=True, limit=10000, raise_on_missing_output=False"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Every live process whose session id is `sid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def kill_session(sid: int, timeout: float = 20) -> None:
    """SIGKILL every process of a session (a whole node), repeatedly until none is left."""
    deadline = time.time() + timeout
    while (pids := session_pids(sid)) and time.time() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


@dataclass
class Node:
    name: str
    ip: str
    cpus: int
    process: subprocess.Popen
    log: Path
    args: list[str]
    restarts: int = 0

    @property
    def sid(self) -> int:
        return self.process.pid  # `ray start` ran with start_new_session: its session id


@dataclass
class LocalCluster:
    root: Path
    port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    nodes: dict[str, Node] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        token = self.root / "token"
        token.write_text(secrets.token_hex(32))
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_USAGE_STATS_ENABLED": "0",
            "COLUMNS": "250",  # z2h's console output on one line per message, for the assertions
            # Notice a dead node in ~5 s rather than ~15 s (a dead raylet refuses at once; a slow
            # one on a loaded machine still gets 5 s to answer).
            "RAY_health_check_initial_delay_ms": "1000",
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "5000",
            "RAY_health_check_failure_threshold": "5",
        }
        self.env.pop("RAY_ADDRESS", None)

    @property
    def address(self) -> str:
        return f"127.0.0.2:{self.port}"

    def _start(self, name: str, ip: str, cpus: int, args: list[str]) -> Node:
        log = self.root / f"{name}.log"
        command = [
            str(BIN / "ray"),
            "start",
            f"--node-ip-address={ip}",
            f"--num-cpus={cpus}",
            "--num-gpus=0",
            f"--temp-dir={self.root / name}",
            "--object-store-memory=200000000",
            f"--dashboard-agent-listen-port={free_port()}",
            "--disable-usage-stats",
            *args,
        ]
        with open(log, "a") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        previous = self.nodes.get(name)
        node = self.nodes[name] = Node(name, ip, cpus, process, log, args, previous.restarts + 1 if previous else 0)
        return node

    def start_head(self, cpus: int = 0) -> Node:
        return self._start(
            "head",
            "127.0.0.2",
            cpus,
            [
                "--head",
                f"--port={self.port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={free_port()}",
            ],
        )

    def add_node(self, name: str, ip: str, cpus: int) -> Node:
        return self._start(name, ip, cpus, [f"--address={self.address}"])

    def wait_for(self, names: list[str], timeout: float = 180) -> dict[str, str]:
        """Wait until exactly these nodes are alive; returns node name -> Ray node id."""
        want = {self.nodes[n].ip: n for n in names}
        deadline = time.time() + timeout
        alive: dict[str, str] = {}
        while time.time() < deadline:
            for name in names:
                node = self.nodes[name]
                if node.process.poll() not in (None, 0):
                    # Ray gives a raylet 30 s to register with the GCS; on a machine starved of CPU
                    # that can pass: two more tries.
                    if name == "head" or node.restarts >= 2:
                        raise RuntimeError(f"node {name} exited: {node.log.read_text()[-2000:]}")
                    kill_session(node.sid)
                    self._start(name, node.ip, node.cpus, node.args)
            try:
                listed = self.query("result = [n for n in ray.nodes() if n['Alive']]", timeout=90)
            except (RuntimeError, subprocess.TimeoutExpired):  # not up yet, or a starved machine
                listed = []
            alive = {n["NodeManagerAddress"]: n["NodeID"] for n in listed}
            if set(alive) == set(want):
                return {want[ip]: node_id for ip, node_id in alive.items()}
            time.sleep(1)
        raise TimeoutError(f"nodes {names} not alive after {timeout}s (alive: {sorted(alive)})")

    def query(self, code: str, timeout: float = 120):
        """Run `code` in a driver of this cluster (`ray`, `json` and `state` imported) and return
        the JSON of the `result` it sets."""
        script = (
            "import json, logging, ray\nfrom ray.util import state\n"
            f"ray.init(address={self.address!r}, logging_level=logging.ERROR, log_to_driver=False)\n{code}\n"
            "print('\\n' + _MARK + json.dumps(result))\n"
        ).replace("_MARK", repr(_MARK))
        done = subprocess.run(
            [sys.executable, "-c", script], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith(_MARK)]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"cluster query failed: {done.stdout[-1000:]} {done.stderr[-2000:]}")
        return json.loads(lines[-1][len(_MARK) :])

    @property
    def _list(self) -> str:
        return _LIST.format(address=self.address)

    def tasks(self, *names: str) -> list[dict]:
        """Every attempt of every task with one of these names the cluster has seen (state API)."""
        return self.query(
            f"rows = [r for n in {list(names)!r} for r in state.list_tasks(filters=[('name', '=', n)], {self._list})]\n"
            "result = [dict(task_id=r.task_id, name=r.name, attempt=r.attempt_number, state=r.state, "
            "node=r.node_id, job=r.job_id) for r in rows]"
        )

    def actors(self, class_name: str) -> list[dict]:
        return self.query(
            f"rows = state.list_actors(filters=[('class_name', '=', {class_name!r})], {self._list})\n"
            "result = [dict(actor_id=r.actor_id, state=r.state, node=r.node_id, pid=r.pid, job=r.job_id) for r in rows]"
        )

    def kill(self, name: str) -> None:
        """The node dies: SIGKILL to its raylet, object store, agents and workers at once."""
        node = self.nodes[name]
        kill_session(node.sid)
        node.process.wait(timeout=30)

    def shutdown(self) -> None:
        for name in reversed(list(self.nodes)):
            kill_session(self.nodes[name].sid)
        for node in self.nodes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def short_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="z2hc", dir="/tmp"))


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with its own sqlite file and proxied artifact folder: the
    tracking a multi-node cluster uses (stage tasks on every node talk to it over HTTP)."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = folder / "server.log"
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                [
                    str(BIN / "mlflow"),
                    "server",
                    "--backend-store-uri",
                    f"sqlite:///{folder / 'mlflow.db'}",
                    "--artifacts-destination",
                    str(folder / "artifacts"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    "1",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait(self, timeout: float = 120) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return self.uri
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"mlflow server not up after {timeout}s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        kill_session(self.process.pid)
        self.process.wait(timeout=10)
