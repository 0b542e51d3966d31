"""Where a configuration comes from: the :class:`ConfigSource` interface and three sources.

A source returns the raw configuration (a mapping, before validation) from
:meth:`~ConfigSource.load`, and a cheap :meth:`~ConfigSource.fingerprint` that
changes when the configuration may have changed (the manager polls it, about
once a second, and loads only then). Write your own for a key-value store: any
object with these two methods (``load`` may be async) will do.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Awaitable, Hashable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["ConfigError", "ConfigSource", "EnvSource", "FileSource", "MemorySource"]


class ConfigError(ValueError):
    """A configuration that cannot be used: ``key`` names where (dotted), ``reason`` why."""

    def __init__(self, key: str, reason: str, *, source: str | None = None,
                 problems: list[tuple[str, str]] | None = None) -> None:
        self.key = key
        self.reason = reason
        self.source = source
        #: Every (key, reason) found (the first is ``key``/``reason``).
        self.problems = problems or [(key, reason)]
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(f"{k}: {r}" for k, r in self.problems))


@runtime_checkable
class ConfigSource(Protocol):
    """One place a configuration comes from."""

    #: For log lines ("file /etc/app.toml", "env ADUIB_*").
    name: str

    def load(self) -> Mapping[str, Any] | Awaitable[Mapping[str, Any]]:
        """The raw configuration; raise :class:`ConfigError` for unreadable input."""
        ...

    def fingerprint(self) -> Hashable:
        """Cheap; different whenever :meth:`load` may return something else."""
        ...


class MemorySource:
    """A configuration held in memory; :meth:`set` replaces it (the manager notices)."""

    def __init__(self, data: Mapping[str, Any] | None = None, *, name: str = "memory") -> None:
        self.name = name
        self._data: Mapping[str, Any] = dict(data or {})
        self._generation = 0

    def set(self, data: Mapping[str, Any]) -> None:
        self._data = dict(data)
        self._generation += 1

    def load(self) -> Mapping[str, Any]:
        return self._data

    def fingerprint(self) -> Hashable:
        return self._generation


class FileSource:
    """A TOML file, or JSON when the name ends in ``.json``.

    The fingerprint is the file's size, modification time and inode (an editor
    that writes a new file and renames it is noticed too); a missing or empty
    file loads as an error (an empty one is most likely being written), so the
    previous configuration stays.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = f"file {self.path}"
        self._json = self.path.suffix.lower() == ".json"

    def fingerprint(self) -> Hashable:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)

    def load(self) -> Mapping[str, Any]:
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise ConfigError("(file)", f"cannot read: {exc.strerror or exc}",
                              source=self.name) from None
        try:
            text = raw.decode("utf-8")
            data = json.loads(text) if self._json else tomllib.loads(text)
        except UnicodeDecodeError:
            raise ConfigError("(file)", "not UTF-8", source=self.name) from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"(line {exc.lineno}, column {exc.colno})",
                              f"invalid JSON: {exc.msg}", source=self.name) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("(syntax)", f"invalid TOML: {exc}", source=self.name) from None
        if not isinstance(data, dict):
            raise ConfigError("(file)", "the top level must be a table/object",
                              source=self.name)
        if not text.strip():
            # most likely caught between truncate and write: applying it would drop
            # every section (require_auth, keys...) until the next change
            raise ConfigError("(file)", "empty (write a comment, or {} in JSON, for the "
                              "built-in behaviour)", source=self.name)
        return data


class EnvSource:
    """Environment variables ``{prefix}SECTION__KEY`` (``__`` separates levels).

    ``ADUIB_AUTH__REQUIRE_AUTH=true`` -> ``{"auth": {"require_auth": true}}``.
    Values are parsed as JSON when they parse (``true``, ``512``,
    ``["2.0"]``, ``{"k": ...}``), else taken as strings. Keys are lower-cased.
    """

    def __init__(self, prefix: str = "ADUIB_", environ: Mapping[str, str] | None = None) -> None:
        self.prefix = prefix
        self.name = f"env {prefix}*"
        self._environ = environ if environ is not None else os.environ

    def _items(self) -> list[tuple[str, str]]:
        p = self.prefix
        return sorted((k, v) for k, v in self._environ.items() if k.startswith(p))

    def fingerprint(self) -> Hashable:
        return tuple(self._items())

    def load(self) -> Mapping[str, Any]:
        out: dict[str, Any] = {}
        for key, raw in self._items():
            path = [part.lower() for part in key[len(self.prefix):].split("__")]
            if not all(path):
                raise ConfigError(key, "empty key part (use one '__' between levels)",
                                  source=self.name)
            try:
                value: Any = json.loads(raw)
            except ValueError:
                value = raw
            node = out
            for part in path[:-1]:
                nxt = node.setdefault(part, {})
                if not isinstance(nxt, dict):
                    raise ConfigError(key, "conflicts with another variable", source=self.name)
                node = nxt
            node[path[-1]] = value
        return out
