"""Which pages may open a socket: same origin and local by default, a list, or any (no sockets)."""

from __future__ import annotations

import pytest

from fastrelay.origins import OriginPolicy


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, "relay.example.com", True),  # a service, not a browser
        ("https://relay.example.com", "relay.example.com", True),  # the relay's own page
        ("http://relay.example.com:8080", "relay.example.com:8080", True),
        ("http://relay.example.com:8080", "relay.example.com", True),  # nginx's $host has no port
        ("http://relay.example.com:9999", "relay.example.com:8080", False),  # another port
        ("https://evil.example.com", "relay.example.com", False),  # cross-site hijacking
        ("https://relay.example.com.evil.com", "relay.example.com", False),
        ("http://localhost:5173", "relay.example.com", True),  # development pages
        ("http://127.0.0.1:3001", "127.0.0.1:3001", True),
        ("http://[::1]:3001", "relay.example.com", True),
        ("null", "relay.example.com", False),  # sandboxed frames, file:// pages
        ("file://", "relay.example.com", False),
        ("https://relay.example.com", None, False),
    ],
)
def test_the_default_accepts_its_own_origin_and_local_pages(
    origin: str | None, host: str | None, allowed: bool
) -> None:
    """Unset --allowed-origins: the page must come from where the request went, or from this machine."""
    assert OriginPolicy([]).allows(origin, host) is allowed


def test_a_list_accepts_exactly_its_origins_and_star_any() -> None:
    """A list replaces the default (trailing slashes and case ignored); * lets every page in."""
    listed = OriginPolicy(["https://Dashboard.example.com/", "http://127.0.0.1:8080"])
    assert listed.allows("https://dashboard.example.com", "relay.example.com")
    assert not listed.allows("https://relay.example.com", "relay.example.com")  # not listed, even same-origin
    assert not listed.allows("http://localhost:8080", "relay.example.com")
    assert listed.allows(None, None)
    assert OriginPolicy(["*"]).allows("https://anyone.example", "relay.example.com")
