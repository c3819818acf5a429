"""Logging set-up for the command line: text for people, JSON lines for collectors."""

from __future__ import annotations

import logging
import sys
import time

import orjson


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception); and the
    worker of a ``--workers`` tree that wrote it."""

    def __init__(self, worker: str | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(level: str, log_format: str = "text", worker: str | None = None) -> None:
    """``worker``: the name of a ``--workers`` tree's process, in every line it writes (they
    all share the supervisor's stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter(worker)
        formatter.converter = time.gmtime
    else:
        tag = "" if worker is None else f"[{worker}] "
        formatter = logging.Formatter(f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # picows logs every failed handshake at info and every slow client's
    # buffer high-watermark at warning: one line per browser on a poor link.
    # The relay reports slow consumers itself, throttled; keep picows to errors
    # unless debugging.
    if level.lower() != "debug":
        logging.getLogger("picows").setLevel(logging.ERROR)
