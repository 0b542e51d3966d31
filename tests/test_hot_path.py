"""The per-request shortcuts of the hot path give exactly what the slow way gives.

Speed itself is measured in benchmarks/ (``aduib-asgi bench``); these tests pin
down that each shortcut is invisible: same objects, same errors, same bytes.
"""

from __future__ import annotations

from aduib_asgi.models import RequestMetadata
from aduib_asgi.models.envelope import stamped_metadata


def test_stamped_metadata_equals_the_validated_model() -> None:
    fast = stamped_metadata(1234)
    slow = RequestMetadata(timestamp_ms=1234)
    assert fast == slow
    assert repr(fast) == repr(slow)
    assert fast.model_fields_set == slow.model_fields_set == {"timestamp_ms"}
    assert fast.model_dump_json() == slow.model_dump_json()
    assert fast.model_dump(exclude_unset=True) == {"timestamp_ms": 1234}


def test_stamped_metadata_has_its_own_mutable_defaults() -> None:
    a = stamped_metadata(1)
    a.headers["x-a"] = "1"
    assert stamped_metadata(2).headers == {}
    a.timestamp_ms = 5  # assignable like any model
    assert a.timestamp_ms == 5
