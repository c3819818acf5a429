"""fastrelay: one authenticated Massive connection per market, fanned out to many clients."""

__version__ = "0.1.0"
