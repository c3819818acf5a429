"""The simulator's stand-in for Massive's REST aggregates will live here.

That is ``GET /v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{from}/{to}``,
served on the simulator's port beside the WebSocket paths; a later issue adds it.
"""
