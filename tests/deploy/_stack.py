"""A production-shaped Dagster stack on loopback, for the hot-swap test and benchmark.

``dagster code-server start`` serves the code location (as the Helm chart's user deployment
does), ``dagster-webserver`` and ``dagster-daemon`` reach it through a ``grpc_server``
workspace entry, and all three use one instance (deploy/dagster.prod.yaml on PostgreSQL with the
local run launcher). Every process runs in its own session and is ended, group and all, by
:meth:`Stack.close`.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.deploy.conftest import BIN, free_port, start, stop

LOCATION = "mlx"
REPOSITORY = "__repository__"

WORKSPACE_STATUS = """
{ workspaceOrError { __typename
    ... on Workspace { locationEntries { name loadStatus
      locationOrLoadError { __typename ... on PythonError { message } } } }
    ... on PythonError { message } } }
"""
LAUNCH = """
mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
  ... on LaunchRunSuccess { run { runId } }
  ... on PythonError { message }
  ... on InvalidSubsetError { message }
  ... on RunConfigValidationInvalid { errors { message } } } }
"""


class GraphQLError(RuntimeError):
    """An HTTP error or a GraphQL ``errors`` answer."""


def post(port: int, query: str, variables: dict[str, Any] | None = None, timeout_s: float = 60):
    """The ``data`` of a GraphQL answer from the webserver on ``port``; GraphQLError otherwise."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:2000]
        raise GraphQLError(f"HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise GraphQLError(f"{type(exc).__name__}: {exc}") from None
    if answer.get("errors"):
        raise GraphQLError(json.dumps(answer["errors"])[:2000])
    return answer["data"]


@dataclass
class Stack:
    env: dict[str, str]
    folder: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    web_port: int = 0
    code_port: int = 0

    def start(self, timeout_s: float = 300) -> Stack:
        """Start the three processes and wait until the location is served; on failure, end
        whatever was started and raise RuntimeError with the processes' logs."""
        try:
            return self._start(timeout_s)
        except BaseException:
            self.close()
            raise

    def _start(self, timeout_s: float) -> Stack:
        self.code_port, self.web_port = free_port(), free_port()
        workspace = self.folder / "workspace.yaml"
        workspace.write_text(
            "load_from:\n"
            f"  - grpc_server: {{host: 127.0.0.1, port: {self.code_port}, "
            f"location_name: {LOCATION}}}\n"
        )
        self.procs["code-server"] = start(
            [
                BIN / "dagster",
                "code-server",
                "start",
                "-m",
                "mlx_assets.definitions",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.code_port),
                "--location-name",
                LOCATION,
            ],
            self.env,
            self.folder / "code-server.log",
        )
        self.procs["webserver"] = start(
            [BIN / "dagster-webserver", "-w", workspace, "-h", "127.0.0.1", "-p", self.web_port],
            self.env,
            self.folder / "webserver.log",
        )
        self.procs["daemon"] = start(
            [BIN / "dagster-daemon", "run", "-w", workspace],
            self.env,
            self.folder / "daemon.log",
        )
        deadline = time.monotonic() + timeout_s
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited at start-up:\n{self.log(name)[-3000:]}")
            try:
                if self.location_status() == ("LOADED", "RepositoryLocation"):
                    return self
            except GraphQLError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"code location not served after {timeout_s:.0f}s:\n"
                    + "\n".join(f"--- {n}\n{self.log(n)[-2000:]}" for n in self.procs)
                )
            time.sleep(0.5)

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def post(self, query: str, variables: dict[str, Any] | None = None, timeout_s: float = 60):
        return post(self.web_port, query, variables, timeout_s)

    def location_status(self) -> tuple[str, str]:
        """(loadStatus, typename of locationOrLoadError) of the code location."""
        data = self.post(WORKSPACE_STATUS)["workspaceOrError"]
        if data["__typename"] != "Workspace":
            raise GraphQLError(str(data))
        (entry,) = data["locationEntries"]
        loaded = entry["locationOrLoadError"] or {"__typename": "None"}
        return entry["loadStatus"], loaded["__typename"]

    def code_version(self, asset: str) -> str:
        key = json.dumps(asset)
        query = f"{{ assetNodes(assetKeys: [{{path: [{key}]}}]) {{ opVersion }} }}"
        (node,) = self.post(query)["assetNodes"]
        return str(node["opVersion"])

    def launch(self, job: str, tags: dict[str, str] | None = None) -> str:
        """Launch ``job`` through the webserver (queued, then started by the daemon)."""
        params = {
            "selector": {
                "repositoryLocationName": LOCATION,
                "repositoryName": REPOSITORY,
                "jobName": job,
            },
            "runConfigData": {},
            "executionMetadata": {
                "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]
            },
        }
        out = self.post(LAUNCH, {"p": params})["launchRun"]
        if out["__typename"] != "LaunchRunSuccess":
            raise GraphQLError(f"launchRun({job}) answered {out}")
        return str(out["run"]["runId"])

    def close(self) -> None:
        for name in ("daemon", "webserver", "code-server"):
            proc = self.procs.get(name)
            if proc is not None:
                stop(proc)


def range_tags(first: str, last: str) -> dict[str, str]:
    return {
        "dagster/asset_partition_range_start": first,
        "dagster/asset_partition_range_end": last,
    }
