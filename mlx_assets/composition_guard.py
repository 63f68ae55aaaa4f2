"""The code location keeps its last good composition when the served one stops loading.

``mlx_resources.hot_swap`` checks a candidate before it installs it, but Dagster's own reload
(the UI's "Reload definitions" button, GraphQL ``reloadRepositoryLocation``) imports the
definitions again with whatever the served file holds: a composition with a mistake would turn
the code location into a load error (no assets, no jobs, the sensors and schedules stop, the
next runs fail on import) until the next good reload.

With ``MLX_LAST_GOOD_COMPOSITION=<file>`` in the code server's environment (deploy/helm:
``/var/lib/mlx/last_good_composition.yaml``), :func:`guarded_definitions`:

- on every successful load, saves the served composition's text to that file (temp file +
  rename, mode 0600: a composition may name secrets);
- when the served composition does not load (:class:`CompositionError`) and a saved one exists,
  builds the definitions from the saved text instead (read as if it were the served file, so
  relative paths resolve as before), logs the error, and adds the sensor ``composition_error``
  (stopped) whose description is the error with its fix: the location keeps serving what it
  served, runs import the same definitions, and the UI (Automation, or GraphQL
  ``sensorOrError``) shows why the reload did not take. Fixing the file and reloading drops it.

Without the variable (the default: a laptop, ``dagster dev``) a bad composition is a load error
that names the file, the key and the fix, as Dagster shows it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import dagster as dg

from mlx_plugins.kernel.errors import CompositionError

ENV = "MLX_LAST_GOOD_COMPOSITION"
"""Environment variable naming the file that keeps the last composition that loaded: the same
name as ``mlx_resources.hot_swap.LAST_GOOD_ENV`` (which unsets it when it checks a candidate;
``tests/deploy/test_composition_guard.py`` checks they agree), written out here so that
loading the definitions does not import the hot-swap tool."""
ALARM_SENSOR = "composition_error"
"""The sensor added to the definitions served from the saved composition."""
LOG = logging.getLogger("mlx.composition_guard")


def guarded_definitions(environ: Mapping[str, str] | None = None) -> dg.Definitions:
    """The code location's definitions (see the module doc).

    Args:
        environ: the environment (default ``os.environ``): ``MLX_COMPOSITION``,
            ``MLX_PROFILE``, ``MLX__...`` overrides and :data:`ENV`.

    Raises:
        CompositionError: the served composition does not load and there is no saved one (or
            :data:`ENV` is not set); names the file, the key and the fix.
    """
    from mlx_assets.build import build_definitions
    from mlx_plugins.kernel.composition import find_composition_file, load_composition

    environ = os.environ if environ is None else environ
    keep = environ.get(ENV)
    served = find_composition_file(environ.get("MLX_COMPOSITION"))
    try:
        defs = build_definitions(load_composition(served, environ=environ))
    except CompositionError as exc:
        snapshot = Path(keep) if keep else None
        if snapshot is None or not snapshot.is_file():
            raise
        return _last_good(snapshot, served, exc, environ)
    if keep:
        try:
            _save(Path(keep), served)
        except OSError as exc:  # a read-only or missing folder must not fail a good load
            LOG.warning(
                f"{ENV}={keep}: cannot save the composition there ({type(exc).__name__}: "
                f"{exc.strerror or exc}); a later composition that does not load will be a load "
                f"error instead of falling back. Fix: point {ENV} at a writable file"
            )
    return defs


def _save(snapshot: Path, served: Path) -> None:
    from mlx_plugins.kernel.atomic import atomic_write_bytes

    text = served.read_bytes()
    if snapshot.is_file() and snapshot.read_bytes() == text:
        return
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(snapshot, text, perms=0o600)  # never readable by others, even briefly


def _last_good(
    snapshot: Path, served: Path, error: CompositionError, environ: Mapping[str, str]
) -> dg.Definitions:
    from mlx_assets.build import build_definitions
    from mlx_plugins.kernel import yaml12
    from mlx_plugins.kernel.composition import parse_composition

    raw = yaml12.load(snapshot.read_text()) or {}
    composition = parse_composition(raw, source=str(served), environ=environ)
    defs = build_definitions(composition)
    message = (
        f"{served} does not load, so this code location serves the last composition that did "
        f"(saved in {snapshot}): {error}\nFix the file and reload the code location "
        "(python -m mlx_resources.hot_swap checks a candidate before it installs it)."
    )
    LOG.error(message)

    @dg.sensor(
        name=ALARM_SENSOR,
        description=message,
        default_status=dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=3600,
    )
    def composition_error(_context: dg.SensorEvaluationContext) -> dg.SkipReason:
        return dg.SkipReason(message)

    return dg.Definitions.merge(defs, dg.Definitions(sensors=[composition_error]))
