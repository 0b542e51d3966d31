"""Coverage-guided fuzzing of every request decoder and parser (tests/fuzz/targets.py).

* The committed seed corpora and every regression input (``regressions/``, crashes
  found earlier) replay in-process: each ends with a value or a standard error,
  within the memory bound.
* atheris then fuzzes each target from its seeds in a subprocess: a bounded number
  of runs here, ``ADUIB_FUZZ=long`` (``make fuzz``) for minutes per target. A crash
  fails the test and names the input libFuzzer wrote (add it to ``regressions/``).
  Without atheris (a platform it does not build on), hypothesis feeds the targets.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.targets import InvariantError, all_targets, checked, combined_prefix

HERE = Path(__file__).parent
CORPUS = HERE / "corpus"
REGRESSIONS = HERE / "regressions"
LONG = os.environ.get("ADUIB_FUZZ") == "long"
#: Runs of the bounded (``make test``) atheris run over all targets at once.
BOUNDED_RUNS = int(os.environ.get("ADUIB_FUZZ_RUNS", "5000"))
LONG_SECONDS = int(os.environ.get("ADUIB_FUZZ_SECONDS", "120"))
#: ``ADUIB_FUZZ_ENGINE=hypothesis`` uses the fallback even where atheris is installed.
HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None and \
    os.environ.get("ADUIB_FUZZ_ENGINE") != "hypothesis"
ROOT = HERE.parent.parent

TARGETS = sorted(all_targets())


@pytest.fixture(scope="module", autouse=True)
def traced() -> Iterator[None]:
    tracemalloc.start()
    yield
    tracemalloc.stop()


def inputs(folder: Path, target: str) -> list[Path]:
    d = folder / target
    return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []


@pytest.mark.parametrize("target", TARGETS)
def test_seeds_and_regressions_replay(target: str) -> None:
    run = checked(all_targets()[target])
    files = inputs(CORPUS, target) + inputs(REGRESSIONS, target)
    assert inputs(CORPUS, target), f"no seed corpus for {target}"
    for path in files:
        try:
            run(path.read_bytes())
        except InvariantError as exc:  # pragma: no cover - the failure message
            raise AssertionError(f"{path.relative_to(HERE)}: {exc}") from exc


@pytest.mark.skipif(not HAVE_ATHERIS, reason="atheris does not build here: hypothesis below")
@pytest.mark.parametrize("target", TARGETS if LONG else ["all"])
def test_atheris(target: str, tmp_path: Path) -> None:
    """Bounded: every target in one process (``all``); long: minutes per target."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    targets = all_targets()
    for name in (TARGETS if target == "all" else [target]):
        prefix = combined_prefix(name, targets) if target == "all" else b""
        for path in inputs(CORPUS, name) + inputs(REGRESSIONS, name):
            (corpus / f"{name}-{path.name}").write_bytes(prefix + path.read_bytes())
    limit = [f"-max_total_time={LONG_SECONDS}"] if LONG else [f"-runs={BOUNDED_RUNS}"]
    cmd = [sys.executable, "-m", "tests.fuzz.fuzz", target, *limit, "-max_len=8192",
           "-rss_limit_mb=2048", "-malloc_limit_mb=512", "-timeout=30",
           f"-artifact_prefix={tmp_path}/", str(corpus)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=LONG_SECONDS + 600 if LONG else 115)
    log = proc.stdout + proc.stderr
    done = re.search(r"Done (\d+) runs in (\d+) second", log)
    crashes = sorted(str(p) for p in tmp_path.iterdir() if p.name.startswith(
        ("crash-", "timeout-", "oom-", "leak-")))
    lines = [line for line in log.splitlines() if not line.startswith("INFO: Instrumenting")]
    assert proc.returncode == 0 and done is not None, (
        f"{target}: {crashes}\n" + "\n".join(lines)[-4000:])
    print(f"{target}: {done.group(1)} runs in {done.group(2)} s")  # the report's counts


@pytest.mark.skipif(HAVE_ATHERIS, reason="atheris is installed: coverage-guided runs above")
@pytest.mark.parametrize("target", TARGETS)
def test_hypothesis_fallback(target: str) -> None:
    run = checked(all_targets()[target])
    seeds = [p.read_bytes() for p in inputs(CORPUS, target)]

    @given(st.one_of(st.binary(max_size=8192), st.sampled_from(seeds).flatmap(
        lambda s: st.binary(max_size=64).map(lambda b: s[:len(s) // 2] + b + s[len(s) // 2:]))))
    @settings(max_examples=20_000 if LONG else 300, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(data: bytes) -> None:
        run(data)

    fuzz()
