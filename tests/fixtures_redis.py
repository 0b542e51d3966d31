"""Real ``redis-server`` processes for the tests, on free ports; can be killed and restarted.

- :class:`RedisServer` — one server (``redis_server``, ``redis_url``, ``own_redis``);
- :class:`RedisClusterSet` — a Redis Cluster of 3 masters, each with a replica
  (``redis_cluster``: session-wide; tests that kill nodes start their own);
- :class:`RedisSentinelSet` — a primary, a replica and 3 sentinels
  (``redis_sentinel``: session-wide; likewise).

Registered in tests/conftest.py (``pytest_plugins``). Without a
``redis-server`` (or, for the cluster, ``redis-cli``) binary the Redis tests are
skipped with the reason, except under CI (``CI`` set), where they fail: CI must
run them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

__all__ = ["RedisClusterSet", "RedisSentinelSet", "RedisServer"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _binary(name: str = "redis-server") -> str:
    path = shutil.which(name)
    if path is None:
        msg = f"{name} not found on PATH (apt-get install redis-server, or run .ci/run)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


class RedisServer:
    """One redis-server process without persistence, on 127.0.0.1:``port``."""

    def __init__(self, binary: str, port: int | None = None, *, args: tuple[str, ...] = (),
                 config: str | None = None) -> None:
        self.binary = binary
        self.port = port or _free_port()
        self.dir = tempfile.mkdtemp(prefix="aduib-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.args = args  # more command-line options (cluster mode, replicaof...)
        self.config = config  # a config file's text: started as a sentinel with it

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        if self.config is not None:  # a sentinel: its config file must be writable
            path = os.path.join(self.dir, "sentinel.conf")
            if not os.path.exists(path):
                with open(path, "w") as f:
                    f.write(self.config)
            command = [self.binary, path, "--sentinel", "--port", str(self.port)]
        else:
            command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                       "--save", "", "--appendonly", "no", "--dir", self.dir,
                       "--protected-mode", "no", "--repl-diskless-sync-delay", "0",
                       *self.args]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if self.ping():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def command(self, *args: str, timeout: float = 5.0) -> object:
        """One command over a fresh connection (redis-py's own parser)."""
        import redis

        with redis.Redis(port=self.port, socket_timeout=timeout, decode_responses=True) as r:
            return r.execute_command(*args)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def flushall(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as s:
            s.sendall(b"FLUSHALL\r\n")
            if not s.recv(16).startswith(b"+OK"):
                raise RuntimeError("FLUSHALL failed")

    def kill(self) -> None:
        """SIGKILL: the server vanishes at once, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered (a hang)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One server for the whole session (flushed by ``redis_url`` before each test)."""
    server = RedisServer(_binary())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL, emptied for this test."""
    if not redis_server.ping():  # a test left it down: bring it back
        redis_server.restart()
    redis_server.flushall()
    return redis_server.url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A server of this test's own, which the test may kill and restart."""
    server = RedisServer(_binary())
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> str:
    """The storage URL of the backend under test: ``memory://`` or a real, empty Redis."""
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue("redis_url")
    return url


def _wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready within {timeout} s")


def _replicas_online(primary: RedisServer) -> int:
    """Replicas of ``primary`` done with their initial sync (``WAIT`` counts them)."""
    info = primary.command("INFO", "replication")
    assert isinstance(info, dict)
    return sum(1 for k, v in info.items()
               if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online")


class RedisClusterSet:
    """A Redis Cluster: ``masters`` masters with one replica each, built by
    ``redis-cli --cluster create``; small node timeout, so a killed master's
    replica takes over within a few seconds."""

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        binary = _binary()
        self.cli = _binary("redis-cli")
        self.masters, self.replicas = masters, replicas
        # the bus port is free-picked too (by default port + 10000, maybe taken or > 65535)
        self.nodes = [
            RedisServer(binary, args=("--cluster-enabled", "yes", "--cluster-config-file",
                                      "nodes.conf", "--cluster-node-timeout",
                                      str(node_timeout_ms), "--cluster-port",
                                      str(_free_port())))
            for _ in range(masters * (1 + replicas))]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:self.masters])
        return f"redis+cluster://{hosts}"

    def start(self, timeout: float = 20.0) -> None:
        started = time.monotonic()
        for node in self.nodes:
            node.start()
        subprocess.run(
            [self.cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout)
        left = max(1.0, timeout - (time.monotonic() - started))
        _wait("the cluster", self.healthy, left)

    def healthy(self) -> bool:
        """Every live node says the cluster is ok, with a master for every slot and
        every master's replica attached."""
        for node in self.nodes:
            if node.proc is None:
                continue
            info = str(node.command("CLUSTER", "INFO"))
            if "cluster_state:ok" not in info:
                return False
        masters = self.master_ports()
        return len(masters) == self.masters and all(
            len(self.replica_ports_of(p)) == self.replicas
            and _replicas_online(self.node(p)) == self.replicas for p in masters)

    def _node_lines(self) -> list[list[str]]:
        for node in self.nodes:
            if node.proc is not None:
                text = str(node.command("CLUSTER", "NODES"))
                return [line.split() for line in text.splitlines() if line.strip()]
        return []

    def master_ports(self) -> list[int]:
        """Ports of the live masters that serve slots."""
        return [int(f[1].split("@")[0].rsplit(":", 1)[1]) for f in self._node_lines()
                if "master" in f[2] and "fail" not in f[2] and len(f) > 8]

    def replica_ports_of(self, port: int) -> list[int]:
        lines = self._node_lines()
        ids = {int(f[1].split("@")[0].rsplit(":", 1)[1]): f[0] for f in lines}
        return [int(f[1].split("@")[0].rsplit(":", 1)[1]) for f in lines
                if "slave" in f[2] and "fail" not in f[2] and f[3] == ids.get(port)]

    def owner_of(self, slot: int) -> int:
        """The port of the live master serving ``slot``."""
        for f in self._node_lines():
            if "master" not in f[2] or "fail" in f[2]:
                continue
            for span in f[8:]:
                lo, _, hi = span.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return int(f[1].split("@")[0].rsplit(":", 1)[1])
        raise LookupError(f"no live master serves slot {slot}")

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def flushall(self) -> None:
        for port in self.master_ports():
            self.node(port).command("FLUSHALL")

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()


_SENTINEL_CONF = """port {port}
bind 127.0.0.1
protected-mode no
dir {dir}
sentinel monitor {service} 127.0.0.1 {primary} 2
sentinel down-after-milliseconds {service} {down_ms}
sentinel failover-timeout {service} 10000
sentinel parallel-syncs {service} 1
"""


class RedisSentinelSet:
    """A primary, one replica and 3 sentinels (quorum 2) watching service ``service``;
    a dead primary is noticed after ``down_ms`` and its replica promoted."""

    def __init__(self, service: str = "aduib", down_ms: int = 1000) -> None:
        binary = _binary()
        self.service = service
        self.primary = RedisServer(binary)
        self.replica = RedisServer(binary, args=("--replicaof", "127.0.0.1",
                                                 str(self.primary.port)))
        self.sentinels = []
        for _ in range(3):
            s = RedisServer(binary)
            s.config = _SENTINEL_CONF.format(port=s.port, dir=s.dir, service=service,
                                             primary=self.primary.port, down_ms=down_ms)
            self.sentinels.append(s)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def start(self, timeout: float = 20.0) -> None:
        started = time.monotonic()
        self.primary.start()
        self.replica.start()
        for s in self.sentinels:
            s.start()
        left = max(1.0, timeout - (time.monotonic() - started))
        _wait("the sentinels", self.healthy, left)

    def master_port(self) -> int:
        """The primary's port as the first sentinel sees it."""
        addr = self.sentinels[0].command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        assert isinstance(addr, list | tuple)
        return int(addr[1])

    def healthy(self) -> bool:
        """Every sentinel knows the primary, its replica (in sync) and the 2 others."""
        port = None
        for s in self.sentinels:
            addr = s.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
            replicas = s.command("SENTINEL", "REPLICAS", self.service)
            others = s.command("SENTINEL", "SENTINELS", self.service)
            if not isinstance(addr, list | tuple) or port not in (None, int(addr[1])):
                return False
            port = int(addr[1])
            if not (isinstance(replicas, list) and len(replicas) == 1
                    and isinstance(others, list) and len(others) == 2):
                return False
            flags = replicas[0].get("flags", "") if isinstance(replicas[0], dict) else ""
            if "disconnected" in flags or "down" in flags:
                return False
        assert port is not None
        return _replicas_online(self.server(port)) == 1

    def server(self, port: int) -> RedisServer:
        return self.primary if self.primary.port == port else self.replica

    def flushall(self) -> None:
        self.server(self.master_port()).command("FLUSHALL")

    def stop(self) -> None:
        for node in (*self.sentinels, self.replica, self.primary):
            with contextlib.suppress(Exception):
                node.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterSet]:
    """One Redis Cluster (3 masters + 3 replicas) for the session; tests flush it."""
    cluster = RedisClusterSet()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinelSet]:
    """One primary + replica + 3 sentinels for the session; tests flush it."""
    group = RedisSentinelSet()
    try:
        group.start()
        yield group
    finally:
        group.stop()
