"""Weighted traffic routing between served model versions.

* :mod:`.table`: the :class:`RoutingTable` (versions, percent weights, replica addresses);
* :mod:`.nginx`: :class:`NginxRouter`, the local router (nginx in a run folder of its own);
* :mod:`.gateway`: the Kubernetes form, Gateway API ``HTTPRoute`` manifests, validated.

Nothing heavy is imported here (psutil and jsonschema load on first use).
"""

from mlx_plugins.model_servers.routing.nginx import (
    STATUS_PATH,
    VERSION_HEADER,
    NginxConfigError,
    NginxRouter,
    NginxSettings,
    Reload,
    RouterError,
    find_nginx,
    free_port,
    read_access_log,
    render_nginx_conf,
)
from mlx_plugins.model_servers.routing.table import (
    RoutingError,
    RoutingTable,
    VersionRoute,
)

__all__ = [
    "STATUS_PATH",
    "VERSION_HEADER",
    "NginxConfigError",
    "NginxRouter",
    "NginxSettings",
    "Reload",
    "RouterError",
    "RoutingError",
    "RoutingTable",
    "VersionRoute",
    "find_nginx",
    "free_port",
    "read_access_log",
    "render_nginx_conf",
]
