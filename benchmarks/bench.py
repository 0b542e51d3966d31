"""Per-layer overhead benchmarks: the same harness as ``aduib-asgi bench``.

    python benchmarks/bench.py --quick --json out.json --plot out.png

See docs/performance.md for the method and how to read the table.
"""

from __future__ import annotations

import sys

from aduib_asgi.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
