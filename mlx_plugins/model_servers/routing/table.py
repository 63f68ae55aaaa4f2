"""The routing table: which served versions get which share of traffic, on which replicas.

A :class:`RoutingTable` is plain, immutable data shared by every router (the local nginx one in
:mod:`.nginx`, the Kubernetes Gateway API rendering in :mod:`.gateway`): one
:class:`VersionRoute` per served version with its traffic weight in percent and the
``host:port`` addresses of its replicas.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,62}$")
"""A served version's name (``v0003``, ``flight_delay:v0003``): it becomes part of router
configuration, HTTP headers and Kubernetes names, so only these characters."""

_ADDRESS = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


class RoutingError(ValueError):
    """A routing table that no router could serve; the message names the version and field."""


class VersionRoute(BaseModel):
    """One served version behind the router.

    Attributes
    ----------
    version
        The version's name (matches :data:`VERSION_PATTERN`), e.g. ``v0003``.
    weight
        Share of requests, in percent (0-100, up to 2 decimals: nginx's ``split_clients``
        resolution). 0 keeps the version's replicas configured but sends it nothing.
    servers
        ``host:port`` of each replica (``127.0.0.1:38211``, ``[::1]:38211``); requests to the
        version are spread over them round-robin. May be empty only when ``weight`` is 0.
    """

    model_config = ConfigDict(frozen=True)

    version: str
    weight: float = Field(ge=0, le=100)
    servers: tuple[str, ...] = ()

    @field_validator("version")
    @classmethod
    def _version_ok(cls, v: str) -> str:
        if not VERSION_PATTERN.match(v):
            raise ValueError(
                f"version {v!r} is not a valid served version name: use 1-63 letters, digits, "
                "'.', '_', ':' or '-', starting with a letter or digit (e.g. 'v0003')"
            )
        return v

    @field_validator("weight")
    @classmethod
    def _weight_resolution(cls, w: float) -> float:
        if not math.isfinite(w) or abs(round(w, 2) - w) > 1e-9:
            raise ValueError(
                f"weight {w!r}: give percent with at most 2 decimals (e.g. 12.5), the router's "
                "resolution"
            )
        return round(w, 2)

    @field_validator("servers")
    @classmethod
    def _servers_ok(cls, servers: tuple[str, ...]) -> tuple[str, ...]:
        for s in servers:
            m = _ADDRESS.match(s)
            if not m or not 1 <= int(m.group(1)) <= 65535:
                raise ValueError(f"server {s!r} is not host:port (e.g. '127.0.0.1:38211')")
        if len(set(servers)) != len(servers):
            raise ValueError(f"servers {list(servers)} list an address twice")
        return servers

    @model_validator(mode="after")
    def _servers_for_traffic(self) -> VersionRoute:
        if self.weight > 0 and not self.servers:
            raise ValueError(
                f"version {self.version!r} has weight {self.weight}% but no servers: start a "
                "replica first or give it weight 0"
            )
        return self


class RoutingTable(BaseModel):
    """Every served version behind one router; weights sum to 100.

    Raises
    ------
    pydantic.ValidationError
        A version listed twice, weights that do not sum to 100, or a bad
        :class:`VersionRoute`; the message names the version and the field.
    """

    model_config = ConfigDict(frozen=True)

    routes: tuple[VersionRoute, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> RoutingTable:
        names = [r.version for r in self.routes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"versions listed twice in the routing table: {dupes}")
        total = round(sum(r.weight for r in self.routes), 2)
        if abs(total - 100) > 1e-6:
            detail = ", ".join(f"{r.version}={r.weight}" for r in self.routes)
            raise ValueError(f"weights must sum to 100 (percent), got {total}: {detail}")
        return self

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def single(cls, version: str, servers: Sequence[str]) -> RoutingTable:
        """All traffic to one version."""
        return cls(routes=(VersionRoute(version=version, weight=100, servers=tuple(servers)),))

    @classmethod
    def split(
        cls, weights: Mapping[str, float], servers: Mapping[str, Sequence[str]]
    ) -> RoutingTable:
        """A table from ``{version: percent}`` and ``{version: [host:port, ...]}``.

        Raises
        ------
        RoutingError
            A weighted version has no entry in ``servers``.
        pydantic.ValidationError
            See :class:`RoutingTable`.
        """
        missing = [v for v in weights if v not in servers]
        if missing:
            raise RoutingError(f"no servers given for version(s) {missing}")
        return cls(
            routes=tuple(
                VersionRoute(version=v, weight=w, servers=tuple(servers[v]))
                for v, w in weights.items()
            )
        )

    # -- queries and edits (each returns a new table) -------------------------------------------
    def route(self, version: str) -> VersionRoute:
        """The route of ``version``.

        Raises
        ------
        RoutingError
            No such version in the table (the message lists the known ones).
        """
        for r in self.routes:
            if r.version == version:
                return r
        raise RoutingError(
            f"version {version!r} is not in the routing table; known: "
            f"{[r.version for r in self.routes]}"
        )

    @property
    def weights(self) -> dict[str, float]:
        """``{version: percent}``."""
        return {r.version: r.weight for r in self.routes}

    def with_weights(self, weights: Mapping[str, float]) -> RoutingTable:
        """The same versions and servers with new weights; versions not named get 0; names not in
        the table raise :class:`RoutingError`."""
        unknown = [v for v in weights if v not in self.weights]
        if unknown:
            raise RoutingError(
                f"cannot weight unknown version(s) {unknown}; known: {list(self.weights)}"
            )
        return RoutingTable(
            routes=tuple(
                VersionRoute(
                    version=r.version, weight=weights.get(r.version, 0.0), servers=r.servers
                )
                for r in self.routes
            )
        )

    def with_servers(self, version: str, servers: Sequence[str]) -> RoutingTable:
        """The same table with ``version``'s replicas replaced by ``servers``."""
        self.route(version)  # raises for an unknown version
        return RoutingTable(
            routes=tuple(
                VersionRoute(version=r.version, weight=r.weight, servers=tuple(servers))
                if r.version == version
                else r
                for r in self.routes
            )
        )

    def with_version(self, version: str, servers: Sequence[str]) -> RoutingTable:
        """The table plus a new ``version`` at weight 0.

        Raises
        ------
        RoutingError
            ``version`` is in the table already (change it with :meth:`with_servers` and
            :meth:`with_weights`).
        """
        if version in self.weights:
            raise RoutingError(
                f"version {version!r} is in the routing table already: use with_servers() "
                "and with_weights() to change it"
            )
        kept = self.routes
        return RoutingTable(
            routes=(*kept, VersionRoute(version=version, weight=0, servers=tuple(servers)))
        )

    def without(self, version: str) -> RoutingTable:
        """The table minus ``version`` (which must have weight 0 by then)."""
        route = self.route(version)
        if route.weight > 0:
            raise RoutingError(
                f"cannot remove version {version!r} while it has weight {route.weight}%: "
                "move its traffic first (with_weights)"
            )
        return RoutingTable(routes=tuple(r for r in self.routes if r.version != version))
