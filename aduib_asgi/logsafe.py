"""Client-supplied values made safe for log lines.

An envelope ``id``, a method name, a tenant or a principal comes from the
client; written raw, a ``\\n`` in it would start a forged log line. :func:`safe`
escapes every non-printable character (CR, LF, other controls, Unicode line
separators and format characters) as ``\\n``, ``\\x1b``, ``\\u2028``..., and a
backslash as ``\\\\``, so an escape written by the client cannot pass for one
written by :func:`safe`.
"""

from __future__ import annotations

import traceback
from typing import Any

__all__ = ["escape", "safe", "safe_args", "safe_traceback"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(c: str) -> str:
    if c == "\\":
        return "\\\\"
    if c.isprintable():
        return c
    named = _NAMED.get(c)
    if named is not None:
        return named
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else (
        f"\\U{code:08x}")


class _Escaped(str):
    """Text :func:`safe` already escaped: escaping it again would double backslashes
    (a value escaped at the call site, then by the log filter)."""

    __slots__ = ()


def safe(value: Any) -> Any:
    """``value`` with control characters and backslashes escaped when it is text
    (a literal ``a\\nb`` and ``a``, LF, ``b`` read back differently); anything
    else as is. Idempotent: ``safe(safe(v)) == safe(v)``."""
    if isinstance(value, str):
        if type(value) is _Escaped or (value.isprintable() and "\\" not in value):
            return value
        return _Escaped("".join(map(_escape_char, value)))
    if isinstance(value, bytes | bytearray):
        return safe(value.decode("latin-1"))
    return value


_FIELD_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_FIELD_ESCAPES.update({0x5C: "\\\\", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape(value: object, limit: int = 512) -> str:
    """``value`` as one bounded field of a structured line (the access log): control
    characters (C0, DEL, C1, line/paragraph separators) and backslashes escaped, so
    the field reads back unambiguously, cut to ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable() and "\\" not in text:
        return text
    return text.translate(_FIELD_ESCAPES)


def safe_args(args: Any) -> Any:
    """A log record's ``args`` (tuple or mapping) with every text value escaped."""
    if isinstance(args, tuple):
        return tuple(safe(a) for a in args) if any(
            isinstance(a, str | bytes | bytearray) for a in args) else args
    if isinstance(args, dict):
        return {k: safe(v) for k, v in args.items()}
    return args


def safe_traceback(exc: BaseException) -> str:
    """The usual traceback text, with each exception's message escaped.

    A message may quote client input (``ValueError(f"bad id {id}")``); its line
    breaks must not start log lines of their own. The frames are unchanged.
    """
    te = traceback.TracebackException.from_exception(exc)
    seen: set[int] = set()
    todo = [te]
    while todo:
        t = todo.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        text = getattr(t, "_str", None)  # the message (a private attribute, 3.11-3.13)
        if isinstance(text, str):
            t._str = safe(text)  # type: ignore[attr-defined]
        todo.extend(x for x in (t.__cause__, t.__context__) if x is not None)
        todo.extend(getattr(t, "exceptions", None) or ())
    return "".join(te.format()).rstrip("\n")
