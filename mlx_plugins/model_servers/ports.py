"""TCP ports on loopback for model servers and the router: one picked by the OS, and whether one
can be bound now."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now on ``host`` (the OS's choice; free a moment ago)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now with ``SO_REUSEADDR``, as nginx and ``bentoml
    serve`` bind: a port held only by connections in TIME_WAIT counts as free, one something
    listens on does not. ``bentoml serve`` also sets ``SO_REUSEPORT``, so a second server on a
    taken port would not fail but share the port (and its traffic) with the first: callers
    check first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
