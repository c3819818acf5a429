"""``fastrelay serve --workers N``: every core of one machine (docs/workers.md).

A supervisor process (``supervisor.py``) owns a private nats-server (``natsd.py``), one
scale-out ingest and N edges sharing the client port through ``SO_REUSEPORT``
(``worker.py`` runs each in its own process); ``plan.py`` derives their settings from the
tree's, ``policy.py`` decides restarts, ``children.py`` starts processes that die with the
supervisor, ``pages.py`` merges their metrics into one scrape target and ``probes.py`` serves
it with the tree's readiness.
"""
