"""Which browser pages may open a socket on the relay (the ``Origin`` header); pure.

A browser sends ``Origin`` with every WebSocket upgrade; a service (Massive's
own clients, the bench) sends none and is never refused for it. By default
(``--allowed-origins`` unset) the relay accepts pages of its own origin (the
page's host is the host the request was sent to: the dashboard it serves, or
the same site behind nginx) and pages on the local machine (``localhost``,
``127.0.0.1``, ``[::1]``: development); ``*`` accepts any page, and a list
accepts exactly those origins. This stops another site's page from quietly
using a visitor's browser as a client of the relay (cross-site WebSocket
hijacking).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

ANY: Final = "*"
_LOCAL_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class OriginPolicy:
    def __init__(self, allowed: list[str]) -> None:
        self.any = ANY in allowed
        self.listed = frozenset(o.strip().rstrip("/").lower() for o in allowed if o.strip() and o != ANY)

    @property
    def default(self) -> bool:
        """Same origin and local pages only (no list given)."""
        return not self.any and not self.listed

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None or self.any:
            return True  # not a browser, or any page welcome
        if self.listed:
            return origin.rstrip("/").lower() in self.listed
        try:
            parts = urlsplit(origin)
            hostname, port = parts.hostname, parts.port or _DEFAULT_PORTS.get(parts.scheme)
        except ValueError:
            return False  # "null" or garbage: no page of ours
        if parts.scheme not in _DEFAULT_PORTS or hostname is None:
            return False
        if hostname in _LOCAL_HOSTS:
            return True
        return host is not None and _same_host(hostname, port, host)


def _same_host(hostname: str, port: int | None, host_header: str) -> bool:
    """The page's host is the one the request was sent to. nginx's ``$host`` drops the
    port; a Host without one matches on the name alone."""
    try:
        target = urlsplit(f"//{host_header.strip()}")
        target_port = target.port
    except ValueError:
        return False
    if target.hostname != hostname:
        return False
    return target_port is None or target_port == port
