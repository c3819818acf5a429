"""Which channels of the relay's upstream subscribes Massive refused; pure.

Theory of operation
-------------------
The relay acknowledges a client's subscribe itself, at once; Massive answers
the upstream subscribe later, per channel: ``subscribed to: X`` for each one it
takes, an ``error`` for one it refuses (docs/protocol.md, "Refusals"). What it
has been seen to send:

* a channel outside the plan: ``not authorized``, naming no channel, and no
  ``subscribed to`` for it;
* a subscribe that would pass the options contract cap: ``Subscription limit
  reached for feed...``, once, for the whole message;
* an unknown ticker: acknowledged, then silence (nothing to catch).

So each subscribe message sent upstream is a *batch* that waits for its
answers (oldest first: Massive answers in order). A batch is settled when every
channel in it is acknowledged, when acknowledgements and errors add up to its
size, or ``settle`` seconds after its last answer. A settled batch with errors
and as many errors as channels left unacknowledged (or one such channel) has
those channels refused, with Massive's message. With fewer errors than that,
the errors cannot be matched to channels: the unacknowledged ones are sent
again, one per message, and each single answer is exact. A batch without an
error refuses nothing, whatever was not acknowledged.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

SUBSCRIBED_PREFIX = "subscribed to: "


@dataclass
class _Batch:
    names: list[str]
    unacked: set[str]
    answered_at: float
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.unacked or len(self.names) - len(self.unacked) + len(self.errors) >= len(self.names)


@dataclass
class Verdict:
    refused: list[tuple[str, str]] = field(default_factory=list)  # (channel name, Massive's message)
    retry_singly: list[str] = field(default_factory=list)  # send again, one channel per message


class SubscribeTracker:
    def __init__(self, settle: float, clock: Callable[[], float]) -> None:
        self.settle = settle
        self._clock = clock
        self._batches: deque[_Batch] = deque()

    def sent(self, names: list[str]) -> None:
        """One subscribe message went upstream."""
        if names:
            self._batches.append(_Batch(list(names), set(names), self._clock()))

    def answered(self, status: str, message: str) -> None:
        """A status from upstream while live: an acknowledgement, an error, or something else."""
        now = self._clock()
        if status == "success" and message.startswith(SUBSCRIBED_PREFIX):
            name = message[len(SUBSCRIBED_PREFIX) :]
            for batch in self._batches:
                if name in batch.unacked:
                    batch.unacked.discard(name)
                    batch.answered_at = now
                    return
        elif status == "error":
            for batch in self._batches:
                if not batch.complete:
                    batch.errors.append(message)
                    batch.answered_at = now
                    return

    def reset(self) -> None:
        """The connection is gone: its answers will never come (a resubscribe starts over)."""
        self._batches.clear()

    def due(self) -> float | None:
        """When the oldest open batch settles by time (clock time), or None."""
        if not self._batches:
            return None
        return self._batches[0].answered_at + self.settle

    def poll(self) -> Verdict:
        """Settle what can be settled, oldest first."""
        verdict = Verdict()
        now = self._clock()
        batches = self._batches
        while batches and (batches[0].complete or now >= batches[0].answered_at + self.settle):
            batch = batches.popleft()
            if not batch.errors or not batch.unacked:
                continue
            unacked = [n for n in batch.names if n in batch.unacked]
            if len(unacked) == 1 or len(batch.errors) >= len(unacked):
                verdict.refused.extend((name, batch.errors[0]) for name in unacked)
            else:
                verdict.retry_singly.extend(unacked)
        return verdict
