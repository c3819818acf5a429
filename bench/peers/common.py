"""What the Python peer relays share: Massive's statuses, channel names, reference counts.

The peers speak the protocol as fastrelay and Massive do (README, "Using it"):
a ``connected`` status on open, ``auth`` answered with ``auth_success`` (open
mode: any token), each subscribe or unsubscribe acknowledged per channel with
``success`` in Massive's wording, then JSON arrays of events. Upstream, one
connection per market to the simulator with the union of the clients'
channels (reference counted: the first subscriber subscribes upstream, the
last one leaving unsubscribes at once, no linger), resubscribed after a
reconnect, which waits a random 0 to 0.5 s like fastrelay's first backoff.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterable

import orjson

# A client that owes more than this is dropped (fastrelay's --max-client-buffer default).
MAX_CLIENT_BUFFER = 4 * 1024 * 1024
# First reconnect delay after an upstream drop: full jitter over fastrelay's backoff base.
RECONNECT_BASE = 0.5
# A closed slow consumer gets this long to take its close frame before the socket is cut.
CLOSE_GRACE = 1.0


def status(value: str, message: str) -> dict[str, str]:
    return {"ev": "status", "status": value, "message": message}


def status_frame(value: str, message: str) -> bytes:
    return orjson.dumps([status(value, message)])


CONNECTED = status_frame("connected", "Connected Successfully")
AUTH_SUCCESS = status_frame("auth_success", "authenticated")
SLOW_CONSUMER = status_frame("slow_consumer", "client too slow: unsent data over the limit")


def channel_names(params: str) -> list[str]:
    """The valid ``EV.TICKER`` names of a params string, in order, without duplicates."""
    names = [p.strip() for p in params.split(",")]
    return list(dict.fromkeys(n for n in names if "." in n and n.partition(".")[0] and n.partition(".")[2]))


def acks(names: Iterable[str], verb: str) -> bytes:
    """One frame acknowledging every channel, as fastrelay batches them."""
    return orjson.dumps([status("success", f"{verb} to: {name}") for name in names])


def reconnect_delay() -> float:
    return random.uniform(0.0, RECONNECT_BASE)


class Interest:
    """Upstream channels, reference-counted over clients."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, names: Iterable[str]) -> list[str]:
        """Count the names in; returns those that are new upstream."""
        new = []
        for name in names:
            count = self.counts.get(name, 0)
            self.counts[name] = count + 1
            if not count:
                new.append(name)
        return new

    def remove(self, names: Iterable[str]) -> list[str]:
        """Count the names out; returns those nobody wants any more."""
        gone = []
        for name in names:
            count = self.counts.get(name, 0) - 1
            if count > 0:
                self.counts[name] = count
            else:
                self.counts.pop(name, None)
                gone.append(name)
        return gone


def subscribe_message(action: str, names: Iterable[str]) -> bytes:
    return orjson.dumps({"action": action, "params": ",".join(names)})


def parser(description: str) -> argparse.ArgumentParser:
    """The command line every peer takes (a subset of ``fastrelay serve``'s)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="ws://host:port of the simulator")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--market", default="stocks")
    parser.add_argument(
        "--deflate", action="store_true", help="permessage-deflate with clients that offer it (its defaults)"
    )
    return parser
