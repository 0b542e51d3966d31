"""Protocol versions: parsing, ordering and negotiation (PROTOCOL.md section 4).

Versions are ``MAJOR.MINOR`` strings compared numerically ("2.10" > "2.9").
:class:`ServerVersions` holds what a server speaks and negotiates one request:
with ``supported_versions`` it picks the highest common version, without it the
request's own ``aduib_rpc`` version must be supported; anything else is 1001.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from aduib_asgi.errors import RpcError

__all__ = [
    "DEFAULT_VERSIONS",
    "VERSIONS_KEY",
    "ServerVersions",
    "VersionKey",
    "is_version",
    "parse_version",
    "version_error",
]

#: The versions a server speaks unless configured otherwise (PROTOCOL.md section 4).
DEFAULT_VERSIONS: tuple[str, ...] = ("2.0", "1.0")

#: ``ctx.extras`` key where the version layer publishes its :class:`ServerVersions`.
VERSIONS_KEY = "aduib.versions"

VersionKey = tuple[int, int]

_DIGITS = frozenset("0123456789")


_KEYS: dict[str, VersionKey] = {}


def parse_version(value: object) -> VersionKey | None:
    """``"2.10"`` -> ``(2, 10)``; None unless ``value`` is an ASCII ``MAJOR.MINOR`` string."""
    if not isinstance(value, str) or len(value) > 9:
        return None
    cached = _KEYS.get(value)
    if cached is not None:
        return cached
    major, dot, minor = value.partition(".")
    if (not dot or not major or not minor or len(major) > 4 or len(minor) > 4
            or not _DIGITS.issuperset(major) or not _DIGITS.issuperset(minor)):
        return None
    key = (int(major), int(minor))
    if len(_KEYS) < 1024:  # bounded: arbitrary client strings cannot grow it forever
        _KEYS[value] = key
    return key


def is_version(value: object) -> bool:
    return parse_version(value) is not None


def version_error(message: str, *, field: str | None, reason: str,
                  server_versions: Sequence[str] | None = None,
                  requested: Any = None) -> RpcError:
    """A 1001 UNSUPPORTED_VERSION error with one detail (server versions in its metadata)."""
    detail: dict[str, Any] = {"type": "unsupported_version", "reason": reason}
    if field is not None:
        detail["field"] = field
    meta: dict[str, Any] = {}
    if server_versions is not None:
        meta["supported_versions"] = list(server_versions)
    if requested is not None:
        meta["requested"] = requested
    if meta:
        detail["metadata"] = meta
    return RpcError(1001, message, details=[detail])


class ServerVersions:
    """The protocol versions a server supports, highest first, and the negotiation rule."""

    __slots__ = ("_by_key", "exact", "keys", "listing", "versions")

    def __init__(self, versions: Iterable[str] = DEFAULT_VERSIONS) -> None:
        by_key: dict[VersionKey, str] = {}
        for v in versions:
            key = parse_version(v)
            if key is None:
                raise ValueError(f"server version {v!r} is not MAJOR.MINOR")
            by_key.setdefault(key, v)
        if not by_key:
            raise ValueError("a server must support at least one protocol version")
        self.keys: tuple[VersionKey, ...] = tuple(sorted(by_key, reverse=True))
        self._by_key = by_key
        #: Server versions, highest first, in the server's own spelling.
        self.versions: tuple[str, ...] = tuple(by_key[k] for k in self.keys)
        self.listing = ", ".join(self.versions)
        #: The server's exact spellings (``{"2.0": "2.0", ...}``): a request naming one
        #: of them, without ``supported_versions``, negotiates it (the hot path).
        self.exact: dict[str, str] = {v: v for v in self.versions}

    @property
    def highest(self) -> str:
        return self.versions[0]

    def supported(self, version: str) -> str | None:
        """The server's spelling of ``version`` if supported ("2.00" matches "2.0")."""
        fast = self.exact.get(version)
        if fast is not None:
            return fast
        key = parse_version(version)
        return self._by_key.get(key) if key is not None else None

    def negotiate(self, version: object, supported_versions: object = None) -> str:
        """The negotiated version, or RpcError 1001.

        ``supported_versions`` (the client's list) wins when given: the highest
        common version by numeric MAJOR.MINOR. Otherwise ``version`` (the
        request's ``aduib_rpc``) must itself be supported. Malformed values are
        1001 too.
        """
        if supported_versions is not None:
            return self._intersect(supported_versions)
        if isinstance(version, str):
            fast = self.exact.get(version)  # the hot path: an exact server spelling
            if fast is not None:
                return fast
        if version is None:
            return self.highest
        if not isinstance(version, str) or parse_version(version) is None:
            raise version_error(
                f"Malformed protocol version {version!r}", field="aduib_rpc",
                reason="not a MAJOR.MINOR version", server_versions=self.versions)
        found = self.supported(version)
        if found is None:
            raise version_error(
                f"Protocol version {version} is not supported; server supports {self.listing}",
                field="aduib_rpc", reason="version not supported by the server",
                server_versions=self.versions, requested=version)
        return found

    def _intersect(self, requested: object) -> str:
        if not isinstance(requested, list | tuple) or not requested:
            raise version_error(
                "supported_versions must be a non-empty list of MAJOR.MINOR versions",
                field="supported_versions", reason="not a non-empty list",
                server_versions=self.versions)
        best: VersionKey | None = None
        for i, item in enumerate(requested):
            key = parse_version(item)
            if key is None:
                raise version_error(
                    f"Malformed protocol version {item!r} in supported_versions",
                    field=f"supported_versions.{i}", reason="not a MAJOR.MINOR version",
                    server_versions=self.versions)
            if key in self._by_key and (best is None or key > best):
                best = key
        if best is None:
            raise version_error(
                f"No common protocol version; server supports {self.listing}",
                field="supported_versions", reason="no version in common with the server",
                server_versions=self.versions, requested=list(requested))
        return self._by_key[best]

    def in_range(self, since: VersionKey | None, until: VersionKey | None) -> list[str]:
        """Server versions ``v`` with ``since <= v < until`` (None: unbounded)."""
        return [self._by_key[k] for k in self.keys
                if (since is None or k >= since) and (until is None or k < until)]
