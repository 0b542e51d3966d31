"""pytest plugin: one JSON line per test (nodeid, outcome, failure text) to $CONFORMANCE_REPORT."""

from __future__ import annotations

import json
import os
from typing import Any


def pytest_runtest_logreport(report: Any) -> None:
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        text = "" if report.passed else str(report.longrepr)
        with open(os.environ["CONFORMANCE_REPORT"], "a", encoding="utf-8") as f:
            f.write(json.dumps({"nodeid": report.nodeid, "outcome": report.outcome,
                                "when": report.when, "text": text[-4000:]}) + "\n")


def pytest_collectreport(report: Any) -> None:
    if report.failed:  # a module that cannot be imported: every test in it is lost
        with open(os.environ["CONFORMANCE_REPORT"], "a", encoding="utf-8") as f:
            f.write(json.dumps({"nodeid": report.nodeid + "::<collection>", "outcome": "failed",
                                "when": "collect", "text": str(report.longrepr)[-4000:]}) + "\n")
