"""Stack building and the order check."""

from __future__ import annotations

import pytest

from aduib_asgi.stack import DEFAULT_ORDER, Layer, StackOrderError, build_stack, check_order


def test_default_order_passes() -> None:
    check_order(DEFAULT_ORDER)


@pytest.mark.parametrize(
    "names",
    [
        ["content", "compression"],
        ["errors", "idempotency", "content"],
        ["idempotency", "tenant"],
        ["ratelimit", "auth"],
        ["admission", "deadline"],
        ["errors", "errors"],
    ],
)
def test_impossible_orders_are_rejected(names: list[str]) -> None:
    with pytest.raises(StackOrderError):
        check_order(names)


def test_build_stack_wraps_outermost_first() -> None:
    calls: list[str] = []

    class A:
        layer_name = "errors"

        def __init__(self, app: object, *, tag: str) -> None:
            self.app, self.tag = app, tag
            calls.append(tag)

    app = build_stack("inner", [Layer.of(A, tag="outer")])  # type: ignore[arg-type]
    assert isinstance(app, A)
    assert app.app == "inner"
    assert calls == ["outer"]
