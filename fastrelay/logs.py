"""Logging set-up for the command line: text for people, JSON lines for collectors.

Facts a log line carries (market, reason, client address, close code, counts) are
passed as ``extra={...}`` on the logging call: the text format keeps them in the
message, the JSON format also puts each one under its own key, so a collector can
filter on ``market`` without parsing sentences.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, TextIO

import orjson

# What every LogRecord has: anything else on a record came with ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
# Keys of the JSON line itself, which an extra may not overwrite.
_RESERVED = frozenset({"time", "level", "logger", "message", "exception"})


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a logging call passed with ``extra=``."""
    return {key: value for key, value in record.__dict__.items() if key not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, every extra field, the exception;
    and the worker of a ``--workers`` tree that wrote it."""

    def __init__(self, worker: str | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        for key, value in extras(record).items():
            entry[f"extra_{key}" if key in _RESERVED else key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # default=str: an address tuple or an enum is written as text rather than lost.
        return orjson.dumps(entry, default=str).decode()


# ANSI SGR colours per level (uvicorn's choice of colours).
_COLOURS = {
    logging.DEBUG: "\x1b[36m",  # cyan
    logging.INFO: "\x1b[32m",  # green
    logging.WARNING: "\x1b[33m",  # yellow
    logging.ERROR: "\x1b[31m",  # red
    logging.CRITICAL: "\x1b[1;31m",  # bold red
}
_DIM, _RESET = "\x1b[2m", "\x1b[0m"


class TextFormatter(logging.Formatter):
    """``2025-01-02 15:04:05 INFO     fastrelay: message``, the level coloured on a terminal;
    ``[edge-1] fastrelay: ...`` in a ``--workers`` tree's process."""

    def __init__(self, colour: bool, worker: str | None = None) -> None:
        super().__init__(datefmt="%Y-%m-%d %H:%M:%S")
        self.colour = colour
        self.tag = "" if worker is None else f"[{worker}] "

    def format(self, record: logging.LogRecord) -> str:
        when = self.formatTime(record, self.datefmt)
        level = f"{record.levelname:<8}"
        line = f"{self.tag}{record.name}: {record.getMessage()}"
        if self.colour:
            colour = _COLOURS.get(record.levelno, "")
            text = f"{_DIM}{when}{_RESET} {colour}{level}{_RESET} {line}"
        else:
            text = f"{when} {level} {line}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def wants_colour(stream: TextIO, environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    if environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def configure(level: str, log_format: str = "text", worker: str | None = None) -> None:
    """``worker``: the name of a ``--workers`` tree's process, in every line it writes (they
    all share the supervisor's stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter(worker)
        formatter.converter = time.gmtime
    else:
        formatter = TextFormatter(colour=wants_colour(sys.stderr), worker=worker)
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
