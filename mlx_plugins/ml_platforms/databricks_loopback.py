"""A loopback HTTP server speaking the Databricks REST calls of a Pipes training run, for tests
and the contract kit: the official ``databricks-sdk`` ``WorkspaceClient`` (and so
``dagster-databricks``) talks to it unchanged (``host=server.url``)::

    with LoopbackDatabricks(token="dapi-test") as server:
        plugin = DatabricksPlatform(host=server.url, token="dapi-test", poll_interval_s=0.2)

What it serves (the endpoints the SDK calls for this flow, with Databricks' JSON shapes and
error bodies ``{"error_code": ..., "message": ...}``):

- ``POST /api/2.2/jobs/runs/submit`` (and ``2.1``): validates the task spec as Databricks does (a
  ``task_key``, a ``spark_python_task`` with a ``python_file``, exactly one of ``new_cluster``
  (``spark_version``, ``node_type_id``, ``num_workers`` or ``autoscale``) and
  ``existing_cluster_id`` (which must exist)) and "executes" the task: the task's python file is
  run as a local subprocess (this interpreter) with the task's ``parameters`` as arguments and
  ``new_cluster.spark_env_vars`` in its environment, in a scrubbed environment; DBFS is the
  local folder :attr:`dbfs_root`, which the task sees as its FUSE mount through
  ``MLX_DBFS_FUSE_ROOT`` (``/dbfs`` on a real cluster). So the real Pipes bootstrap runs on the
  "cluster" side and writes its messages to "DBFS".
- ``GET /api/2.2/jobs/runs/get`` (life cycle ``PENDING`` -> ``RUNNING`` -> ``TERMINATING`` ->
  ``TERMINATED`` with ``SUCCESS``, ``FAILED``, ``TIMEDOUT`` or ``CANCELED``),
  ``GET .../runs/get-output`` (the task's ``error`` and ``error_trace``: the last line
  and the tail of its stderr), ``POST .../runs/cancel`` (kills the task's process
  group).
- DBFS 2.0: ``put``, ``create``/``add-block``/``close`` (the file appears on ``close``, written
  to a temporary name and renamed: never half-visible), ``read``, ``get-status``, ``list``,
  ``mkdirs``, ``delete``.
- ``GET /api/2.0/preview/scim/v2/Me`` (the health check), ``GET /api/2.0/clusters/get``, and
  ``clusters/list-node-types`` and ``clusters/spark-versions`` (``node_types`` and
  ``spark_versions``; the health check compares ``new_cluster`` with them).

Every request must carry ``Authorization: Bearer <token>``; otherwise 403 ``Invalid access
token.``, as Databricks answers. Bounded: at most ``max_active_runs`` runs at a time (429
otherwise), each killed after ``max_run_s`` (``TIMEDOUT``) or its own ``timeout_seconds``;
:meth:`stop` kills every task process and removes the temporary DBFS folder it created. The
task processes die with the process running the server (``PR_SET_PDEATHSIG``). Nothing here
is imported by the platform at run time.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mlx_plugins.kernel.loopback_http import LoopbackHTTPServer

FUSE_ROOT_ENV = "MLX_DBFS_FUSE_ROOT"
NODE_TYPES = ("i3.xlarge", "i3.2xlarge", "m5d.large", "g5.xlarge", "g5.2xlarge", "p3.2xlarge")
"""What ``clusters/list-node-types`` offers by default (a few AWS node types)."""
SPARK_VERSIONS = (
    "14.3.x-scala2.12",
    "14.3.x-cpu-ml-scala2.12",
    "14.3.x-gpu-ml-scala2.12",
    "15.4.x-scala2.12",
    "15.4.x-cpu-ml-scala2.12",
    "15.4.x-gpu-ml-scala2.12",
)
"""What ``clusters/spark-versions`` offers by default."""
"""Where the task process finds DBFS mounted (``/dbfs`` on a Databricks cluster)."""
MAX_PUT_BYTES = 1 << 20
MAX_BLOCK_BYTES = 1 << 20
_PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")
"""The only variables of the server's environment a task process sees (a cluster has its own
environment; nothing of the caller's, tokens included, leaks into it)."""


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class LoopbackRun:
    """One submitted run (one task) and its process."""

    run_id: int
    task_run_id: int
    body: dict[str, Any]
    started_ms: int
    life_cycle_state: str = "PENDING"
    result_state: str | None = None
    state_message: str = ""
    end_ms: int = 0
    returncode: int | None = None
    process: subprocess.Popen[bytes] | None = None
    log_dir: Path | None = None
    cancel_requested: bool = False
    timed_out: bool = False
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def task(self) -> dict[str, Any]:
        return dict(self.body["tasks"][0])

    def stderr_tail(self, limit: int = 4000) -> str:
        if self.log_dir is None:
            return ""
        path = self.log_dir / "stderr"
        try:
            return path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stdout(self) -> str:
        if self.log_dir is None:
            return ""
        with contextlib.suppress(OSError):
            return (self.log_dir / "stdout").read_text(errors="replace")
        return ""


class LoopbackDatabricks(LoopbackHTTPServer):
    """One server on 127.0.0.1 (an ephemeral port) in a background thread.

    Parameters
    ----------
    token
        The personal access token every request must carry (``Authorization: Bearer``).
    dbfs_root
        The local folder standing for DBFS (``dbfs:/a/b`` is ``dbfs_root/a/b``); default a
        temporary folder removed by :meth:`stop`.
    clusters
        Existing (all-purpose) cluster ids that ``existing_cluster_id`` may name.
    max_active_runs, max_run_s
        Bounds: concurrent runs (more are refused with 429) and seconds a run may take before it
        is killed and ends ``TIMEDOUT``.
    python
        The interpreter that runs task files (default: this one).

    Attributes
    ----------
    requests
        ``(method, path)`` of every request, in arrival order.
    submitted
        The body of every accepted ``runs/submit``.
    runs
        Run id -> :class:`LoopbackRun`.
    cancelled
        Run ids that ``runs/cancel`` was called for.
    rejected_tokens
        How many requests carried a wrong or no token.
    forget_on_submit
        Test hook: while true, ``runs/submit`` answers a run id but keeps and runs nothing, so
        the very first ``runs/get`` of that run answers 404 (a run deleted at once).
    """

    def __init__(
        self,
        *,
        token: str = "dapi-loopback-token",
        dbfs_root: str | Path | None = None,
        clusters: tuple[str, ...] = ("0000-000000-loopback",),
        node_types: tuple[str, ...] = NODE_TYPES,
        spark_versions: tuple[str, ...] = SPARK_VERSIONS,
        max_active_runs: int = 4,
        max_run_s: float = 600.0,
        python: str = sys.executable,
    ) -> None:
        super().__init__()
        self.token = token
        self._own_root = dbfs_root is None
        self.dbfs_root = Path(dbfs_root or tempfile.mkdtemp(prefix="mlx-dbfs-")).resolve()
        self.clusters = clusters
        self.node_types = node_types
        self.spark_versions = spark_versions
        self.max_active_runs = max_active_runs
        self.max_run_s = max_run_s
        self.python = python
        self.requests: list[tuple[str, str]] = []
        self.submitted: list[dict[str, Any]] = []
        self.runs: dict[int, LoopbackRun] = {}
        self.cancelled: list[int] = []
        self.rejected_tokens = 0
        self.forget_on_submit = False
        self._handles: dict[int, tuple[Path, Path]] = {}
        self._next_id = 1000
        self._lock = threading.Lock()
        self._work = Path(tempfile.mkdtemp(prefix="mlx-dbx-cluster-"))

    # -- lifecycle ------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop serving, kill every task process still running, remove temporary folders."""
        super().stop()
        for run in list(self.runs.values()):
            _kill(run.process)
        for run in list(self.runs.values()):
            if run.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    run.process.wait(timeout=10)
        shutil.rmtree(self._work, ignore_errors=True)
        if self._own_root:
            shutil.rmtree(self.dbfs_root, ignore_errors=True)

    # -- test hooks -------------------------------------------------------------------------
    def forget_run(self, run_id: int) -> None:
        """Make a run disappear (``runs/get`` answers 404 from now on); its process is killed."""
        with self._lock:
            run = self.runs.pop(run_id, None)
        if run is not None:
            _kill(run.process)

    def wait_for_state(self, predicate: Any, timeout_s: float = 60.0) -> LoopbackRun:
        """Block until some run satisfies ``predicate(run)``; ``TimeoutError`` otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                for run in self.runs.values():
                    if predicate(run):
                        return run
            time.sleep(0.05)
        raise TimeoutError(f"no loopback run reached the expected state in {timeout_s} s")

    def local_path(self, dbfs_path: str) -> Path:
        """The local file standing for ``dbfs:/...`` (or ``/...``)."""
        return self._dbfs(dbfs_path)

    # -- dispatch -----------------------------------------------------------------------------
    def _dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        path = parts.path.rstrip("/")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with self._lock:
            self.requests.append((method, path))
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            if h.headers.get("authorization") != f"Bearer {self.token}":
                with self._lock:
                    self.rejected_tokens += 1
                raise _ApiError(403, "403", "Invalid access token.")
            body = json.loads(raw or b"{}") if method == "POST" else {}
            if not isinstance(body, dict):
                raise _ApiError(400, "MALFORMED_REQUEST", "the request body is not an object")
            route = _ROUTES.get((method, path))
            if route is None:
                raise _ApiError(404, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {path}'")
            answer = route(self, body if method == "POST" else query)
        except _ApiError as exc:
            return _send(h, exc.status, {"error_code": exc.code, "message": exc.message})
        except json.JSONDecodeError:
            return _send(h, 400, {"error_code": "MALFORMED_REQUEST", "message": "invalid JSON"})
        _send(h, 200, answer)

    # -- DBFS -------------------------------------------------------------------------------
    def _dbfs(self, path: Any) -> Path:
        if not isinstance(path, str) or not path:
            raise _ApiError(400, "INVALID_PARAMETER_VALUE", "path is required")
        rel = path.removeprefix("dbfs:")
        if not rel.startswith("/"):
            raise _ApiError(400, "INVALID_PARAMETER_VALUE", f"Path must be absolute: {path}")
        local = (self.dbfs_root / rel.lstrip("/")).resolve()
        if local != self.dbfs_root and self.dbfs_root not in local.parents:
            raise _ApiError(400, "INVALID_PARAMETER_VALUE", f"Path escapes DBFS: {path}")
        return local

    def _status(self, path: str, local: Path) -> dict[str, Any]:
        st = local.stat()
        rel = "/" + str(local.relative_to(self.dbfs_root)).removeprefix(".")
        return {
            "path": rel.rstrip("/") or "/",
            "is_dir": local.is_dir(),
            "file_size": 0 if local.is_dir() else st.st_size,
            "modification_time": int(st.st_mtime * 1000),
        }

    def _missing(self, path: str) -> _ApiError:
        return _ApiError(
            404, "RESOURCE_DOES_NOT_EXIST", f"No file or directory exists on path {path}."
        )

    def dbfs_get_status(self, q: dict[str, Any]) -> dict[str, Any]:
        local = self._dbfs(q.get("path"))
        if not local.exists():
            raise self._missing(q["path"])
        return self._status(q["path"], local)

    def dbfs_list(self, q: dict[str, Any]) -> dict[str, Any]:
        local = self._dbfs(q.get("path"))
        if not local.exists():
            raise self._missing(q["path"])
        if local.is_file():
            return {"files": [self._status(q["path"], local)]}
        return {
            "files": [
                self._status(str(c), c)
                for c in sorted(local.iterdir())
                if not c.name.startswith(".dbx-")
            ]
        }

    def dbfs_mkdirs(self, b: dict[str, Any]) -> dict[str, Any]:
        local = self._dbfs(b.get("path"))
        if local.is_file():
            raise _ApiError(400, "RESOURCE_ALREADY_EXISTS", f"A file exists at {b['path']}")
        local.mkdir(parents=True, exist_ok=True)
        return {}

    def dbfs_delete(self, b: dict[str, Any]) -> dict[str, Any]:
        local = self._dbfs(b.get("path"))
        if local == self.dbfs_root:
            raise _ApiError(400, "INVALID_PARAMETER_VALUE", "refusing to delete the DBFS root")
        if local.is_dir():
            if any(local.iterdir()) and not b.get("recursive"):
                raise _ApiError(
                    400, "IO_ERROR", f"Directory {b['path']} is not empty; use recursive"
                )
            shutil.rmtree(local)
        elif local.exists():
            local.unlink()
        return {}  # deleting what is not there succeeds, as on DBFS

    def _writable(self, path: str, overwrite: bool) -> Path:
        local = self._dbfs(path)
        if local.is_dir():
            raise _ApiError(400, "INVALID_PARAMETER_VALUE", f"{path} is a directory")
        if local.exists() and not overwrite:
            raise _ApiError(
                400, "RESOURCE_ALREADY_EXISTS", f"A file or directory already exists at {path}."
            )
        local.parent.mkdir(parents=True, exist_ok=True)
        return local

    def dbfs_put(self, b: dict[str, Any]) -> dict[str, Any]:
        local = self._writable(b.get("path"), bool(b.get("overwrite")))
        data = _b64(b.get("contents") or "")
        if len(data) > MAX_PUT_BYTES:
            raise _ApiError(
                400, "MAX_BLOCK_SIZE_EXCEEDED", "contents over 1 MB: use create/add-block/close"
            )
        _atomic_write(local, data)
        return {}

    def dbfs_create(self, b: dict[str, Any]) -> dict[str, Any]:
        local = self._writable(b.get("path"), bool(b.get("overwrite")))
        tmp = local.parent / f".dbx-{uuid.uuid4().hex}.part"
        tmp.write_bytes(b"")
        with self._lock:
            self._next_id += 1
            handle = self._next_id
            self._handles[handle] = (tmp, local)
        return {"handle": handle}

    def _handle(self, b: dict[str, Any]) -> tuple[Path, Path]:
        with self._lock:
            entry = self._handles.get(b.get("handle"))  # type: ignore[arg-type]
        if entry is None:
            raise _ApiError(
                404, "RESOURCE_DOES_NOT_EXIST", f"No file handle {b.get('handle')} is open"
            )
        return entry

    def dbfs_add_block(self, b: dict[str, Any]) -> dict[str, Any]:
        tmp, _ = self._handle(b)
        data = _b64(b.get("data") or "")
        if len(data) > MAX_BLOCK_BYTES:
            raise _ApiError(400, "MAX_BLOCK_SIZE_EXCEEDED", "block over 1 MB")
        with open(tmp, "ab") as f:
            f.write(data)
        return {}

    def dbfs_close(self, b: dict[str, Any]) -> dict[str, Any]:
        tmp, final = self._handle(b)
        with self._lock:
            self._handles.pop(b["handle"], None)
        os.replace(tmp, final)  # visible whole, or not at all
        return {}

    def dbfs_read(self, q: dict[str, Any]) -> dict[str, Any]:
        local = self._dbfs(q.get("path"))
        if not local.exists():
            raise self._missing(q["path"])
        if local.is_dir():
            raise _ApiError(400, "INVALID_PARAMETER_VALUE", f"{q['path']} is a directory")
        offset = int(q.get("offset") or 0)
        length = min(int(q.get("length") or MAX_BLOCK_BYTES), MAX_BLOCK_BYTES)
        with open(local, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        return {"bytes_read": len(data), "data": base64.b64encode(data).decode()}

    # -- identity, clusters -------------------------------------------------------------------
    def me(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"id": "1", "userName": "loopback@example.com", "active": True}

    def cluster_get(self, q: dict[str, Any]) -> dict[str, Any]:
        cluster_id = q.get("cluster_id")
        if cluster_id not in self.clusters:
            raise _ApiError(400, "INVALID_PARAMETER_VALUE", f"Cluster {cluster_id} does not exist")
        return {
            "cluster_id": cluster_id,
            "cluster_name": "loopback",
            "state": "RUNNING",
            "spark_version": "15.4.x-cpu-ml-scala2.12",
            "node_type_id": "loopback",
            "num_workers": 0,
        }

    def list_node_types(self, _: dict[str, Any]) -> dict[str, Any]:
        return {
            "node_types": [
                {
                    "node_type_id": n,
                    "memory_mb": 32768,
                    "num_cores": 4.0,
                    "num_gpus": 1 if n.startswith(("g5", "p3")) else 0,
                    "description": n,
                    "instance_type_id": n,
                    "category": "GPU Accelerated" if n.startswith(("g5", "p3")) else "General",
                }
                for n in self.node_types
            ]
        }

    def list_spark_versions(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"versions": [{"key": v, "name": v} for v in self.spark_versions]}

    # -- jobs ---------------------------------------------------------------------------------
    def _validate_task(self, task: Any) -> dict[str, Any]:
        if not isinstance(task, dict) or not task.get("task_key"):
            raise _ApiError(400, "INVALID_PARAMETER_VALUE", "Each task must have a task_key")
        py = task.get("spark_python_task")
        if not isinstance(py, dict) or not py.get("python_file"):
            raise _ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                "The loopback server runs spark_python_task tasks with a python_file only",
            )
        params = py.get("parameters") or []
        if not all(isinstance(p, str) for p in params):
            raise _ApiError(400, "INVALID_PARAMETER_VALUE", "parameters must be strings")
        has_new, has_existing = "new_cluster" in task, "existing_cluster_id" in task
        if has_new == has_existing:
            raise _ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                "Exactly one of new_cluster or existing_cluster_id must be specified",
            )
        if has_existing and task["existing_cluster_id"] not in self.clusters:
            raise _ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                f"Cluster {task['existing_cluster_id']} does not exist",
            )
        if has_new:
            nc = task["new_cluster"]
            for key in ("spark_version", "node_type_id"):
                if not isinstance(nc, dict) or not nc.get(key):
                    raise _ApiError(
                        400, "INVALID_PARAMETER_VALUE", f"new_cluster.{key} is required"
                    )
            if "num_workers" not in nc and "autoscale" not in nc:
                raise _ApiError(
                    400,
                    "INVALID_PARAMETER_VALUE",
                    "new_cluster needs num_workers or autoscale",
                )
        file = self._dbfs(py["python_file"]) if py["python_file"].startswith("dbfs:") else None
        if file is None or not file.is_file():
            raise _ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                f"python_file {py['python_file']} does not exist (the loopback server reads "
                "dbfs:/ files)",
            )
        return task

    def runs_submit(self, b: dict[str, Any]) -> dict[str, Any]:
        tasks = b.get("tasks")
        if not isinstance(tasks, list) or len(tasks) != 1:
            raise _ApiError(
                400, "INVALID_PARAMETER_VALUE", "The loopback server runs exactly one task"
            )
        task = self._validate_task(tasks[0])
        with self._lock:
            active = sum(
                1 for r in self.runs.values() if r.life_cycle_state in ("PENDING", "RUNNING")
            )
            if active >= self.max_active_runs:
                raise _ApiError(
                    429,
                    "RESOURCE_EXHAUSTED",
                    f"Too many active runs ({active}); the limit is {self.max_active_runs}",
                )
            self._next_id += 2
            run = LoopbackRun(
                run_id=self._next_id - 1,
                task_run_id=self._next_id,
                body=b,
                started_ms=int(time.time() * 1000),
            )
            self.submitted.append(b)
            if self.forget_on_submit:
                return {"run_id": run.run_id}
            self.runs[run.run_id] = run
        threading.Thread(
            target=self._execute, args=(run, task), daemon=True, name=f"dbx-run-{run.run_id}"
        ).start()
        return {"run_id": run.run_id}

    def _execute(self, run: LoopbackRun, task: dict[str, Any]) -> None:
        from mlx_plugins.kernel.process_identity import with_parent_death

        py = task["spark_python_task"]
        workdir = self._work / str(run.run_id)
        run.log_dir = workdir / "driver"
        run.log_dir.mkdir(parents=True)
        env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
        env.update((task.get("new_cluster") or {}).get("spark_env_vars") or {})
        env[FUSE_ROOT_ENV] = str(self.dbfs_root)
        env["DATABRICKS_RUNTIME_VERSION"] = "loopback"
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        run.argv = [str(self._dbfs(py["python_file"])), *(py.get("parameters") or [])]
        run.env = env
        limit = min(float(run.body.get("timeout_seconds") or self.max_run_s), self.max_run_s)
        with open(run.log_dir / "stdout", "wb") as out, open(run.log_dir / "stderr", "wb") as err:
            with self._lock:
                if run.cancel_requested:
                    self._finish(run, "CANCELED", "Run cancelled.")
                    return
                run.process = subprocess.Popen(
                    with_parent_death([self.python, *run.argv]),
                    cwd=workdir,
                    env=env,
                    stdout=out,
                    stderr=err,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
                run.life_cycle_state = "RUNNING"
                run.state_message = "In run"
            try:
                run.returncode = run.process.wait(timeout=limit or None)
            except subprocess.TimeoutExpired:
                run.timed_out = True
                _kill(run.process)
                run.returncode = run.process.wait()
        with self._lock:
            run.life_cycle_state = "TERMINATING"
        if run.cancel_requested:
            self._finish(run, "CANCELED", "Run cancelled.")
        elif run.timed_out:
            self._finish(run, "TIMEDOUT", f"Run timed out after {limit:g} seconds.")
        elif run.returncode == 0:
            self._finish(run, "SUCCESS", "")
        else:
            last = _last_line(run.stderr_tail())
            self._finish(
                run,
                "FAILED",
                f"Task {task['task_key']} failed with message: "
                f"{last.rstrip('.') or f'exit code {run.returncode}'}. "
                "This caused all downstream tasks to get skipped.",
            )

    def _finish(self, run: LoopbackRun, result: str, message: str) -> None:
        with self._lock:
            run.life_cycle_state = "TERMINATED"
            run.result_state = result
            run.state_message = message
            run.end_ms = int(time.time() * 1000)

    def _run(self, q: dict[str, Any], key: str = "run_id") -> LoopbackRun:
        try:
            run_id = int(q.get(key))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise _ApiError(400, "INVALID_PARAMETER_VALUE", f"{key} must be an integer") from None
        with self._lock:
            run = self.runs.get(run_id) or next(
                (r for r in self.runs.values() if r.task_run_id == run_id), None
            )
        if run is None:
            raise _ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Run {run_id} does not exist.")
        return run

    def _state(self, run: LoopbackRun) -> dict[str, Any]:
        state: dict[str, Any] = {
            "life_cycle_state": run.life_cycle_state,
            "state_message": run.state_message,
            "user_cancelled_or_timedout": run.cancel_requested or run.timed_out,
        }
        if run.result_state is not None:
            state["result_state"] = run.result_state
        return state

    def _run_json(self, run: LoopbackRun) -> dict[str, Any]:
        task = run.task
        state = self._state(run)
        task_json = {
            **{k: v for k, v in task.items() if k not in ("libraries",)},
            "run_id": run.task_run_id,
            "state": state,
            "start_time": run.started_ms,
            "end_time": run.end_ms,
            "attempt_number": 0,
        }
        if "existing_cluster_id" in task:
            task_json["cluster_instance"] = {"cluster_id": task["existing_cluster_id"]}
        return {
            "job_id": 0,
            "run_id": run.run_id,
            "number_in_job": run.run_id,
            "run_name": run.body.get("run_name") or "Untitled",
            "run_type": "SUBMIT_RUN",
            "state": state,
            "start_time": run.started_ms,
            "end_time": run.end_ms,
            "run_page_url": f"{self.url}/?o=0#job/0/run/{run.run_id}",
            "tasks": [task_json],
            "creator_user_name": "loopback@example.com",
        }

    def runs_get(self, q: dict[str, Any]) -> dict[str, Any]:
        run = self._run(q)
        with self._lock:
            return self._run_json(run)

    def runs_get_output(self, q: dict[str, Any]) -> dict[str, Any]:
        run = self._run(q)
        if str(run.run_id) == str(q.get("run_id")):
            raise _ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                "Retrieving the output of runs with multiple tasks is not supported; "
                "ask for the task run (tasks[].run_id)",
            )
        with self._lock:
            out: dict[str, Any] = {"metadata": self._run_json(run)["tasks"][0]}
        tail = run.stderr_tail()
        if run.result_state == "FAILED":
            out["error"] = _last_line(tail)
            out["error_trace"] = tail
        out["logs"] = run.stdout()[-5000:]
        out["logs_truncated"] = len(run.stdout()) > 5000
        return out

    def runs_cancel(self, b: dict[str, Any]) -> dict[str, Any]:
        run = self._run(b)
        with self._lock:
            self.cancelled.append(run.run_id)
            if run.life_cycle_state in ("TERMINATED", "TERMINATING"):
                return {}
            run.cancel_requested = True
            run.life_cycle_state = "TERMINATING"
            run.state_message = "Run cancellation requested."
            process = run.process
        _kill(process)
        return {}


_ROUTES: dict[tuple[str, str], Any] = {
    ("GET", "/api/2.0/dbfs/get-status"): LoopbackDatabricks.dbfs_get_status,
    ("GET", "/api/2.0/dbfs/list"): LoopbackDatabricks.dbfs_list,
    ("GET", "/api/2.0/dbfs/read"): LoopbackDatabricks.dbfs_read,
    ("POST", "/api/2.0/dbfs/mkdirs"): LoopbackDatabricks.dbfs_mkdirs,
    ("POST", "/api/2.0/dbfs/delete"): LoopbackDatabricks.dbfs_delete,
    ("POST", "/api/2.0/dbfs/put"): LoopbackDatabricks.dbfs_put,
    ("POST", "/api/2.0/dbfs/create"): LoopbackDatabricks.dbfs_create,
    ("POST", "/api/2.0/dbfs/add-block"): LoopbackDatabricks.dbfs_add_block,
    ("POST", "/api/2.0/dbfs/close"): LoopbackDatabricks.dbfs_close,
    ("GET", "/api/2.0/preview/scim/v2/Me"): LoopbackDatabricks.me,
    # Jobs 2.1 and 2.2 (databricks-sdk 0.60 calls 2.2), clusters 2.0 and 2.1: the same shapes
    **{("GET", f"/api/{v}/clusters/get"): LoopbackDatabricks.cluster_get for v in ("2.0", "2.1")},
    **{
        ("GET", f"/api/{v}/clusters/list-node-types"): LoopbackDatabricks.list_node_types
        for v in ("2.0", "2.1")
    },
    **{
        ("GET", f"/api/{v}/clusters/spark-versions"): LoopbackDatabricks.list_spark_versions
        for v in ("2.0", "2.1")
    },
    **{
        route: handler
        for v in ("2.1", "2.2")
        for route, handler in (
            (("POST", f"/api/{v}/jobs/runs/submit"), LoopbackDatabricks.runs_submit),
            (("GET", f"/api/{v}/jobs/runs/get"), LoopbackDatabricks.runs_get),
            (("GET", f"/api/{v}/jobs/runs/get-output"), LoopbackDatabricks.runs_get_output),
            (("POST", f"/api/{v}/jobs/runs/cancel"), LoopbackDatabricks.runs_cancel),
        )
    },
}


def _send(h: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    try:
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):  # the client gave up; nothing to answer
        pass


def _b64(text: Any) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise _ApiError(400, "INVALID_PARAMETER_VALUE", "data is not valid base64") from None


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.parent / f".dbx-{uuid.uuid4().hex}.part"
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _kill(process: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL the task's process group (the task and everything it started)."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
