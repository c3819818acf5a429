"""The upstream handshake state machine, with Massive's old and new status forms."""

from __future__ import annotations

import pytest

from fastrelay.upstream import Handshake, Outcome, Phase


@pytest.mark.parametrize(
    ("first", "second"), [("connected", "auth_success"), ("success", "success"), ("connected", "success")]
)
def test_connect_then_auth_in_new_and_old_forms(first: str, second: str) -> None:
    """'connected' or old 'success' asks for auth; 'auth_success' or old 'success' goes live."""
    handshake = Handshake()
    assert handshake.on_status(first) is Outcome.SEND_AUTH
    assert handshake.on_status(second) is Outcome.LIVE
    assert handshake.phase is Phase.LIVE
    assert handshake.on_status("success") is Outcome.NOTHING  # subscribe acks later


def test_auth_failed() -> None:
    """auth_failed ends the handshake as failed."""
    handshake = Handshake()
    handshake.on_status("connected")
    assert handshake.on_status("auth_failed") is Outcome.AUTH_FAILED
    assert handshake.phase is Phase.FAILED


def test_max_connections_even_after_auth() -> None:
    """max_connections comes after auth_success on Massive: it still ends the session."""
    handshake = Handshake()
    handshake.on_status("connected")
    handshake.on_status("auth_success")
    assert handshake.on_status("max_connections") is Outcome.MAX_CONNECTIONS


def test_out_of_order_statuses_do_nothing() -> None:
    """auth_success before connected is ignored rather than trusted."""
    handshake = Handshake()
    assert handshake.on_status("auth_success") is Outcome.NOTHING
    assert handshake.phase is Phase.AWAIT_CONNECTED
