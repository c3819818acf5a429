"""The built-in Massive stand-in: a Massive-compatible WebSocket feed for dev, demos, tests and benchmarks.

It speaks the protocol of docs/protocol.md on every market path (``/stocks``,
``/options``, ... ``/futures/comex``): the connected/auth/subscribe statuses,
then events with Massive's field names. ``fastrelay run`` embeds it when no
Massive key is set, ``fastrelay sim`` serves it alone (the benchmarks and the
soak run it so), and the tests start one in their own process. Faults for
resilience tests are methods of :class:`Simulator` and plain HTTP GETs on the
same port: ``/sim/fault/<name>[?market=stocks]``; counters at ``/sim/stats``.
The same port also answers Massive's REST aggregates,
``/v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{from}/{to}``, with a
history the live feed continues (``rest``).

One job per module, each importing only those above it:

- ``config``: ``SimulatorConfig``, everything the simulator can be told.
- ``symbols``: the tickers per market (built-in lists, options and futures
  contract names, synthetic names) with start prices and precision.
- ``bars``: OHLC bars in columns, merging them, and the calendar of
  Massive's aggregates (Eastern Time days; UTC for forex and crypto).
- ``connection``: one client connection: auth, subscribe, backlog and slow
  consumer, stall, close.
- ``feed``: one market path's generator: price walks, events, sequences,
  aggregates, dispatch to its connections; the live bars each symbol traded.
- ``faults``: the fault names and what each fault does to the feeds.
- ``rest``: the REST aggregates stand-in: generated history, the live bars
  after it, paging, auth, errors, the REST faults, counters (pure: no sockets).
- ``front``: the port's front door: REST paths answered over plain HTTP (late
  when a fault says so), every other connection handed to picows.
- ``server``: ``Simulator`` (the port, routing, ``/sim/stats``,
  ``/sim/fault/NAME``, the generation clock) and ``run_simulator``.
"""

from fastrelay.sim.config import SimulatorConfig
from fastrelay.sim.faults import FAULTS
from fastrelay.sim.server import Simulator, run_simulator

__all__ = ["FAULTS", "Simulator", "SimulatorConfig", "run_simulator"]
