"""What each client address may hold: connections, channels, failed auths; pure.

Limits per connection do not stop one client that opens many connections, so
some budgets are per address: connections (``--max-connections-per-address``),
channels summed over its connections (``--max-channels-per-address``), and
failed auths, which lock the address out with a growing delay (a brute force
of ``--client-tokens`` goes nowhere fast).

The address is the socket's peer or, from a trusted proxy only, the last
untrusted hop of X-Forwarded-For (else anyone could claim any address and walk
around the limits). Behind nginx without ``--trusted-proxies`` every browser
shares nginx's address: the defaults leave room for that (docs/security.md).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

# Failed auths an address may make before it is locked out, then the lockout
# doubles with each further failure, from 1 s up to the cap.
FREE_AUTH_FAILURES: Final = 5
MAX_LOCKOUT: Final = 300.0
# Addresses remembered for their failures: an attacker with many addresses
# must not grow the table without bound (the oldest are forgotten first).
MAX_REMEMBERED_FAILURES: Final = 100_000


class AddressState:
    """One address's share of the budgets, held by each of its connections' members."""

    __slots__ = ("_book", "address", "channels", "connections", "max_channels")

    def __init__(self, book: AddressBook, address: str, max_channels: int) -> None:
        self._book = book
        self.address = address
        self.connections = 0
        self.channels = 0  # subscribed over all its connections
        self.max_channels = max_channels

    def locked_for(self) -> float:
        """Seconds this address must wait before its next auth is even checked (0: none)."""
        return self._book.locked_for(self.address)

    def auth_failed(self) -> None:
        self._book.auth_failed(self.address)

    def auth_succeeded(self) -> None:
        self._book.auth_succeeded(self.address)


class AddressBook:
    def __init__(
        self,
        max_connections: int,
        trusted_proxies: list[str],
        max_channels: int = 1 << 62,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = max_connections
        self.max_channels = max_channels
        self._trusted = frozenset(trusted_proxies)
        self._states: dict[str, AddressState] = {}
        # address -> (failures, locked until); oldest first
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._clock = clock
        self.lockouts = 0  # auths refused because the address was locked out

    def client_address(self, peername: object, forwarded: str | None) -> str:
        peer = str(peername[0]) if isinstance(peername, tuple) and peername else "unknown"
        if forwarded and peer in self._trusted:
            # The right-most address not added by a trusted proxy is the
            # client as the nearest trusted hop saw it.
            for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
                if hop not in self._trusted:
                    return hop
        return peer

    # --- connections -----------------------------------------------------------------
    def admit(self, address: str) -> AddressState | None:
        """One more connection from ``address``, or None past the limit."""
        state = self._states.get(address)
        if state is None:
            state = self._states[address] = AddressState(self, address, self.max_channels)
        if state.connections >= self.limit:
            if not state.connections:
                del self._states[address]
            return None
        state.connections += 1
        return state

    def release(self, state: AddressState) -> None:
        state.connections -= 1
        if state.connections <= 0:
            self._states.pop(state.address, None)

    def connections(self, address: str) -> int:
        state = self._states.get(address)
        return state.connections if state is not None else 0

    # --- failed auths ------------------------------------------------------------------
    def locked_for(self, address: str) -> float:
        found = self._failures.get(address)
        if found is None:
            return 0.0
        return max(0.0, found[1] - self._clock())

    def auth_failed(self, address: str) -> None:
        failures, _ = self._failures.pop(address, (0, 0.0))
        failures += 1
        locked_until = 0.0
        if failures >= FREE_AUTH_FAILURES:
            locked_until = self._clock() + min(MAX_LOCKOUT, 2.0 ** (failures - FREE_AUTH_FAILURES))
        self._failures[address] = (failures, locked_until)
        while len(self._failures) > MAX_REMEMBERED_FAILURES:
            self._failures.popitem(last=False)

    def auth_succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
