"""``make conformance``: the peers' compression test suites, run against CompressionMiddleware.

Downloads the sdists of Starlette (the installed version) and starlette-compress
with ``pip download`` at run time (nothing vendored), runs Starlette's
``tests/middleware/test_gzip.py`` and starlette-compress's ``tests/`` with the
option-mapping shims in ``conformance/shims`` first on ``sys.path`` (the tests'
assertions are unchanged), and reports, per test: ``pass``, ``difference``
(documented in docs/deviations.md, reason named), ``n/a`` (the test calls the
peer's internals) or ``UNEXPECTED``. Exit status 1 when a test fails without a
documented reason, or a documented difference now passes (the table is stale).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIMS = HERE / "shims"
sys.path.insert(0, str(HERE))
from expected import EXPECTED  # noqa: E402


@dataclass(frozen=True)
class Peer:
    name: str
    version: str
    tests: tuple[str, ...]
    plugins: tuple[str, ...] = ()


PEERS = (
    Peer("starlette", version("starlette"), ("tests/middleware/test_gzip.py",),
         ("shim_starlette",)),
    # 2.0.0's sdist holds a symlink pip refuses to unpack: the newest that pip downloads.
    Peer("starlette-compress", "1.8.0", ("tests",)),
)

INI = "[pytest]\naddopts = -p no:cacheprovider\n"


def fetch(peer: Peer, work: Path) -> Path:
    """The peer's unpacked sdist (``pip download --no-deps --no-binary :all:``)."""
    dest = work / "sdist"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
                    ":all:", f"{peer.name}=={peer.version}", "-d", str(dest)], check=True)
    (archive,) = dest.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(work / "src", filter="data")
    (root,) = (work / "src").iterdir()
    return root


def run(peer: Peer, work: Path) -> list[dict[str, str]]:
    """Run the peer's tests (only its tests directory: its package is not importable)."""
    root = fetch(peer, work)
    rundir = work / "run"
    rundir.mkdir()
    shutil.copytree(root / "tests", rundir / "tests")
    (rundir / "pytest.ini").write_text(INI)
    report = work / "report.jsonl"
    env = {**os.environ, "PYTHONPATH": str(SHIMS), "CONFORMANCE_REPORT": str(report)}
    cmd = [sys.executable, "-m", "pytest", *peer.tests, "-p", "report_plugin", "-q",
           "--no-header", "-rN"]
    for plugin in peer.plugins:
        cmd += ["-p", plugin]
    subprocess.run(cmd, cwd=rundir, env=env, stdout=subprocess.DEVNULL, check=False)
    if not report.exists():
        raise SystemExit(f"{peer.name}: the test run produced no results")
    return [json.loads(line) for line in report.read_text().splitlines()]


def classify(peer: Peer, result: dict[str, str]) -> tuple[str, str]:
    """(status, reason) for one test result."""
    test = result["nodeid"].split("::", 1)[-1]
    reason = next((r for pattern, r in EXPECTED.get(peer.name, {}).items()
                   if fnmatch.fnmatchcase(test, pattern)), "")
    if result["outcome"] == "passed":
        return ("STALE", reason) if reason else ("pass", "")
    if result["outcome"] == "skipped":
        return "skipped", ""
    if "NotApplicable" in result["text"]:
        return "n/a", "peer-internals"
    return ("difference", reason) if reason else ("UNEXPECTED", _last_line(result["text"]))


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith("E ")]
    return (lines[0] if lines else text.strip().splitlines()[-1])[:150]


def main() -> int:
    bad = 0
    counts: dict[str, int] = {}
    for peer in PEERS:
        with tempfile.TemporaryDirectory(prefix=f"conformance-{peer.name}-") as tmp:
            results = run(peer, Path(tmp))
        print(f"\n{peer.name} {peer.version}: {len(results)} tests")
        for result in results:
            status, reason = classify(peer, result)
            counts[status] = counts.get(status, 0) + 1
            bad += status in ("UNEXPECTED", "STALE")
            test = result["nodeid"].split("::", 1)[-1]
            print(f"  {status:<10} {test}" + (f"  [{reason}]" if reason else ""))
    print("\n" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    print("reasons: docs/deviations.md, section 'Compression: the peers' test suites'")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
