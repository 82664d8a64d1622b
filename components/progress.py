"""The library's progress lines. Every module logs to `logging.getLogger(__name__)`, under the `platepipe`
logger; whoever runs the library decides whether and where the lines show: the CLI and the pipeline's steps call
show(), which prints them to the standard output of the moment (so a test's capture sees them too)."""

from __future__ import annotations

import logging
import sys

ROOT = "platepipe"


class _Stdout(logging.StreamHandler):
    """A StreamHandler writing to whatever sys.stdout is when a line is logged, flushed at once."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout  # not setStream: that flushes the previous stream, which a test may have closed
        super().emit(record)


def show(level: int = logging.INFO) -> None:
    """Print platepipe's progress lines (level and up) to standard output, message only; idempotent."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(level)
    if not any(isinstance(h, _Stdout) for h in logger.handlers):
        handler = _Stdout(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
