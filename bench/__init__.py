"""Load tests of fastrelay with synthetic clients (``make bench`` runs ``python -m bench.run``).

Everything runs on 127.0.0.1: the simulator (``fastrelay sim``), the relay under
test (``fastrelay serve``) and load-generator processes (``bench.loadclient``),
each started and stopped by ``bench.run``.
"""
