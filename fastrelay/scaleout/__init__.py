"""Scale-out over NATS: one ingest holds the upstreams, edges serve the clients.

``subjects`` and ``messages`` are the wire contract between the roles,
``registry`` the ingest's bookkeeping of what every edge wants; all three are
pure. ``ingest`` and ``edge`` are the thin nats-py shells around them.
"""
