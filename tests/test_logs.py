"""The log formats: coloured text for a terminal only, JSON lines whose facts are keys."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from fastrelay.logs import JsonFormatter, TextFormatter, wants_colour
from fastrelay.ratelimit import LogThrottle

Captured = tuple[logging.Logger, io.StringIO, "logging.StreamHandler[io.StringIO]"]


@pytest.fixture
def captured() -> Iterator[Captured]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("tests.logs")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        yield logger, stream, handler
    finally:
        logger.handlers.clear()
        logger.propagate = True


def test_json_lines_carry_the_extra_fields_as_keys(captured: Captured) -> None:
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())
    logger.warning(
        "upstream %s: lost (%s)",
        "stocks",
        "drop",
        extra={"market": "stocks", "reason": "drop", "close_code": 1006, "time": "not the line's"},
    )
    entry = orjson.loads(stream.getvalue())
    assert entry["message"] == "upstream stocks: lost (drop)"
    assert (entry["market"], entry["reason"], entry["close_code"]) == ("stocks", "drop", 1006)
    assert entry["level"] == "warning" and entry["logger"] == "tests.logs"
    # An extra named like one of the line's own keys does not overwrite it.
    assert entry["extra_time"] == "not the line's" and entry["time"].endswith("Z")


def test_json_lines_without_extras_have_only_the_base_keys(captured: Captured) -> None:
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed", extra={"count": 3})
    entry = orjson.loads(stream.getvalue())
    assert set(entry) == {"time", "level", "logger", "message", "exception", "count"}
    assert "ValueError: boom" in entry["exception"]


def test_values_json_cannot_hold_are_written_as_text(captured: Captured) -> None:
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())
    logger.info("peer", extra={"peer": frozenset({"a"})})
    assert orjson.loads(stream.getvalue())["peer"] == "frozenset({'a'})"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_and_never_with_no_color() -> None:
    assert wants_colour(Terminal(), {}) is True
    assert wants_colour(Terminal(), {"NO_COLOR": "1"}) is False
    assert wants_colour(io.StringIO(), {}) is False  # a file, a pipe, the journal
    assert wants_colour(Terminal(), {"NO_COLOR": ""}) is True  # no-color.org: set and not empty


@pytest.mark.parametrize("colour", [True, False])
def test_text_lines_are_human_and_coloured_only_when_asked(
    captured: Captured,
    colour: bool,
) -> None:
    logger, stream, handler = captured
    handler.setFormatter(TextFormatter(colour=colour))
    logger.warning("upstream %s: lost", "stocks", extra={"market": "stocks"})
    line = stream.getvalue().rstrip("\n")
    assert line.endswith("tests.logs: upstream stocks: lost") and "WARNING" in line, line
    assert ("\x1b[" in line) is colour


def test_log_throttle_passes_the_fields_and_counts_what_it_left_out(
    captured: Captured,
) -> None:
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())
    now = [0.0]
    throttle = LogThrottle(logger, interval=10.0, clock=lambda: now[0])
    for _ in range(3):
        throttle.log(logging.WARNING, "closed a client (%s)", "1.2.3.4", extra={"client": "1.2.3.4"})
    now[0] = 11.0
    throttle.log(logging.WARNING, "closed a client (%s)", "5.6.7.8", extra={"client": "5.6.7.8"})
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert first["client"] == "1.2.3.4" and "suppressed" not in first
    assert second["client"] == "5.6.7.8" and second["suppressed"] == 2
