"""bench.procs: the helpers every process-starting test and bench scenario uses."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from bench import procs


class _ScriptedSocket:
    """A socket whose kernel-chosen port comes from a script, as if the kernel repeated itself."""

    ports: Iterator[int]

    def __init__(self, *_: Any) -> None:
        self.port = next(self.ports)

    def __enter__(self) -> _ScriptedSocket:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def bind(self, address: tuple[str, int]) -> None:
        assert address == ("127.0.0.1", 0)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_free_port_never_hands_out_a_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may give the same ephemeral port to two binds in a row (CI once got a
    metrics port equal to the client port); free_port must not pass that on."""
    _ScriptedSocket.ports = iter([41001, 41001, 41001, 41002, 41001, 41003])
    monkeypatch.setattr(procs.socket, "socket", _ScriptedSocket)
    monkeypatch.setattr(procs, "_handed_out", set())
    assert [procs.free_port(), procs.free_port(), procs.free_port()] == [41001, 41002, 41003]


def test_free_port_is_bindable() -> None:
    port = procs.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
