"""The seed guide's integration test: Snowflake -> Databricks -> registry, by composition alone.

A composition with ``data_source: snowflake`` (fakesnow's server behind the official connector,
a ``customer_features`` table the test creates) and ``ml_platform: databricks`` (the loopback
Databricks server, which runs the Pipes training locally), and a lifecycle instance
(``defs/churn/defs.yaml``) of the same ``MLLifecycle`` component the flights model uses. The
README's command, ``mlx lifecycle <file>``, runs it in its own process; nothing but the
composition and the instance file is written by the test. It ends with a registered version
whose record names the Databricks run, and with the SQL the warehouse ran pushed down per day.
"""

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlx_plugins.ml_platforms.databricks_loopback import LoopbackDatabricks
from tests.sources._snowflake_server import snowflake_server, unique_database

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "dapi-integration-token-0123456789"
START, DAYS, ROWS_PER_DAY = dt.date(2024, 1, 1), 48, 60
# fakesnow transpiles every statement (about 5 ms a row here): a small table, inserted in one
# statement of literal rows

COMPOSITION = """\
plugins:
  data_source:
    - name: warehouse
      plugin: snowflake
      config:
        account: fakesnow
        user: {user}
        password: {{env: MLX_IT_SNOWFLAKE_PASSWORD}}
        database: {database}
        schema_name: PUBLIC
        retries: 1
        login_timeout_s: 10
        connection_args: {connection_args}
        read_tables:
          customer_features: {{table: customer_features, date_column: day}}
  ml_platform:
    plugin: databricks
    config:
      host: {host}
      token: {{env: MLX_IT_DATABRICKS_TOKEN}}
      poll_interval_s: 0.5
      timeout_s: 600
      new_cluster: {{spark_version: 15.4.x-cpu-ml-scala2.12, node_type_id: i3.xlarge}}
      torch: {{epochs: 4, hidden: [16], batch_size: 256, num_threads: 1}}
  drift_detector: polars
  model_server: {{plugin: bentoml, config: {{workers: 1}}}}

settings:
  defs_folder: defs
  lifecycles: [churn]
"""

INSTANCE = """\
type: mlx_assets.component.MLLifecycle
attributes:
  name: churn
  data:
    source: warehouse
    start: 2024-01-01
    end: 2024-02-18
    time_column: day
    tables:
      - name: customer_features
        key_columns: [customer_id]
  features:
    numeric: [spend, visits, tenure_days]
    categorical: [segment]
  target:
    column: churned
    kind: binary
  window:
    train_start: 2024-01-01
    train_end: 2024-02-01
    valid_days: 5
    test_start: 2024-02-02
    test_end: 2024-02-17
"""


def _create_table(server, database: str) -> None:
    import snowflake.connector

    rng = np.random.default_rng(7)
    rows = []
    for d in range(DAYS):
        day = START + dt.timedelta(days=d)
        spend = rng.gamma(2.0, 50.0, ROWS_PER_DAY)
        visits = rng.poisson(4, ROWS_PER_DAY)
        tenure = rng.integers(1, 2000, ROWS_PER_DAY)
        segment = rng.choice(["consumer", "smb", "enterprise"], ROWS_PER_DAY)
        logit = 2.5 - 0.035 * spend + 1.0 * (visits < 3) + np.where(segment == "smb", 1.0, 0.0)
        churned = (rng.random(ROWS_PER_DAY) < 1 / (1 + np.exp(-logit))).astype(int)
        rows += [
            f"('{day.isoformat()}', {d * ROWS_PER_DAY + i}, {float(spend[i])!r}, "
            f"{int(visits[i])}, {int(tenure[i])}, '{segment[i]}', {int(churned[i])})"
            for i in range(ROWS_PER_DAY)
        ]
    conn = snowflake.connector.connect(
        user=server.user,
        password=server.password,
        account="fakesnow",
        **server.connection_args(database),
    )
    try:
        cur = conn.cursor()
        cur.execute(f"CREATE DATABASE {database}")
        cur.execute(f"CREATE SCHEMA {database}.PUBLIC")
        cur.execute(f"USE SCHEMA {database}.PUBLIC")
        cur.execute(
            "CREATE TABLE CUSTOMER_FEATURES (DAY DATE, CUSTOMER_ID NUMBER(38,0), "
            "SPEND FLOAT, VISITS NUMBER(10,0), TENURE_DAYS NUMBER(10,0), SEGMENT VARCHAR, "
            "CHURNED NUMBER(1,0))"
        )
        cur.execute(f"INSERT INTO CUSTOMER_FEATURES VALUES {', '.join(rows)}")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def servers():
    with snowflake_server() as sf, LoopbackDatabricks(token=TOKEN, max_run_s=600) as dbx:
        database = unique_database()
        _create_table(sf, database)
        sf.statements.clear()
        yield sf, dbx, database


def test_snowflake_to_databricks_to_registry_by_composition_alone(servers, tmp_path) -> None:
    sf, dbx, database = servers
    composition = tmp_path / "mlx.yaml"
    composition.write_text(
        COMPOSITION.format(
            user=sf.user,
            database=database,
            connection_args=json.dumps(sf.connection_args(database)),
            host=dbx.url,
        )
    )
    (tmp_path / "defs" / "churn").mkdir(parents=True)
    (tmp_path / "defs" / "churn" / "defs.yaml").write_text(INSTANCE)
    home = tmp_path / "home"
    env = {
        **os.environ,
        "MLX_HOME": str(home),
        "MLX_IT_SNOWFLAKE_PASSWORD": sf.password,
        "MLX_IT_DATABRICKS_TOKEN": TOKEN,
    }
    for var in ("DAGSTER_HOME", "MLX_PROFILE", "MLX_COMPOSITION"):
        env.pop(var, None)
    for var in [v for v in env if v.startswith("MLX__")]:  # the suite's overrides: not ours
        env.pop(var)
    # a crash of the lifecycle process (SIGSEGV in drift monitoring was seen once) shows
    # where it was in the output the failed assertion prints
    env["PYTHONFAULTHANDLER"] = "1"
    # the lifecycle deploys (servers and router outlive it): stopped whatever fails below
    from mlx_assets.serving.deployment import stop_serving

    try:
        done = subprocess.run(
            [sys.executable, "-m", "mlx_assets.cli", "lifecycle", str(composition)],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1500,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-6000:]

        # the data left the warehouse per day, pushed down: a WHERE on the day, bound values
        reads = sf.sql('FROM "')
        assert reads and any('"DAY" >= ' in s for s in reads), reads[:3]

        # one training run on "Databricks", through Pipes, that succeeded
        assert len(dbx.submitted) == 1
        (run,) = dbx.runs.values()
        assert run.result_state == "SUCCESS"
        assert TOKEN not in output and sf.password not in output

        # a registered version whose record names the Databricks run and cluster
        (version_file,) = (home / "registry" / "churn").glob("v*/version.json")
        version = json.loads(version_file.read_text())
        params = version["config"]["params"]
        assert params["databricks_run_id"] == run.run_id
        assert params["databricks_run_url"].startswith(dbx.url)
        assert params["cluster"]["new_cluster"]["node_type_id"] == "i3.xlarge"
        assert version["config"]["platform"] == "databricks"
        artifact = Path(version["artifact_path"])
        assert artifact.is_file() and artifact.parent == version_file.parent
        # ... and whose lineage names the Snowflake query its data came from
        sources = version["lineage"]["sources"]
        (read,) = sources.values()
        assert '"DAY" >= ' in read["sql"] and 'FROM "' in read["sql"]
        assert "query_id" in read and "password" not in json.dumps(read).lower()

        # ... and that is served: the registered version answers behind the local router
        import pickle

        from mlx_assets.serving.deployment import Deployment
        from tests.serving.conftest import post

        (obj,) = (home / "objects" / "churn").glob("model_deployment")
        deployment: Deployment = pickle.loads(obj.read_bytes())
        assert deployment.decision == "deployed"
        assert "curl" in output or deployment.curl.startswith("curl")
        row = {"spend": 12.5, "visits": 2.0, "tenure_days": 300.0, "segment": "smb"}
        status, body = post(deployment.url + "/predict", {"rows": [row]})
        assert status == 200, body
        assert 0.0 <= body["predictions"][0] <= 1.0
    finally:
        stop_serving(home)
