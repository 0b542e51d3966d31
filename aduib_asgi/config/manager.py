"""Applying configurations: validate whole, build a snapshot, swap one reference.

:class:`ConfigManager` loads its sources (merged in order), validates the result
as one :class:`~aduib_asgi.config.model.RuntimeConfig`, then calls ``build``
to make the ASGI app that configuration describes (for the demo: the
configurable outer layers over long-lived inner ones). Only when all of this
succeeded does it swap :class:`ReloadableApp`'s reference, in one assignment:
a request runs on the app it started with (DESIGN-NOTES: one immutable
snapshot per request), so requests in flight finish under their configuration.
Anything that fails — syntax, an unknown key, a bad value, a build error — is
refused with a log line naming the key and the reason, and the previous
configuration stays in force.

Reloads happen on :meth:`ConfigManager.reload` (call it from a SIGHUP handler:
:meth:`ConfigManager.watching` installs one) and when a source's fingerprint
changes (polled every ``poll_interval`` seconds by :meth:`ConfigManager.watch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from aduib_asgi.config.model import RuntimeConfig
from aduib_asgi.config.sources import ConfigError, ConfigSource
from aduib_asgi.dispatcher.capabilities import CONFIG_VERSION_KEY as _CAPS_KEY

__all__ = ["CONFIG_VERSION_KEY", "ConfigManager", "ReloadableApp", "merge_sources"]

logger = logging.getLogger("aduib_asgi.config")

#: Scope key: the ``config_version`` of the snapshot a request runs on.
CONFIG_VERSION_KEY = _CAPS_KEY
#: Maps whose keys are secrets: a log line names their entries by a hash prefix.
_SECRET_MAPS = frozenset({"api_keys", "bearer_tokens"})


class ReloadableApp:
    """The outermost app of a reloadable stack: forwards to the current snapshot.

    The hot path is one attribute read (the ``(app, version)`` pair, swapped as
    one object) and one scope entry.
    """

    __slots__ = ("current",)

    def __init__(self, app: ASGIApp, version: str) -> None:
        self.current: tuple[ASGIApp, str] = (app, version)

    @property
    def app(self) -> ASGIApp:
        """The current snapshot's app."""
        return self.current[0]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app, version = self.current
        scope[CONFIG_VERSION_KEY] = version
        await app(scope, receive, send)


def merge_sources(layers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Later sources win; tables merge two levels deep (``section.key`` is replaced whole).

    A file's ``[auth]`` and ``ADUIB_AUTH__REQUIRE_AUTH`` combine; an env
    ``[auth.api_keys]`` replaces the file's keys rather than adding to them.
    """
    out: dict[str, Any] = {}
    for data in layers:
        for section, value in data.items():
            old = out.get(section)
            if isinstance(old, dict) and isinstance(value, Mapping):
                out[section] = {**old, **value}
            else:
                out[section] = dict(value) if isinstance(value, Mapping) else value
    return out


def _key_of(loc: Sequence[int | str]) -> str:
    parts: list[str] = []
    hide_next = False
    for item in loc:
        text = str(item)
        if hide_next:  # never write a credential into a log line
            text = "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:8]
            hide_next = False
        elif text in _SECRET_MAPS:
            hide_next = True
        parts.append(text)
    return ".".join(parts) or "(top level)"


def describe_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """(dotted key, reason) per validation error; input values are never included."""
    return [(_key_of(e["loc"]), e["msg"]) for e in exc.errors(include_input=False)]


class ConfigManager:
    """Holds the applied configuration and swaps the app built from it.

    ``build(config)`` returns the ASGI app for a configuration (raise
    :class:`ConfigError` or ``ValueError`` to refuse it). ``on_apply(config)``
    callbacks run after a successful build, just before the swap (log level...).
    """

    def __init__(
        self,
        sources: Sequence[ConfigSource],
        build: Callable[[RuntimeConfig], ASGIApp],
        *,
        model: type[RuntimeConfig] = RuntimeConfig,
        poll_interval: float = 1.0,
        on_apply: Sequence[Callable[[RuntimeConfig], None]] = (),
    ) -> None:
        self.sources = list(sources)
        self.build = build
        self.model = model
        self.poll_interval = poll_interval
        self.on_apply = list(on_apply)
        self.config: RuntimeConfig | None = None
        self.version: str | None = None
        self.app: ReloadableApp | None = None
        self.reloads = 0
        self.refusals = 0
        self._fingerprints: list[Hashable] = []
        self._lock = asyncio.Lock()

    # -- loading ---------------------------------------------------------------------

    def _fingerprint(self) -> list[Hashable]:
        return [s.fingerprint() for s in self.sources]

    async def _load(self) -> dict[str, Any]:
        layers = []
        for source in self.sources:
            data = source.load()
            if inspect.isawaitable(data):
                data = await data
            layers.append(data)
        return merge_sources(layers)

    def _validate(self, raw: Mapping[str, Any]) -> RuntimeConfig:
        try:
            return self.model.model_validate(raw)
        except ValidationError as exc:
            problems = describe_errors(exc)
            raise ConfigError(*problems[0], problems=problems) from None

    def start(self) -> ReloadableApp:
        """Load, validate and build the first configuration (raises :class:`ConfigError`).

        Sources with an async ``load`` need :meth:`astart` instead.
        """
        self._fingerprints = self._fingerprint()
        layers = []
        for source in self.sources:
            data = source.load()
            if inspect.isawaitable(data):
                close = getattr(data, "close", None)
                if close is not None:
                    close()
                raise RuntimeError(f"{source.name} loads asynchronously: await astart()")
            layers.append(data)
        return self._first(self._validate(merge_sources(layers)))

    async def astart(self) -> ReloadableApp:
        """:meth:`start` from async code (sources may load asynchronously)."""
        self._fingerprints = self._fingerprint()
        return self._first(self._validate(await self._load()))

    def _first(self, config: RuntimeConfig) -> ReloadableApp:
        app = self._build(config)
        self._apply(config)
        self.app = ReloadableApp(app, config.version)
        logger.info("configuration %s applied", config.version)
        return self.app

    def _build(self, config: RuntimeConfig) -> ASGIApp:
        try:
            return self.build(config)
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:
            raise ConfigError("(build)", str(exc)) from None

    def _apply(self, config: RuntimeConfig) -> None:
        for callback in self.on_apply:
            try:
                callback(config)
            except Exception:  # the app is built: a failing side effect must not stop it
                logger.exception("configuration callback %r failed", callback)
        self.config = config
        self.version = config.version

    async def reload(self, *, reason: str = "reload") -> bool:
        """Load, validate, build and swap; False (logged, old config kept) when refused."""
        if self.app is None:
            raise RuntimeError("start() the manager first")
        async with self._lock:  # a SIGHUP and a poll at once: one after the other
            return await self._reload(reason)

    async def _reload(self, reason: str) -> bool:
        assert self.app is not None
        self._fingerprints = self._fingerprint()
        try:
            config = self._validate(await self._load())
            if config.version == self.version:
                logger.info("configuration unchanged (%s, %s)", config.version, reason)
                return True
            app = self._build(config)
        except ConfigError as exc:
            self.refusals += 1
            for key, why in exc.problems:
                where = f"{exc.source}: " if exc.source else ""
                logger.error("configuration refused (%s): %s%s: %s; configuration %s stays",
                             reason, where, key, why, self.version)
            return False
        except Exception as exc:  # a user's source failing must not stop the watcher
            self.refusals += 1
            logger.error("configuration refused (%s): %s: %s; configuration %s stays",
                         reason, type(exc).__name__, exc, self.version)
            return False
        old = self.version
        self._apply(config)
        self.app.current = (app, config.version)  # the swap: one assignment
        self.reloads += 1
        logger.warning("configuration %s applied (was %s, %s)", config.version, old, reason)
        return True

    # -- watching --------------------------------------------------------------------

    async def watch(self) -> None:
        """Poll the sources' fingerprints forever; reload when one changes.

        ``poll_interval <= 0``: no polling (reloads on SIGHUP or :meth:`reload` only).
        """
        if self.poll_interval <= 0:
            await asyncio.Event().wait()
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                changed = self._fingerprint() != self._fingerprints
            except Exception:
                logger.exception("configuration source fingerprint failed")
                continue
            if changed:
                await self._settle()
                await self.reload(reason="change noticed")

    async def _settle(self, pause: float = 0.1, tries: int = 10) -> None:
        """Wait until the fingerprints stop changing (a file still being written)."""
        last = self._fingerprint()
        for _ in range(tries):
            await asyncio.sleep(pause)
            now = self._fingerprint()
            if now == last:
                return
            last = now

    @contextlib.asynccontextmanager
    async def watching(self, *, sighup: bool = True) -> AsyncIterator[ConfigManager]:
        """Run :meth:`watch` (and reload on SIGHUP, where signals exist) inside the block."""
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[bool]] = set()

        def on_sighup() -> None:
            task = loop.create_task(self.reload(reason="SIGHUP"))
            pending.add(task)
            task.add_done_callback(pending.discard)

        installed = False
        if sighup and hasattr(signal, "SIGHUP"):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGHUP, on_sighup)
                installed = True
        watcher = loop.create_task(self.watch())
        try:
            yield self
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if installed:
                loop.remove_signal_handler(signal.SIGHUP)

