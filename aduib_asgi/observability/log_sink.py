"""A log handler that never blocks the event loop on its sink.

``logging.StreamHandler`` writes in the thread that logs: when the sink stalls (a
pipe nobody reads, a log shipper that fell behind, a full disk on a blocking
device), every ``logger.info`` blocks, and in an asyncio server that is the
whole event loop — one slow sink stops every request. :class:`NonBlockingStreamHandler`
formats in the caller (filters and formatters still see the request's context)
and hands the line to a writer thread through a queue bounded in bytes. When the
sink does not keep up and the queue is full, new lines are dropped and counted;
the writer reports the count in a line of its own once it can write again.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from typing import IO

__all__ = ["NonBlockingStreamHandler"]

_STOP = object()


class NonBlockingStreamHandler(logging.Handler):
    """Write formatted records to ``stream`` from a writer thread.

    At most ``max_bytes`` of formatted lines wait for the sink; beyond that, lines
    are dropped (counted in :attr:`dropped`) and the writer says how many once the
    sink accepts writes again. :meth:`flush` waits (up to ``flush_timeout`` seconds)
    for the queued lines to be written; :meth:`close` flushes and stops the thread.
    """

    def __init__(self, stream: IO[str] | None = None, *, max_bytes: int = 4 * 1024 * 1024,
                 flush_timeout: float = 2.0) -> None:
        super().__init__()
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.stream: IO[str] = stream if stream is not None else sys.stderr
        self.max_bytes = max_bytes
        self.flush_timeout = flush_timeout
        #: lines dropped because the queue was full (since the handler was created)
        self.dropped = 0
        self._reported = 0
        self._queued_bytes = 0
        self._size_lock = threading.Lock()
        self._lines: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._idle = threading.Event()
        self._idle.set()
        self._writer = threading.Thread(target=self._write_lines, name="aduib-log-writer",
                                        daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:  # logging's own contract
            self.handleError(record)
            return
        size = len(line)
        with self._size_lock:
            if self._queued_bytes + size > self.max_bytes:
                self.dropped += 1
                return
            self._queued_bytes += size
            self._idle.clear()
        self._lines.put(line)

    def flush(self) -> None:
        """Wait, up to ``flush_timeout`` seconds, until the queued lines are written."""
        self._idle.wait(self.flush_timeout)

    def close(self) -> None:
        if self._writer.is_alive():
            self.flush()
            self._lines.put(_STOP)
            self._writer.join(self.flush_timeout)
        super().close()

    def _write_lines(self) -> None:
        while True:
            line = self._lines.get()
            if line is _STOP:
                return
            assert isinstance(line, str)
            try:
                dropped = self.dropped
                if dropped != self._reported:
                    self.stream.write(f"aduib_asgi: {dropped - self._reported} log lines "
                                      "dropped: the log sink did not keep up\n")
                    self._reported = dropped
                self.stream.write(line)
                if self._lines.empty():
                    self.stream.flush()
            except Exception:  # a broken sink must not kill the writer
                pass
            finally:
                with self._size_lock:
                    self._queued_bytes -= len(line)
                    if self._queued_bytes == 0:
                        self._idle.set()
