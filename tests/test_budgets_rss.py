"""RSS-bounded floods against a real ``aduib-asgi demo`` process (issue 13 items 2(a), 2(b)).

Small sizes with correspondingly small budgets: before the byte budget, each
flood grew the process by what it sent (~60-120 MB here); now the growth stays
under a stated bound, refusals are 429 / 5021, and a response over the replay
limit answers 409 "not retained" on a repeat.
"""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.demo_process import running_demo

RPC = "/aduib_rpc/v2/rpc"
TS = "/aduib_rpc/v2/TaskService/"
MB = 1024 * 1024
BUDGETS = ("--tenant-budget", str(2 * MB), "--total-budget", str(4 * MB),
           "--replay-limit", str(256 * 1024))
#: What the flood may add to the process's RSS (the budgets, codec buffers, allocator slack).
MAX_GROWTH_MB = 40


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS")


def big(client: httpx.Client, size: int, key: str, tenant: str = "t") -> httpx.Response:
    return client.post(RPC, headers={"idempotency-key": key, "x-tenant-id": tenant},
                       json={"aduib_rpc": "2.0", "id": "1", "method": "rpc.v2/Echo/big",
                             "data": {"size": size}})


@pytest.mark.timeout(120)
def test_idempotency_key_flood_is_bounded_in_rss() -> None:
    """600 distinct keys x 200 kB responses (~120 MB if all were kept)."""
    with running_demo(*BUDGETS) as demo, httpx.Client(base_url=demo.url, timeout=30) as c:
        # over the replay limit: sent once, not kept, never run again
        first = big(c, 300_000, "too-big", "fresh")
        again = big(c, 300_000, "too-big", "fresh")
        before = rss_mb(demo.proc.pid)
        codes = [big(c, 200_000, uuid.uuid4().hex, f"t{i % 3}").status_code
                 for i in range(600)]
        time.sleep(0.5)
        grown = rss_mb(demo.proc.pid) - before
        refused = big(c, 200_000, uuid.uuid4().hex, "t0")
    assert codes.count(200) >= 10 and codes.count(429) > 500, codes
    assert refused.status_code == 429 and refused.json()["error"]["code"] == 5021
    assert int(refused.headers["retry-after"]) >= 1
    assert grown < MAX_GROWTH_MB, f"RSS grew {grown:.0f} MB"
    assert first.status_code == 200 and len(first.content) > 300_000
    assert again.status_code == 409 and "not retained" in again.json()["error"]["message"]


@pytest.mark.timeout(120)
def test_task_result_flood_is_bounded_in_rss() -> None:
    """20 tasks with 4 MiB results (~80 MB if all were kept): results past the budget
    are not retained (failed 5021); submissions past it are refused 429."""
    with running_demo(*BUDGETS) as demo, httpx.Client(base_url=demo.url, timeout=60) as c:
        before = rss_mb(demo.proc.pid)
        ids = []
        for _ in range(20):
            r = c.post(TS + "Submit", json={"target_method": "rpc.v2/Echo/big",
                                            "params": {"size": 4 * MB}})
            assert r.status_code in (200, 429), r.text
            if r.status_code == 200:
                ids.append(r.json()["task_id"])
        statuses = []
        for tid in ids:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                task = c.post(TS + "Query", json={"task_id": tid}).json()["task"]
                if task["status"] in ("succeeded", "failed", "canceled"):
                    statuses.append(task)
                    break
                time.sleep(0.05)
        time.sleep(0.5)
        grown = rss_mb(demo.proc.pid) - before
    assert len(statuses) == len(ids) == 20
    assert all(t["status"] == "failed" and t["error"]["code"] == 5021 for t in statuses)
    assert grown < MAX_GROWTH_MB, f"RSS grew {grown:.0f} MB"


def redis_used_mb(url: str) -> float:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("memory")["used_memory"]) / 1024.0 / 1024.0
    finally:
        client.close()


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_a_flood_cannot_fill_redis(redis_url: str) -> None:
    """With --redis the budget bounds what the instance makes Redis hold: 400 keys x
    200 kB (~80 MB if all were kept) from three tenants, and 10 task results of 4 MiB."""
    with running_demo("--redis", redis_url, *BUDGETS) as demo, \
            httpx.Client(base_url=demo.url, timeout=60) as c:
        before = redis_used_mb(redis_url)
        codes = [big(c, 200_000, uuid.uuid4().hex, f"t{i % 3}").status_code
                 for i in range(400)]
        tasks = [c.post(TS + "Submit", json={"target_method": "rpc.v2/Echo/big",
                                             "params": {"size": 4 * MB}},
                        headers={"x-tenant-id": "tasks"}) for _ in range(10)]
        ids = [t.json()["task_id"] for t in tasks if t.status_code == 200]
        for tid in ids:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                task = c.post(TS + "Query", json={"task_id": tid},
                              headers={"x-tenant-id": "tasks"}).json()["task"]
                if task["status"] in ("succeeded", "failed", "canceled"):
                    assert task["status"] == "failed" and task["error"]["code"] == 5021
                    break
                time.sleep(0.05)
        grown = redis_used_mb(redis_url) - before
    assert codes.count(200) >= 10 and codes.count(429) > 300, codes
    assert all(t.status_code in (200, 429) for t in tasks)
    assert grown < 12, f"Redis grew {grown:.0f} MB (total budget 4 MiB)"


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_task_operations_under_load_answer_503_in_a_redis_outage(own_redis: Any) -> None:
    """Issue 17: a real demo on a real Redis that is killed: every task operation is
    503 / 5002 with Retry-After (never 500), and service is back within 5 s."""
    server = own_redis
    with running_demo("--redis", server.url) as demo:
        with httpx.Client(base_url=demo.url, timeout=30) as c:
            sub = c.post(TS + "Submit", json={"target_method": "rpc.v2/Echo/echo",
                                              "params": {"x": 1}})
            assert sub.status_code == 200, sub.text
            task_id = sub.json()["task_id"]
        server.kill()
        bodies = [("Query", {"task_id": task_id}), ("Cancel", {"task_id": task_id}),
                  ("Submit", {"target_method": "rpc.v2/Echo/echo", "params": {}}),
                  ("Subscribe", {"task_id": task_id})] * 15

        def call(item: tuple[str, dict[str, Any]]) -> httpx.Response:
            return httpx.post(demo.url + TS + item[0], json=item[1], timeout=30)

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(call, bodies))
        for (name, _), r in zip(bodies, answers, strict=True):
            assert r.status_code == 503, (name, r.status_code, r.text)
            assert r.json()["error"]["code"] == 5002 and r.headers["retry-after"] == "1"
        server.start()
        deadline = time.monotonic() + 5
        with httpx.Client(base_url=demo.url, timeout=30) as c:
            while True:
                r = c.post(TS + "Submit", json={"target_method": "rpc.v2/Echo/echo",
                                                "params": {"x": 2}})
                if r.status_code == 200 or time.monotonic() > deadline:
                    break
                assert r.status_code == 503, r.text
                time.sleep(0.1)
        assert r.status_code == 200, "not back within 5 s"
