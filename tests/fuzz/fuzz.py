"""Coverage-guided fuzzing of one target with atheris (libFuzzer).

``python -m tests.fuzz.fuzz TARGET [libFuzzer flags] [CORPUS_DIR...]``; ``--list``
names the targets; ``all`` fuzzes every target in one process (the first input
byte picks the target). ``aduib_asgi`` is instrumented for coverage; a broken
invariant (any exception escaping the target) is a crash, written as
``crash-<sha1>`` where libFuzzer's ``-artifact_prefix`` says.
"""

from __future__ import annotations

import sys
import tracemalloc


def main(argv: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["aduib_asgi"]):
        import aduib_asgi.body
        import aduib_asgi.codecs
        import aduib_asgi.compression
        import aduib_asgi.demo
        import aduib_asgi.middleware.compression
        import aduib_asgi.streaming  # noqa: F401
    from tests.fuzz.targets import all_targets, checked, combined

    targets = all_targets()
    if len(argv) < 2 or argv[1] == "--list":
        print("\n".join(targets))
        return
    target = checked(combined(targets) if argv[1] == "all" else targets[argv[1]])
    tracemalloc.start()
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
