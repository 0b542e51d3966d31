"""Runtime configuration with hot reload (OPERATIONS.md section 2; docs/configuration.md)."""

from aduib_asgi.config.manager import (
    CONFIG_VERSION_KEY,
    ConfigManager,
    ReloadableApp,
    merge_sources,
)
from aduib_asgi.config.model import RuntimeConfig, config_version
from aduib_asgi.config.sources import ConfigError, ConfigSource, EnvSource, FileSource, MemorySource

__all__ = [
    "CONFIG_VERSION_KEY",
    "ConfigError",
    "ConfigManager",
    "ConfigSource",
    "EnvSource",
    "FileSource",
    "MemorySource",
    "ReloadableApp",
    "RuntimeConfig",
    "config_version",
    "merge_sources",
]
