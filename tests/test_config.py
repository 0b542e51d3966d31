"""Runtime configuration in-process: the model, the sources, the manager's swap."""

from __future__ import annotations

import gzip
import logging
import tomllib
from pathlib import Path
from typing import Any

import anyio
import pytest

from aduib_asgi.config import (
    ConfigError,
    ConfigManager,
    EnvSource,
    FileSource,
    MemorySource,
    RuntimeConfig,
    merge_sources,
)
from aduib_asgi.demo import DemoConfig, build_demo_app
from tests.config_helpers import BASE
from tests.conftest import RPC, client_for, envelope

pytestmark = pytest.mark.anyio

EXAMPLE = BASE + '\n[tenants.acme.ratelimit]\nlimited = "1/10 seconds"\n'


def _demo(data: dict[str, Any] | None = None) -> tuple[Any, MemorySource, ConfigManager]:
    source = MemorySource(data or {})
    app = build_demo_app(DemoConfig(config_sources=[source]))
    return app, source, app.config_manager


def test_the_operations_example_is_a_valid_configuration() -> None:
    config = RuntimeConfig.model_validate(tomllib.loads(EXAMPLE))
    assert config.ratelimit is not None and config.ratelimit.policies[0].per == "tenant"
    assert config.tenants is not None and config.tenants["acme"].ratelimit == {
        "limited": "1/10 seconds"}
    assert len(config.version) == 16
    same = RuntimeConfig.model_validate(tomllib.loads(EXAMPLE))
    assert same.version == config.version  # a content hash
    assert RuntimeConfig().version != config.version


@pytest.mark.parametrize("data, key", [
    ({"auth": {"requre_auth": True}}, "auth.requre_auth"),
    ({"compression": {"minimum_size": -1}}, "compression.minimum_size"),
    ({"server": {"env": "staging"}}, "server.env"),
    ({"versions": {"supported": ["2"]}}, "versions.supported"),
    ({"versions": {"supported": []}}, "versions.supported"),
    ({"ratelimit": {"policies": [{"name": "a", "limit": "lots"}]}}, "ratelimit.policies.0.limit"),
    ({"ratelimit": {"policies": [{"name": "a", "limit": "1/second", "per": "planet"}]}},
     "ratelimit.policies.0.per"),
    ({"log": {"level": "chatty"}}, "log.level"),
    ({"tenants": {"acme": {"ratelimit": {"x": "1/second"}}}, "ratelimit": {"policies": []}},
     "tenants.acme.ratelimit.x"),
    ({"auth": {"api_keys": {"k": {"principal": ""}}}}, "auth.api_keys.sha256:"),
])
def test_a_bad_value_is_refused_naming_its_key(data: dict[str, Any], key: str) -> None:
    source = MemorySource(data)
    manager = ConfigManager([source], lambda cfg: _noop)
    with pytest.raises(ConfigError) as refused:
        manager.start()
    assert str(refused.value).find(key) >= 0, str(refused.value)


async def _noop(scope: Any, receive: Any, send: Any) -> None:
    return None


def test_env_source_builds_nested_sections() -> None:
    env = {"ADUIB_AUTH__REQUIRE_AUTH": "true", "ADUIB_COMPRESSION__MINIMUM_SIZE": "64",
           "ADUIB_VERSIONS__SUPPORTED": '["2.0"]', "ADUIB_LOG__LEVEL": "info", "OTHER": "x"}
    data = EnvSource(environ=env).load()
    assert data == {"auth": {"require_auth": True}, "compression": {"minimum_size": 64},
                    "versions": {"supported": ["2.0"]}, "log": {"level": "info"}}
    config = RuntimeConfig.model_validate(data)
    assert config.auth is not None and config.auth.require_auth is True


def test_sources_merge_by_section_key() -> None:
    merged = merge_sources([
        {"auth": {"require_auth": False, "api_keys": {"a": {"principal": "x"}}}},
        {"auth": {"require_auth": True}, "log": {"level": "info"}},
        {"auth": {"api_keys": {"b": {"principal": "y"}}}},
    ])
    assert merged == {"auth": {"require_auth": True, "api_keys": {"b": {"principal": "y"}}},
                      "log": {"level": "info"}}


def test_file_source_reads_toml_and_json_and_reports_syntax(tmp_path: Path) -> None:
    toml_file = tmp_path / "c.toml"
    toml_file.write_text("[log]\nlevel = 'info'\n")
    assert FileSource(toml_file).load() == {"log": {"level": "info"}}
    json_file = tmp_path / "c.json"
    json_file.write_text('{"log": {"level": "info"}}')
    assert FileSource(json_file).load() == {"log": {"level": "info"}}
    json_file.write_text('{"log": ')
    with pytest.raises(ConfigError, match="invalid JSON"):
        FileSource(json_file).load()
    toml_file.write_text("[log\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        FileSource(toml_file).load()
    with pytest.raises(ConfigError, match="cannot read"):
        FileSource(tmp_path / "missing.toml").load()
    before = FileSource(toml_file).fingerprint()
    toml_file.write_text("[log]\nlevel = 'error'\n")
    assert FileSource(toml_file).fingerprint() != before


async def test_a_reload_swaps_and_requests_in_flight_keep_their_snapshot() -> None:
    app, source, manager = _demo()
    async with client_for(app) as c:
        result: dict[str, Any] = {}

        async def slow() -> None:
            result["r"] = await c.post(RPC, json=envelope("rpc.v2/Echo/sleep", {"ms": 300}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            await anyio.sleep(0.1)  # in flight under require_auth = false
            source.set({"auth": {"require_auth": True}})
            assert await manager.reload() is True
            refused = await c.post(RPC, json=envelope("rpc.v2/Echo/sleep", {"ms": 1}))
            assert (refused.status_code, refused.json()["error"]["code"]) == (401, 3000)
        assert result["r"].status_code == 200  # finished under the configuration it began with
        caps = await c.get("/aduib_rpc/v2/capabilities",
                           headers={"Authorization": "Bearer demo-user-token"})
        assert caps.json()["config_version"] == manager.version


async def test_a_refused_configuration_leaves_the_old_one(
        caplog: pytest.LogCaptureFixture) -> None:
    app, source, manager = _demo({"compression": {"minimum_size": 100}})
    version = manager.version
    source.set({"compression": {"minimum_size": "big"}, "auth": {"require_auth": True}})
    with caplog.at_level(logging.ERROR, "aduib_asgi.config"):
        assert await manager.reload() is False
    assert manager.version == version and manager.refusals == 1
    assert "compression.minimum_size" in caplog.text and "stays" in caplog.text
    async with client_for(app) as c:
        r = await c.post(RPC, json=envelope("rpc.v2/Echo/echo", {"a": 1}))
    assert r.status_code == 200  # require_auth of the refused configuration is not applied


async def test_unknown_override_of_a_built_in_policy_is_refused_at_build() -> None:
    app, source, manager = _demo()
    source.set({"tenants": {"acme": {"ratelimit": {"nope": "1/second"}}}})
    assert await manager.reload() is False
    source.set({"tenants": {"acme": {"ratelimit": {"limited": "1/minute"}}}})
    assert await manager.reload() is True  # the demo's built-in policy is named "limited"
    async with client_for(app) as c:
        first = await c.post(RPC, json=envelope("rpc.v2/Limited/ping", {}),
                             headers={"X-Tenant-ID": "acme"})
        second = await c.post(RPC, json=envelope("rpc.v2/Limited/ping", {}),
                              headers={"X-Tenant-ID": "acme"})
        other = await c.post(RPC, json=envelope("rpc.v2/Limited/ping", {}),
                             headers={"X-Tenant-ID": "zeta"})
    assert first.status_code == 200 and second.status_code == 429
    assert other.status_code == 200 and "q=3;" in other.headers["ratelimit-policy"]


async def test_long_lived_state_survives_a_reload() -> None:
    app, source, manager = _demo()
    async with client_for(app) as c:
        for _ in range(3):
            assert (await c.post(RPC, json=envelope("rpc.v2/Limited/ping", {}),
                                 headers={"X-Tenant-ID": "keep"})).status_code == 200
        key = {"Idempotency-Key": '"once-1"'}
        first = await c.post(RPC, json=envelope("rpc.v2/Counter/incr", {"by": 1}), headers=key)
        source.set({"compression": {"minimum_size": 64}})
        assert await manager.reload() is True
        limited = await c.post(RPC, json=envelope("rpc.v2/Limited/ping", {}),
                               headers={"X-Tenant-ID": "keep"})
        again = await c.post(RPC, json=envelope("rpc.v2/Counter/incr", {"by": 1}), headers=key)
    assert limited.status_code == 429  # the counter was not reset by the reload
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json()["result"] == first.json()["result"]


async def test_compression_can_be_switched_off_and_requests_still_decode() -> None:
    app, source, manager = _demo({"compression": {"enabled": False}})
    async with client_for(app) as c:
        big = await c.post(RPC, json=envelope("rpc.v2/Echo/big", {"size": 5000}),
                           headers={"Accept-Encoding": "gzip"})
        assert "content-encoding" not in big.headers
        packed = gzip.compress(b'{"aduib_rpc":"2.0","method":"rpc.v2/Echo/echo","data":{"z":1}}')
        r = await c.post(RPC, content=packed, headers={"Content-Encoding": "gzip",
                                                       "Content-Type": "application/json"})
        assert r.json()["result"] == {"z": 1}
        source.set({"compression": {"enabled": True, "minimum_size": 100}})
        assert await manager.reload()
        big = await c.post(RPC, json=envelope("rpc.v2/Echo/big", {"size": 5000}),
                           headers={"Accept-Encoding": "gzip"})
        assert big.headers["content-encoding"] == "gzip"


async def test_env_dev_shows_debug_info_and_log_level_applies() -> None:
    app, source, manager = _demo({"server": {"env": "dev"}, "log": {"level": "info"}})
    try:
        async with client_for(app) as c:
            r = await c.post(RPC, json=envelope("rpc.v2/Echo/crash", {}))
            assert "boom-secret" in r.text
            assert logging.getLogger("aduib_asgi").level == logging.INFO
            source.set({"server": {"env": "prod"}, "log": {"level": "error"}})
            assert await manager.reload()
            r = await c.post(RPC, json=envelope("rpc.v2/Echo/crash", {}))
            assert "boom-secret" not in r.text and r.status_code == 500
            assert logging.getLogger("aduib_asgi").level == logging.ERROR
    finally:
        logging.getLogger("aduib_asgi").setLevel(logging.NOTSET)


async def test_the_watcher_notices_a_changed_source() -> None:
    source = MemorySource({})
    app = build_demo_app(DemoConfig(config_sources=[source], config_poll_s=0.05))
    manager: ConfigManager = app.config_manager
    first = manager.version
    async with manager.watching(sighup=False):
        source.set({"versions": {"supported": ["2.0"]}})
        with anyio.fail_after(10):
            while manager.version == first:
                await anyio.sleep(0.02)
    assert manager.config is not None and manager.config.versions is not None
    assert manager.reloads == 1


async def test_async_sources_are_supported() -> None:
    class KvSource:
        name = "kv"

        def __init__(self) -> None:
            self.data: dict[str, Any] = {"log": {"level": "info"}}

        async def load(self) -> dict[str, Any]:
            await anyio.sleep(0)
            return self.data

        def fingerprint(self) -> Any:
            return repr(self.data)

    source = KvSource()
    manager = ConfigManager([source], lambda cfg: _noop)
    with pytest.raises(RuntimeError, match="astart"):
        manager.start()
    await manager.astart()
    assert manager.config is not None and manager.config.log is not None
    source.data = {"log": {"level": "error"}}
    assert await manager.reload()
    assert manager.config.log is not None and manager.config.log.level == "error"


def test_every_problem_of_a_configuration_is_reported() -> None:
    manager = ConfigManager([MemorySource({"log": {"level": "loud"},
                                           "compression": {"minimum_size": -1}})],
                            lambda cfg: _noop)
    with pytest.raises(ConfigError) as refused:
        manager.start()
    assert {k for k, _ in refused.value.problems} == {"log.level", "compression.minimum_size"}
    assert "log.level" in str(refused.value) and "compression.minimum_size" in str(refused.value)


async def test_mtls_roles_are_configured_and_reloaded() -> None:
    import trustme

    from aduib_asgi.auth.tls import TlsExtensionApp

    app, source, manager = _demo()
    cert = trustme.CA().issue_cert("ops-bot")  # principal: its SAN DNS name
    tls = {"client_cert_chain": [cert.cert_chain_pems[0].bytes().decode()],
           "client_cert_name": "CN=ignored", "client_cert_error": None,
           "server_cert": None, "tls_version": 0x0304, "cipher_suite": None}
    async with client_for(TlsExtensionApp(app, tls)) as c:
        before = await c.post(RPC, json=envelope("rpc.v2/Admin/secret", {}))
        assert before.status_code == 401  # no mTLS authenticator: anonymous
        source.set({"auth": {"mtls_roles": {"ops-bot": ["admin"]}}})
        assert await manager.reload()
        after = await c.post(RPC, json=envelope("rpc.v2/Admin/secret", {}))
        assert after.status_code == 200 and after.json()["result"] == {"secret": "ok"}
        who = await c.post(RPC, json=envelope("rpc.v2/Echo/context", {}))
        assert (who.json()["result"]["principal"], who.json()["result"]["roles"]) == (
            "ops-bot", ["admin"])


@pytest.mark.parametrize("per, spread, shared", [
    ("global", [{"X-Tenant-ID": "a"}, {"X-Tenant-ID": "b"}], True),
    ("tenant", [{"X-Tenant-ID": "a"}, {"X-Tenant-ID": "b"}], False),
    ("principal", [{"Authorization": "Bearer demo-user-token"},
                   {"Authorization": "Bearer demo-admin-token"}], False),
])
async def test_configured_policies_partition_by_per(
        per: str, spread: list[dict[str, str]], shared: bool) -> None:
    app, _, _ = _demo({"ratelimit": {"policies": [
        {"name": "echo", "services": ["Echo"], "limit": "1/minute", "per": per}]}})
    async with client_for(app) as c:
        first = await c.post(RPC, json=envelope("rpc.v2/Echo/echo", {}), headers=spread[0])
        other = await c.post(RPC, json=envelope("rpc.v2/Echo/echo", {}), headers=spread[1])
        free = await c.post(RPC, json=envelope("rpc.v2/Limited/ping", {}), headers=spread[0])
    assert first.status_code == 200
    assert other.status_code == (429 if shared else 200)
    assert free.status_code == 200 and "ratelimit-policy" not in free.headers  # replaced


def test_an_empty_file_is_refused_as_half_written(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        FileSource(path).load()
    path.write_text("# built-in behaviour\n")
    assert FileSource(path).load() == {}
    path.write_text("{}")
    json_path = tmp_path / "c.json"
    json_path.write_text("{}")
    assert FileSource(json_path).load() == {}


async def test_the_watcher_waits_for_a_file_to_settle(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[auth]\nrequire_auth = true\n')
    app = build_demo_app(DemoConfig(config_path=str(path), config_poll_s=0.05))
    manager: ConfigManager = app.config_manager
    first = manager.version
    async with manager.watching(sighup=False):
        with path.open("w") as f:  # truncate, then write in pieces, like `>` in a shell
            f.flush()
            await anyio.sleep(0.06)
            f.write('[auth]\nrequire_auth = true\n')
            f.flush()
            await anyio.sleep(0.03)
            f.write('anonymous_methods = ["rpc.v2/Echo/echo"]\n')
        with anyio.fail_after(10):
            while manager.version == first:
                await anyio.sleep(0.02)
    assert manager.config is not None and manager.config.auth is not None
    assert manager.config.auth.require_auth is True  # never the empty (all built-in) file
    assert manager.config.auth.anonymous_methods == ("rpc.v2/Echo/echo",)


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(BASE)
    env = {"APP_AUTH__REQUIRE_AUTH": "true", "APP_COMPRESSION__MINIMUM_SIZE": "2048"}
    manager = ConfigManager([FileSource(path), EnvSource("APP_", environ=env)],
                            lambda cfg: _noop)
    manager.start()
    config = manager.config
    assert config is not None and config.auth is not None and config.compression is not None
    assert config.auth.require_auth is True and config.compression.minimum_size == 2048
    assert config.auth.api_keys is not None and "demo-key" in config.auth.api_keys  # kept
