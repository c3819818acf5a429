"""Control messages between ingest and edges (JSON, msgspec structs); pure.

Both are *state*, not deltas: an edge sends everything its clients want, an
ingest everything it knows about its markets, on every change and again on
every heartbeat. A lost or reordered message is healed by the next one, a
restarted ingest learns every edge's interest within one heartbeat, and no
request/resend protocol is needed. An edge's interest is bounded by its
clients' channels (with 10,000 distinct channels about 150 KB a heartbeat).
"""

from __future__ import annotations

from typing import Final, TypeVar

import msgspec

# The version of the scale-out messages this process writes. A reader takes its own
# version and the one before (docs/scaleout.md, "Versions"); 2 added the leader's term.
VERSION: Final = 2

LIVE: Final = "live"
STOPPED: Final = "ingest_stopped"  # every market's state in an ingest's goodbye


class EdgeInterest(msgspec.Struct, tag_field="type", tag="interest", forbid_unknown_fields=False):
    """An edge's heartbeat: the channels its clients want, per market."""

    edge: str
    channels: dict[str, list[str]]
    seq: int = 0  # increases with every message of this edge (observability only)
    # Random per process: two edges given the same --instance-name by mistake are still
    # two sets of references (not one set flapping between them), and a restarted
    # edge is a new one.
    incarnation: str = ""
    version: int = 1  # absent in version 1

    @property
    def key(self) -> str:
        return f"{self.edge}#{self.incarnation}" if self.incarnation else self.edge


class IngestState(msgspec.Struct, tag_field="type", tag="state", forbid_unknown_fields=False):
    """The ingest's heartbeat: who it is, how it publishes, how its upstreams are."""

    ingest: str
    granularity: str
    markets: dict[str, str]  # market -> "live" or the reason its upstream is down
    # market -> channel name -> Massive's refusal, for channels refused lately: edges
    # tell their clients and let them go (relay.Relay.feed_rejected).
    rejected: dict[str, dict[str, str]] = {}
    # The leader's term (election.py): edges follow the highest and drop the rest.
    term: int = 0
    version: int = 1  # absent in version 1


class SnapshotRequest(msgspec.Struct, tag_field="type", tag="snapshot", forbid_unknown_fields=False):
    """An edge asks for the state a new subscriber of these channels should see."""

    market: str
    last: list[str] = []
    history: list[str] = []


class SnapshotReply(msgspec.Struct, tag_field="type", tag="snapshot_reply", forbid_unknown_fields=False):
    last: dict[str, msgspec.Raw] = {}
    history: dict[str, list[msgspec.Raw]] = {}
    error: str = ""


class LeaseHolder(msgspec.Struct, forbid_unknown_fields=False):
    """The value of the lease key (election.py): who leads, for operators reading the bucket."""

    ingest: str
    version: int = VERSION


# Every control message, told apart by its "type": one decoder, and handlers
# dispatch with ``match``.
ControlMessage = EdgeInterest | IngestState | SnapshotRequest | SnapshotReply

_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(ControlMessage)


class MessageError(ValueError):
    """A control message that does not decode; the sender is another fastrelay or a stranger."""


def encode_identity(ingest: str) -> bytes:
    return _encoder.encode(LeaseHolder(ingest))


def encode(message: ControlMessage) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes) -> ControlMessage:
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise MessageError(f"bad control message ({len(data)} bytes): {exc}") from None


Expected = TypeVar("Expected", EdgeInterest, IngestState, SnapshotRequest, SnapshotReply)


def decode_as(data: bytes, kind: type[Expected]) -> Expected:
    """A control message that must be of ``kind`` (each subject carries one kind)."""
    match decode(data):
        case found if isinstance(found, kind):
            return found
        case other:
            raise MessageError(f"a {type(other).__name__} message where {kind.__name__} belongs")
