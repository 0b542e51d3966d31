"""One Redis URL for every store: a single server, Redis Sentinel or Redis Cluster.

The URL forms are those ``limits`` accepts, so one ``--redis URL`` serves the
rate limits (``limits``' own storages) and every other store (idempotency,
tasks, task events, the cancel fan-out, byte budgets):

- ``redis://[[user]:pw@]host:port[/db]``, ``rediss://...`` (TLS), ``unix://path``;
- ``redis+sentinel://[[user]:pw@]host:port[,host:port...]/service_name[/db]``:
  the primary the sentinels name (``Sentinel(...).master_for(service_name)``),
  found again after a failover;
- ``redis+cluster://[[user]:pw@]host:port[,host:port...]``: a ``RedisCluster``
  started from those nodes.

Two query parameters of our own (removed before the URL reaches ``redis`` or
``limits``) make writes that must survive a failover wait for replicas
(``WAIT``): ``wait_replicas=N`` (default 1 for Sentinel, else 0: no wait) and
``wait_timeout_ms=T`` (default 100). :func:`queue_wait` queues that ``WAIT`` on
the connection that made the write.

Keys a script or transaction touches together share one hash tag (``{...}``),
so the stores work unchanged on a cluster; pub/sub on a cluster subscribes on,
and publishes to, the node owning the channel's slot (:func:`pubsub_for`,
:func:`publish`), so ``PUBLISH``'s receiver count covers every subscriber.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from aduib_asgi.extras import require

__all__ = [
    "REDIS_SCHEMES",
    "RedisTarget",
    "is_cluster",
    "is_redis_url",
    "limits_storage",
    "parse_redis_url",
    "publish",
    "pubsub_for",
    "queue_wait",
    "redis_client",
    "subscription_moved",
]

#: The URL schemes :func:`redis_client` understands.
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")
#: Default ``WAIT`` timeout (ms) when replicas are waited for.
DEFAULT_WAIT_TIMEOUT_MS = 100
_OWN_PARAMS = ("wait_replicas", "wait_timeout_ms")


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL: what to connect to and how."""

    kind: Literal["single", "sentinel", "cluster"]
    url: str  # the URL without our own query parameters
    locations: tuple[tuple[str, int], ...] = ()
    service_name: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    wait_replicas: int = 0
    wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS
    query: dict[str, str] = field(default_factory=dict)


def is_redis_url(url: str) -> bool:
    """Whether ``url`` is one of the Redis forms above."""
    return url.partition("://")[0] in REDIS_SCHEMES


def parse_redis_url(url: str) -> RedisTarget:
    """Parse one of the URL forms above; ``ValueError`` for anything else."""
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme not in REDIS_SCHEMES:
        raise ValueError(f"unsupported Redis URL {url!r} (redis://, rediss://, unix://, "
                         "redis+sentinel://, redis+cluster://)")
    query = dict(parse_qsl(parts.query))
    own = {k: query.pop(k) for k in _OWN_PARAMS if k in query}
    kind: Literal["single", "sentinel", "cluster"] = (
        "sentinel" if scheme == "redis+sentinel" else
        "cluster" if scheme == "redis+cluster" else "single")
    try:
        wait_replicas = int(own.get("wait_replicas", 1 if kind == "sentinel" else 0))
        wait_timeout = int(own.get("wait_timeout_ms", DEFAULT_WAIT_TIMEOUT_MS))
    except ValueError:
        raise ValueError(f"wait_replicas / wait_timeout_ms must be integers in {url!r}") from None
    if wait_replicas < 0 or not 1 <= wait_timeout <= 10_000:
        raise ValueError("wait_replicas must be >= 0 and wait_timeout_ms in 1..10000")
    clean = urlunsplit((scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    common: dict[str, Any] = {"url": clean, "username": username, "password": password,
                              "wait_replicas": wait_replicas, "wait_timeout_ms": wait_timeout,
                              "query": query}
    if kind == "single":
        return RedisTarget("single", **common)
    locations = _locations(parts.netloc, url)
    if kind == "cluster":
        if parts.path not in ("", "/"):
            raise ValueError(f"a Redis Cluster URL has no database or path: {url!r}")
        return RedisTarget("cluster", locations=locations, **common)
    segments = [s for s in parts.path.split("/") if s]
    if not segments or len(segments) > 2:
        raise ValueError(f"a Sentinel URL names its service: "
                         f"redis+sentinel://host:port/service_name[/db], not {url!r}")
    db = int(segments[1]) if len(segments) == 2 else 0
    return RedisTarget("sentinel", locations=locations, service_name=segments[0], db=db,
                       **common)


def _locations(netloc: str, url: str) -> tuple[tuple[str, int], ...]:
    hosts = netloc.rpartition("@")[2]
    out = []
    for loc in hosts.split(","):
        sub = urlsplit(f"x://{loc.strip()}")
        if not sub.hostname or sub.port is None:
            raise ValueError(f"missing host or port in {loc!r} of {url!r}")
        out.append((sub.hostname, sub.port))
    if not out:
        raise ValueError(f"no host in {url!r}")
    return tuple(out)


def redis_client(url: str | RedisTarget, *, timeout: float = 1.0,
                 decode_responses: bool = False, **options: Any) -> Any:
    """A ``redis.asyncio`` client for ``url``: ``Redis``, a Sentinel-managed
    ``Redis`` for the named primary, or ``RedisCluster``. Every network call is
    bounded by ``timeout`` seconds (connect and socket)."""
    require("redis.asyncio", "redis", "A Redis client (redis://, Sentinel, Cluster)")
    from redis.asyncio import Redis

    target = url if isinstance(url, RedisTarget) else parse_redis_url(url)
    kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                              "decode_responses": decode_responses, **options}
    auth: dict[str, Any] = {k: v for k, v in (("username", target.username),
                                              ("password", target.password)) if v}
    if target.kind == "single":
        return Redis.from_url(target.url, **kwargs)
    if target.kind == "sentinel":
        from redis.asyncio.sentinel import Sentinel

        sentinel = Sentinel(list(target.locations),
                            sentinel_kwargs={"socket_timeout": timeout,
                                             "socket_connect_timeout": timeout, **auth},
                            **auth, db=target.db, **kwargs)
        assert target.service_name is not None
        return sentinel.master_for(target.service_name)
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in target.locations],
                        **auth, **kwargs)


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a ``RedisCluster`` (keyless commands need routing)."""
    from redis.asyncio.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def queue_wait(pipe: Any, client: Any, key: str, replicas: int, timeout_ms: int) -> bool:
    """Queue ``WAIT replicas timeout_ms`` on ``pipe`` after the writes to ``key``,
    on the connection that made them (on a cluster: the node owning ``key``).
    False (nothing queued) when ``replicas`` is 0."""
    if replicas <= 0:
        return False
    if is_cluster(client):
        node = client.get_node_from_key(key)
        pipe.execute_command("WAIT", replicas, timeout_ms, target_nodes=node)
    else:
        pipe.execute_command("WAIT", replicas, timeout_ms)
    return True


async def publish(client: Any, channel: str, message: str) -> int:
    """``PUBLISH``; on a cluster to the node owning ``channel``'s slot, where
    :func:`pubsub_for` subscribes, so the receiver count is every subscriber's."""
    if is_cluster(client):
        await client.initialize()
        node = client.get_node_from_key(channel)
        return int(await client.publish(channel, message, target_nodes=node))
    return int(await client.publish(channel, message))


async def pubsub_for(client: Any, channel: str, **options: Any) -> Any:
    """A pub/sub for ``channel`` (and channels of its hash tag): the client's own,
    or on a cluster one connection to the node owning ``channel``'s slot, found
    again on each call (after a failover, the new owner)."""
    if not is_cluster(client):
        return client.pubsub(**options)
    from redis.asyncio import Redis

    # a keyed command for the channel's slot first: it fails while the owner is
    # down, and lets the cluster client learn a new owner (failover) by itself
    await client.exists(channel)
    node = client.get_node_from_key(channel)
    kw = node.connection_kwargs
    direct = Redis(host=node.host, port=node.port,
                   **{k: kw[k] for k in ("username", "password", "socket_timeout",
                                         "socket_connect_timeout", "decode_responses")
                      if k in kw})
    pubsub: Any = direct.pubsub(**options)
    pubsub.owner = direct  # closed with the pub/sub (see storage.pubsub.messages)
    pubsub.node_name = node.name
    return pubsub


async def subscription_moved(client: Any, pubsub: Any, channel: str) -> bool:
    """Whether ``pubsub`` (from :func:`pubsub_for`) is no longer on the server that
    publishes to ``channel`` go to: after a Sentinel failover that demoted its
    server to a replica (which still relays the messages, but is not counted in
    ``PUBLISH``'s reply), or a new owner of the channel's slot on a cluster. One
    sentinel query on Sentinel, none otherwise."""
    if is_cluster(client):
        name = getattr(pubsub, "node_name", None)
        return name is not None and client.get_node_from_key(channel).name != name
    from redis.asyncio.sentinel import SentinelConnectionPool

    pool = getattr(client, "connection_pool", None)
    connection = getattr(pubsub, "connection", None)
    if not isinstance(pool, SentinelConnectionPool) or connection is None:
        return False
    host, port = await pool.get_master_address()
    return (connection.host, int(connection.port)) != (host, int(port))


def limits_storage(url: str) -> tuple[str, dict[str, Any]]:
    """The ``limits`` storage URI and options for ``url`` (``async+`` prefixed;
    redis-py implementation; a Sentinel database as an option, primary only:
    counters read from a replica could lag the writes)."""
    target = parse_redis_url(url)
    options: dict[str, Any] = {}
    uri = target.url
    if target.kind == "sentinel":
        parts = urlsplit(uri)
        assert target.service_name is not None
        uri = urlunsplit((parts.scheme, parts.netloc, "/" + target.service_name,
                          parts.query, ""))
        options["use_replicas"] = False
        if target.db:
            options["db"] = target.db
    return "async+" + uri, options
