"""Logging set-up for the command line."""

from __future__ import annotations

import logging
import sys


def configure(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # picows logs every failed handshake at info; keep its chatter at warning
    # unless debugging.
    if level.lower() != "debug":
        logging.getLogger("picows").setLevel(logging.WARNING)
