"""The one place that picks the event loop: uvloop (as uvicorn's loops/auto.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; this keeps dev shells usable
        return asyncio.run(main)
    return uvloop.run(main)
