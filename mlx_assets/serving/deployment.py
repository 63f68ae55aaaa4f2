"""The served model of a lifecycle instance: the registered version behind a router, rolled out
as a canary beside the version it replaces, then promoted or rolled back.

Built only when the composition names a ``model_server`` plugin. Servers and the router are
processes that outlive the run (the plugin's :class:`~mlx_plugins.model_servers.base.ServerHandle`
and :class:`~mlx_plugins.model_servers.routing.NginxRouter` are plain data that any later run
re-attaches to); their state lives in ``<home>/serving/<model>/`` (``servers.json``, written
atomically, and the router's folder).

- First version (or nothing alive): it starts and gets all traffic (``deployed``).
- A new version with one serving: it starts beside it and :class:`RolloutController` steps
  traffic (10% -> 50% -> 100% by default) while held-out test rows are replayed through the
  router (the local lifecycle has no live traffic), judging each step on the servers' own
  ``/metrics``: ``promoted`` (the old version is stopped) or ``rolled_back`` (the canary is).
- The version already serving, on the same server configuration: nothing changes
  (``unchanged``).
- The version already serving, but the composition's ``model_server`` (its plugin or its
  config, e.g. ``workers``) changed since it was started: the same version is started on the
  new configuration and swapped in behind the router (the router's graceful reload waits until
  the old workers finished their requests), then the old servers stop (``reconfigured``): no
  request fails during the swap.
- Without nginx on the machine there is no router: the new version replaces the old one
  (blue-green without a canary) and the metadata says how to get canary rollouts.

The blocking ``rollout_healthy`` check fails on a rollback, so the UI shows a red check on the
version that was refused while the stable one keeps serving.
"""

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
import polars as pl
from pydantic import BaseModel, ConfigDict

from mlx_assets.component.spec import Lifecycle
from mlx_assets.training.training_set import SPLIT
from mlx_assets.versioning import code_version
from mlx_plugins.model_registries.base import ModelRegistry, ModelVersion
from mlx_resources.atomic import atomic_write_text
from mlx_resources.platform import Platform

if TYPE_CHECKING:
    from mlx_plugins.model_servers.rollout import RolloutPolicy

TRAFFIC_ROWS = 500
"""Held-out test rows replayed through the router during a rollout (cycled)."""


class Deployment(BaseModel):
    """What serves the instance's model after the asset ran (its output, stored as a pickle)."""

    model_config = ConfigDict(frozen=True)

    model: str
    served_version: str
    """``v0003``: the version receiving all traffic."""
    url: str
    """Where to send ``POST /predict`` (the router's URL, or the server's without a router)."""
    decision: str
    """``deployed``, ``promoted``, ``rolled_back``, ``unchanged``, ``reconfigured`` or
    ``replaced``."""
    reason: str
    curl: str
    rollout: dict[str, Any] = {}
    server: str = ""
    """The ``model_server`` plugin serving ``served_version`` (``bentoml``)."""
    workers: int = 0
    """Worker processes per server of ``served_version``."""


def _servers_file(platform: Platform, lc: Lifecycle) -> Path:
    return platform.path("serving", lc.model_name) / "servers.json"


def _configs_file(platform: Platform, lc: Lifecycle) -> Path:
    return platform.path("serving", lc.model_name) / "server_config.json"


def server_fingerprint(server: Any) -> str:
    """A digest of the ``model_server`` plugin's name and config (16 hex characters): equal
    digests, same server configuration. Only the digest is stored, never a config value (a
    config may hold a secret)."""
    body = {
        "plugin": server.metadata.name,
        "config": server.model_dump(mode="json") if hasattr(server, "model_dump") else {},
    }
    raw = json.dumps(body, sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def _load_configs(path: Path) -> dict[str, str]:
    """Version label -> the fingerprint of the server config its servers were started with."""
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def _save_configs(path: Path, configs: dict[str, str], handles: dict[str, list[Any]]) -> None:
    body = {k: v for k, v in configs.items() if k in handles}
    atomic_write_text(path, json.dumps(body, indent=2, sort_keys=True) + "\n")


def _load_handles(path: Path) -> dict[str, list[Any]]:
    """Version label -> its live :class:`ServerHandle` s (dead ones are dropped)."""
    from mlx_plugins.model_servers.base import ServerHandle

    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    out: dict[str, list[Any]] = {}
    for label, handles in raw.items():
        live = [h for h in (ServerHandle.model_validate(x) for x in handles) if h.alive()]
        if live:
            out[label] = live
    return out


def _save_handles(path: Path, handles: dict[str, list[Any]]) -> None:
    body = {k: [h.model_dump(mode="json") for h in v] for k, v in handles.items() if v}
    atomic_write_text(path, json.dumps(body, indent=2) + "\n")


def _bodies(lc: Lifecycle, training_set: pl.DataFrame) -> list[dict[str, Any]]:
    """Prediction request bodies from the test rows (features only), one row each."""
    cols = list(lc.spec.features.columns)
    test = training_set.filter(pl.col(SPLIT) == "test").select(cols).head(TRAFFIC_ROWS)
    return [{"rows": [row]} for row in test.iter_rows(named=True)]


def _stop_all_but(handles: dict[str, list[Any]], keep: str) -> None:
    """Stop every version's servers except ``keep``'s and drop them from ``handles``."""
    for version in [v for v in handles if v != keep]:
        for h in handles.pop(version):
            h.stop()


def _address(handle: Any) -> str:
    return f"{handle.host}:{handle.port}"


def build_deployment(lc: Lifecycle) -> dg.AssetsDefinition:
    """The instance's ``model_deployment`` asset (see the module doc).

    Raises:
        CompositionError: the instance's ``rollout`` policy is invalid, naming the file, the
            key (``attributes.rollout.<key>``) and the fix.
    """
    key = lc.key("model_deployment")
    policy = rollout_policy(lc)

    @dg.asset(
        key=key,
        ins={
            "registered_model": dg.AssetIn(key=lc.registered_key),
            "training_set": dg.AssetIn(key=lc.training_set_key),
        },
        group_name=lc.group,
        kinds={"bentoml", "nginx"},
        code_version=code_version(__file__),
        io_manager_key="object_io_manager",
        required_resource_keys={"platform", "model_server", "model_registry"},
        check_specs=[
            dg.AssetCheckSpec(
                "rollout_healthy",
                asset=key,
                blocking=True,
                description="The new version was deployed or promoted; fails when its canary "
                "was rolled back (the previous version keeps serving).",
            )
        ],
        description=f"The served {lc.model_name}: the registered version behind a router, "
        "rolled out as a canary beside the one it replaces, promoted or rolled back on the "
        "servers' error rate and p99.",
    )
    def _deployment(
        context: dg.AssetExecutionContext,
        registered_model: ModelVersion,
        training_set: pl.DataFrame,
    ):
        r = context.resources
        deployment = deploy(
            context,
            lc,
            r.platform,
            r.model_server,
            r.model_registry,
            registered_model,
            training_set,
            policy,
        )
        meta: dict[str, Any] = {
            "served_version": deployment.served_version,
            "decision": deployment.decision,
            "reason": deployment.reason,
            "url": dg.MetadataValue.url(deployment.url),
            "curl": dg.MetadataValue.md(f"```\n{deployment.curl}\n```"),
            "server": deployment.server,
            "workers": deployment.workers,
        }
        for k, v in deployment.rollout.items():
            if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                meta[f"rollout_{k}"] = v
        yield dg.Output(deployment, metadata=meta)
        yield dg.AssetCheckResult(
            check_name="rollout_healthy",
            passed=deployment.decision != "rolled_back",
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"decision": deployment.decision, "reason": deployment.reason},
            description=None
            if deployment.decision != "rolled_back"
            else f"the canary was rolled back: {deployment.reason}",
        )

    return _deployment


def rollout_policy(lc: Lifecycle) -> "RolloutPolicy":
    """The instance's ``rollout`` attributes as a :class:`RolloutPolicy` (defaults for keys
    not given).

    Raises:
        CompositionError: an unknown key or a bad value, naming ``attributes.rollout.<key>``
            of the instance's file.
    """
    from pydantic import ValidationError

    from mlx_plugins.kernel.errors import CompositionError
    from mlx_plugins.model_servers.rollout import RolloutPolicy

    try:
        return RolloutPolicy.model_validate(lc.spec.rollout)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CompositionError(
            lc.source_file or lc.name,
            "attributes.rollout" + (f".{where}" if where else ""),
            first["msg"].removeprefix("Value error, "),
            "use the keys steps, hold_requests, hold_seconds, max_step_seconds, rule "
            "{max_error_rate, max_p99_ms, max_shed_rate, min_requests} (docs/serving.md)",
        ) from None


def deploy(
    context: dg.AssetExecutionContext,
    lc: Lifecycle,
    platform: Platform,
    server: Any,
    registry: ModelRegistry,
    version: ModelVersion,
    training_set: pl.DataFrame,
    policy: "RolloutPolicy | None" = None,
) -> Deployment:
    """Serve ``version`` (see the module doc); returns what serves afterwards. ``policy``: the
    canary rollout's (None: :class:`RolloutPolicy`'s defaults).

    Raises:
        mlx_plugins.model_servers.base.ServingError: the new version's server did not start
            (nothing changes for the version serving).
    """
    from mlx_plugins.model_servers.base import curl_example
    from mlx_plugins.model_servers.rollout import RolloutController, ServedVersion
    from mlx_plugins.model_servers.routing import (
        NginxRouter,
        RouterError,
        RoutingTable,
        find_nginx,
    )
    from mlx_plugins.model_servers.routing.traffic import TrafficGenerator

    package = server.package(version, registry)
    label = package.version_label
    state = _servers_file(platform, lc)
    handles = _load_handles(state)
    router_dir = state.parent / "router"
    try:
        find_nginx()
        has_nginx = True
    except RouterError:
        has_nginx = False
    router = None
    if has_nginx and (router_dir / "router.json").exists():
        try:
            router = NginxRouter.attach(router_dir)
        except RouterError as exc:
            context.log.warning(f"the router is gone ({exc}); starting a new one")
    stable_label = None
    if router is not None:
        weights = router.table.weights
        stable_label = max(weights, key=lambda v: weights[v]) if weights else None
        if stable_label not in handles:
            stable_label = None  # its servers died: nothing serves
    elif not has_nginx and handles:
        stable_label = next(iter(handles))
    configs_path = _configs_file(platform, lc)
    configs = _load_configs(configs_path)
    fingerprint = server_fingerprint(server)
    plugin = str(server.metadata.name)
    if stable_label == label:
        if configs.get(label, fingerprint) == fingerprint:
            url = router.url if router is not None else handles[label][0].url
            configs[label] = fingerprint
            _save_configs(configs_path, configs, handles)
            return Deployment(
                model=lc.model_name,
                served_version=label,
                url=url,
                decision="unchanged",
                reason=f"{label} already serves all traffic",
                curl=curl_example(handles[label][0], package.request_schema).replace(
                    handles[label][0].url, url
                ),
                server=plugin,
                workers=handles[label][0].workers,
            )
        return _reconfigure(
            context, lc, server, package, router, handles, state, configs, configs_path
        )

    context.log.info(f"starting {lc.model_name} {label}")
    canary = server.start(package)
    handles[label] = [canary]
    _save_handles(state, handles)  # recorded before anything else can fail
    rollout: dict[str, Any] = {}
    if not has_nginx:
        _stop_all_but(handles, label)
        decision, reason, url = (
            "replaced",
            "no nginx on this machine, so no router and no canary: the new version replaced "
            "the old one (apt-get install nginx for canary rollouts)",
            canary.url,
        )
    elif router is None or stable_label is None:
        table = RoutingTable.single(label, [_address(canary)])
        if router is None:
            router = NginxRouter(router_dir).start(table)
        else:
            router.apply(table)
        _stop_all_but(handles, label)
        decision, reason, url = "deployed", f"{label} serves all traffic", router.url
    else:
        stable = ServedVersion(stable_label, list(handles[stable_label]))
        new = ServedVersion(label, [canary])
        from mlx_plugins.model_servers.base import example_row

        # held-out rows; without any, the schema's example row (a body of no rows is a 422)
        bodies = _bodies(lc, training_set) or [{"rows": [example_row(package.request_schema)]}]
        controller = RolloutController(
            router,
            policy,
            on_event=lambda e: context.log.info(f"rollout: {e.event} {e.detail}"),
        )
        with TrafficGenerator(router.url, bodies, threads=4, max_seconds=600):
            result = controller.run(stable, new)
        loser = stable_label if result.promoted else label
        handles.pop(loser, None)
        decision, reason, url = result.decision, result.reason, router.url
        rollout = result.metadata()
    _save_handles(state, handles)
    if decision != "rolled_back":
        configs[label] = fingerprint
    _save_configs(configs_path, configs, handles)
    served = label if decision != "rolled_back" else str(stable_label)
    example = handles[served][0]
    return Deployment(
        model=lc.model_name,
        served_version=served,
        url=url,
        decision=decision,
        reason=reason,
        curl=curl_example(example, package.request_schema).replace(example.url, url),
        rollout=rollout,
        server=plugin if served == label else "",
        workers=example.workers,
    )


def _reconfigure(
    context: dg.AssetExecutionContext,
    lc: Lifecycle,
    server: Any,
    package: Any,
    router: Any,
    handles: dict[str, list[Any]],
    state: Path,
    configs: dict[str, str],
    configs_path: Path,
) -> Deployment:
    """Serve the version already serving on the composition's new server configuration: start
    it there, point the router's route for it at the new server (a graceful reload that waits
    until the old workers finished their requests), then stop the old servers.

    Raises:
        mlx_plugins.model_servers.base.ServingError: the new server did not start (the old ones
            keep serving, nothing changed).
    """
    from mlx_plugins.model_servers.base import curl_example

    label = package.version_label
    old = handles[label]
    context.log.info(
        f"the model_server configuration changed since {lc.model_name} {label} was started: "
        f"starting it on the new one ({server.metadata.name})"
    )
    fresh = server.start(package)
    handles[label] = [*old, fresh]
    _save_handles(state, handles)  # recorded before anything else can fail
    if router is not None:
        router.apply(router.table.with_servers(label, [_address(fresh)]), wait_drained=True)
        url = router.url
        reason = (
            f"{label} now serves from {server.metadata.name} with the composition's new "
            f"config ({fresh.workers} worker(s)); the router switched to it gracefully and "
            f"the {len(old)} old server(s) stopped"
        )
    else:
        url = fresh.url
        reason = (
            f"{label} now serves from {server.metadata.name} with the composition's new "
            f"config at {fresh.url} (no router on this machine: its URL changed)"
        )
    for h in old:
        h.stop()
    handles[label] = [fresh]
    _save_handles(state, handles)
    configs[label] = server_fingerprint(server)
    _save_configs(configs_path, configs, handles)
    return Deployment(
        model=lc.model_name,
        served_version=label,
        url=url,
        decision="reconfigured",
        reason=reason,
        curl=curl_example(fresh, package.request_schema).replace(fresh.url, url),
        server=str(server.metadata.name),
        workers=fresh.workers,
    )


def not_serving(home: Path, model: str) -> str | None:
    """Why ``model``'s deployment no longer serves, or None while a recorded server of it is
    alive: no server recorded in ``<home>/serving/<model>/servers.json`` is running (stopped
    with ``mlx serving stop``, killed, or the machine restarted). The lifecycle then runs
    ``model_deployment`` again, although nothing upstream changed."""
    state = home / "serving" / model / "servers.json"
    if _load_handles(state):
        return None
    return "no server of it is running (stopped, or the machine restarted): serving it again"


def stop_serving(home: Path, models: list[str] | None = None) -> list[str]:
    """Stop what ``model_deployment`` left serving under the MLX ``home``: every recorded
    server (its workers included) and the router of each model in ``<home>/serving/`` (only
    ``models``, when given). Returns one line per model saying what was stopped; a model with
    nothing running says so. ``servers.json`` is emptied, so the next run starts afresh.

    Raises:
        ValueError: a name in ``models`` has no ``<home>/serving/<name>/`` folder (naming the
            models that do).
    """
    from mlx_plugins.model_servers.routing import NginxRouter, RouterError

    root = home / "serving"
    known = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for name in models or []:
        if name not in known:
            raise ValueError(
                f"no served model {name!r} under {root}; served there: {', '.join(known) or 'none'}"
            )
    lines = []
    for name in models or known:
        folder = root / name
        stopped = []
        state = folder / "servers.json"
        for label, handles in _load_handles(state).items():
            for h in handles:
                h.stop()
                stopped.append(f"{label} on port {h.port} (pid {h.pid})")
        if state.exists():
            _save_handles(state, {})
        if (folder / "router" / "router.json").exists():
            try:
                router = NginxRouter.attach(folder / "router")
            except RouterError:
                router = None
            if router is not None:
                url = router.url
                router.stop()
                stopped.append(f"the router at {url}")
        lines.append(f"{name}: stopped {', '.join(stopped)}" if stopped else f"{name}: nothing ran")
    return lines
