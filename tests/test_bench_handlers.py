"""benchmarks/ab_handlers.py: each handler gets the context the default stack gives it."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "ab_handlers.py"


def _module() -> ModuleType:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("ab_handlers", SCRIPT)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(SCRIPT.parent))


def test_handlers_see_the_default_stack_s_context_and_run_on_a_no_op_app() -> None:
    ab = _module()
    names = ab.DEFAULT_LAYERS.split(",")

    async def main() -> None:
        found = await ab._handlers("aduib_asgi", names)
        assert sorted(found) == sorted(names)
        for name, (handler, scope, ctx) in found.items():
            assert ctx.method == "rpc.v2/Echo/echo", name  # the content layer decoded it
            assert ctx.tenant_id == "default", name  # the tenant layer ran before
            assert handler.__self__.layer_name == name
            assert handler.__self__.app is ab._noop
            assert await ab._timed(handler, scope, ctx, 3) > 0
        _, _, ctx = found["ratelimit"]
        assert ctx.rate_limit is not None and ctx.response_headers  # the admitted hit

    asyncio.run(main())
