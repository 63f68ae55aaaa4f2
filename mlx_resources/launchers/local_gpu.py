"""Run launcher for one host with several GPUs and no Kubernetes.

Every run gets its own process tree, started by this launcher (in the daemon or webserver,
whichever launches runs): a small supervisor (``gpu_worker.py``) that leases the run's GPUs
and then starts ``dagster api execute_run`` with ``CUDA_VISIBLE_DEVICES`` pointing at them.
GPU runs that find no free GPU stay STARTING with a "waiting for GPU" log line until one is
released; a GPU is released when its run ends, fails, is canceled or its processes die.

CPU-only runs go through the same path without leasing anything, and by default see no GPU
(``CUDA_VISIBLE_DEVICES=""``) so they cannot grab memory on a GPU another run leased.

Configure in ``dagster.yaml``::

    run_launcher:
      module: mlx_resources.launchers.local_gpu
      class: LocalGpuRunLauncher
      config:
        gpus: [0, 1]          # omit to auto-detect
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster import Array, Bool, Field, Float, Noneable, StringSource
from dagster import _check as check
from dagster._core.launcher import LaunchRunContext, RunLauncher
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus
from dagster._core.origin import get_python_environment_entry_point
from dagster._core.storage.dagster_run import DagsterRun
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, ConfigurableClassData, serialize_value
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic import Field as PydanticField

from mlx_resources.launchers import gpu_worker
from mlx_resources.launchers.gpu_requirements import (
    GpuRequest,
    describe_steps,
    gpu_request_for_run,
    gpu_steps_for_run,
)
from mlx_resources.launchers.gpu_worker import GpuLeases, WorkerSpec

PID_TAG = "mlx/run-supervisor-pid"
HOST_TAG = "mlx/run-supervisor-host"
MEMORY_FRACTION_ENV = "MLX_GPU_MEMORY_FRACTION"
MEMORY_GB_ENV = "MLX_GPU_MEMORY_GB"
GPU_COUNT_ENV = "MLX_GPU_COUNT"
NVIDIA_SMI_TIMEOUT_SECONDS = 20
TORCH_PROBE_TIMEOUT_SECONDS = 120


class LocalGpuLaunchError(RuntimeError):
    """A GPU run cannot be placed on this host; the message names the run and the fix."""


class LocalGpuLauncherConfig(BaseModel):
    """``run_launcher.config`` of :class:`LocalGpuRunLauncher`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # GPU ids handed out via CUDA_VISIBLE_DEVICES; None = auto-detect on first GPU run.
    gpus: list[str] | None = None
    # No GPU on the host: fail GPU runs (True) or run them on CPU with a log line (False).
    require_gpu: bool = False
    # Host-wide directory of GPU lock files; default <DAGSTER_HOME>/mlx_gpu_leases.
    lease_dir: str | None = None
    poll_interval_seconds: float = PydanticField(default=2.0, gt=0)
    wait_log_interval_seconds: float = PydanticField(default=60.0, gt=0)
    # Device memory of one GPU (GB); default: from nvidia-smi when available.
    gpu_memory_gb: float | None = PydanticField(default=None, gt=0)
    # MLX_GPU_MEMORY_FRACTION for GPU runs that don't set mlx/gpu-memory-gb (None: unset).
    default_memory_fraction: float | None = PydanticField(default=None, gt=0, le=1)
    # The GPU model of this host; runs asking for another mlx/gpu-type fail clearly.
    gpu_type: str | None = None
    hide_gpus_from_cpu_runs: bool = True

    @field_validator("gpus", mode="before")
    @classmethod
    def _ids_as_strings(cls, gpus: Any) -> Any:
        if gpus is None:
            return None
        ids = [str(gpu).strip() for gpu in gpus]
        if any(not gpu or "," in gpu for gpu in ids) or len(set(ids)) != len(ids):
            raise ValueError(f"gpus must be distinct, non-empty GPU ids, got {gpus!r}")
        return ids

    @field_validator("gpu_type")
    @classmethod
    def _lower(cls, gpu_type: str | None) -> str | None:
        return gpu_type.strip().lower() if gpu_type else None


class GpuInventory(BaseModel):
    model_config = ConfigDict(frozen=True)

    gpu_ids: list[str]
    memory_gb: float | None = None
    source: str


def _nvidia_smi() -> GpuInventory | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_SECONDS,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    ids: list[str] = []
    memories: list[float] = []
    for line in out.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) >= 1 and parts[0]:
            ids.append(parts[0])
            with contextlib.suppress(ValueError, IndexError):
                memories.append(float(parts[1]) / 1024)  # MiB -> GiB
    memory = min(memories) if memories and len(memories) == len(ids) else None
    return GpuInventory(gpu_ids=ids, memory_gb=memory, source="nvidia-smi")


def _torch_device_count() -> GpuInventory | None:
    """Ask torch in a child process: importing torch/CUDA in the daemon itself is too costly."""
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        out = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
            capture_output=True,
            text=True,
            timeout=TORCH_PROBE_TIMEOUT_SECONDS,
            check=True,
        ).stdout
        count = int(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return GpuInventory(gpu_ids=[str(i) for i in range(count)], source="torch")


def detect_gpus() -> GpuInventory:
    """GPUs this host offers: the launcher's own CUDA_VISIBLE_DEVICES, nvidia-smi, then torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [gpu.strip() for gpu in visible.split(",") if gpu.strip()]
        if ids == ["-1"]:
            ids = []
        smi = _nvidia_smi()
        memory = smi.memory_gb if smi else None
        return GpuInventory(gpu_ids=ids, memory_gb=memory, source="CUDA_VISIBLE_DEVICES")
    return _nvidia_smi() or _torch_device_count() or GpuInventory(gpu_ids=[], source="none found")


def _is_our_process(pid: int, run_id: str) -> bool:
    """Is ``pid`` alive and still the supervisor of ``run_id`` (not a recycled pid)?"""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.parent.exists():
        try:
            return run_id.encode() in cmdline.read_bytes()
        except OSError:
            return False
    try:  # no /proc (macOS): liveness only
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_worker_alive(run_id: str) -> bool:
    """Is a ``dagster api execute_run`` process for ``run_id`` still running on this host?

    Used when the supervisor is gone: its run worker may legitimately outlive it. Linux only
    (scans /proc); elsewhere the answer is False.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return False
    needle = run_id.encode()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"execute_run" in cmdline and needle in cmdline:
            return True
    return False


class LocalGpuRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run as a local process tree, leasing GPUs to runs that need them."""

    def __init__(self, inst_data: ConfigurableClassData | None = None, **config: Any):
        self._inst_data = inst_data
        try:
            self.config = LocalGpuLauncherConfig.model_validate(config)
        except ValidationError as exc:
            raise LocalGpuLaunchError(
                f"Invalid config for LocalGpuRunLauncher (run_launcher.config in dagster.yaml): "
                f"{exc}"
            ) from None
        self._inventory: GpuInventory | None = None
        self._lock = threading.Lock()
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        super().__init__()

    # -- ConfigurableClass ----------------------------------------------------------------------

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {
            "gpus": Field(
                Noneable(Array(Any)),
                is_required=False,
                description="GPU ids to hand out, e.g. [0, 1]. Omit to auto-detect.",
            ),
            "require_gpu": Field(Bool, is_required=False, default_value=False),
            "lease_dir": Field(Noneable(StringSource), is_required=False),
            "poll_interval_seconds": Field(Float, is_required=False, default_value=2.0),
            "wait_log_interval_seconds": Field(Float, is_required=False, default_value=60.0),
            "gpu_memory_gb": Field(Noneable(Float), is_required=False),
            "default_memory_fraction": Field(Noneable(Float), is_required=False),
            "gpu_type": Field(Noneable(StringSource), is_required=False),
            "hide_gpus_from_cpu_runs": Field(Bool, is_required=False, default_value=True),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> LocalGpuRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    # -- inventory ------------------------------------------------------------------------------

    def inventory(self) -> GpuInventory:
        with self._lock:
            if self._inventory is None:
                if self.config.gpus is not None:
                    detected = None if self.config.gpu_memory_gb else _nvidia_smi()
                    self._inventory = GpuInventory(
                        gpu_ids=list(self.config.gpus),
                        memory_gb=detected.memory_gb if detected else None,
                        source="run_launcher config",
                    )
                else:
                    self._inventory = detect_gpus()
            return self._inventory

    @property
    def lease_dir(self) -> Path:
        if self.config.lease_dir:
            return Path(self.config.lease_dir)
        return Path(self._instance.root_directory) / "mlx_gpu_leases"

    def gpu_status(self) -> dict[str, dict[str, Any] | None]:
        """Which run holds each GPU right now (``None`` = free)."""
        return GpuLeases(self.lease_dir, self.inventory().gpu_ids).status()

    # -- launching ------------------------------------------------------------------------------

    def _report(self, run: DagsterRun, message: str) -> None:
        self._instance.report_engine_event(message, run, cls=self.__class__)

    def _gpu_env(self, run: DagsterRun, request: GpuRequest, inventory: GpuInventory) -> dict:
        env = {GPU_COUNT_ENV: str(request.gpus)}
        total = self.config.gpu_memory_gb or inventory.memory_gb
        if request.memory_gb is not None:
            env[MEMORY_GB_ENV] = f"{request.memory_gb:g}"
            if total:
                if request.memory_gb > total:
                    raise LocalGpuLaunchError(
                        f"Run {run.run_id}: mlx/gpu-memory-gb={request.memory_gb:g} but this "
                        f"host's GPUs have {total:g} GB. Fix: lower mlx/gpu-memory-gb or run it "
                        "on a host with larger GPUs."
                    )
                env[MEMORY_FRACTION_ENV] = f"{request.memory_gb / total:.4f}"
        elif self.config.default_memory_fraction is not None:
            env[MEMORY_FRACTION_ENV] = f"{self.config.default_memory_fraction:.4f}"
        return env

    def _placement(
        self, run: DagsterRun, request: GpuRequest
    ) -> tuple[int, list[str], dict[str, str]]:
        """(gpus to lease, inventory, env) for a GPU run; (0, [], env) when it falls back to CPU."""
        inventory = self.inventory()
        steps = describe_steps(gpu_steps_for_run(self._instance, run)) or "run tags"
        if not inventory.gpu_ids:
            if self.config.require_gpu:
                raise LocalGpuLaunchError(
                    f"Run {run.run_id} needs {request.gpus} GPU(s) (steps: {steps}) but this "
                    f"host has none ({inventory.source}) and require_gpu is true. Fix: run it on "
                    "a GPU host, list the GPUs under run_launcher.config.gpus, or set "
                    "require_gpu: false to fall back to CPU."
                )
            self._report(
                run,
                f"No GPU on this host ({inventory.source}): running GPU steps ({steps}) on CPU. "
                "Set require_gpu: true in the run launcher config to fail instead.",
            )
            return 0, [], {"CUDA_VISIBLE_DEVICES": "", GPU_COUNT_ENV: "0"}
        if request.gpus > len(inventory.gpu_ids):
            raise LocalGpuLaunchError(
                f"Run {run.run_id} needs {request.gpus} GPU(s) (steps: {steps}) but this host "
                f"has {len(inventory.gpu_ids)} ({', '.join(inventory.gpu_ids)}), so it could "
                "never start. Fix: lower mlx/gpu or run it where more GPUs are available."
            )
        if request.gpu_type and self.config.gpu_type and request.gpu_type != self.config.gpu_type:
            raise LocalGpuLaunchError(
                f"Run {run.run_id} asks for GPU type '{request.gpu_type}' (mlx/gpu-type, steps: "
                f"{steps}) but this host has '{self.config.gpu_type}'. Fix: change mlx/gpu-type "
                "or launch it where that GPU type exists."
            )
        return request.gpus, inventory.gpu_ids, self._gpu_env(run, request, inventory)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        job_origin = check.not_none(
            run.job_code_origin,
            f"Run {run.run_id} has no python origin; LocalGpuRunLauncher starts runs from "
            "their code location's Python environment.",
        )
        args = ExecuteRunArgs(
            job_origin=job_origin, run_id=run.run_id, instance_ref=self._instance.get_ref()
        )
        # `python -m dagster` from the code location's interpreter: a `dagster` script need not
        # be on PATH (it was not on the GPU host where this was first run).
        command = [
            *get_python_environment_entry_point(job_origin.executable_path),
            "api",
            "execute_run",
            serialize_value(args),
        ]

        request = gpu_request_for_run(self._instance, run)
        if request is None:
            gpus, gpu_ids = 0, []
            env = {"CUDA_VISIBLE_DEVICES": ""} if self.config.hide_gpus_from_cpu_runs else {}
        else:
            gpus, gpu_ids, env = self._placement(run, request)

        spec = WorkerSpec(
            run_id=run.run_id,
            instance_ref=serialize_value(self._instance.get_ref()),
            command=list(command),
            gpus=gpus,
            gpu_ids=gpu_ids,
            lease_dir=str(self.lease_dir),
            env=env,
            poll_interval_seconds=self.config.poll_interval_seconds,
            wait_log_interval_seconds=self.config.wait_log_interval_seconds,
        )
        spec_dir = self.lease_dir / "specs"
        spec_dir.mkdir(parents=True, exist_ok=True)
        spec_path = spec_dir / f"{run.run_id}.json"
        # 0600: the instance ref may carry storage credentials. Unique temp + atomic rename.
        from mlx_resources.atomic import atomic_write_text

        atomic_write_text(spec_path, spec.model_dump_json(), perms=0o600)

        process = subprocess.Popen(
            [job_origin.executable_path, gpu_worker.__file__, str(spec_path)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives daemon restarts; not hit by its Ctrl-C
        )
        # Reap it when it ends so a long-lived daemon doesn't collect zombies.
        threading.Thread(target=process.wait, daemon=True, name=f"reap-{process.pid}").start()
        self._processes = {k: p for k, p in self._processes.items() if p.poll() is None}
        self._processes[run.run_id] = process
        self._instance.add_run_tags(
            run.run_id, {PID_TAG: str(process.pid), HOST_TAG: socket.gethostname()}
        )
        what = f"{gpus} GPU(s)" if gpus else "no GPU"
        self._report(run, f"Started run supervisor (pid {process.pid}) with {what}.")

    # -- termination and health -----------------------------------------------------------------

    def _local_pid(self, run: DagsterRun) -> int | None:
        pid = run.tags.get(PID_TAG)
        if not pid or run.tags.get(HOST_TAG) != socket.gethostname():
            return None
        return int(pid)

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if not run or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        pid = self._local_pid(run)
        if pid is None:
            self._report(
                run,
                f"Cannot signal the run's process: it was started on host "
                f"{run.tags.get(HOST_TAG, '?')}, not {socket.gethostname()}.",
            )
            return False
        if not _is_our_process(pid, run_id):
            self._report(run, f"Run supervisor (pid {pid}) is no longer running.")
            return False
        os.kill(pid, signal.SIGTERM)
        self._report(run, f"Sent SIGTERM to run supervisor (pid {pid}).")
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        pid = self._local_pid(run)
        if pid is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "run started on another host")
        if _is_our_process(pid, run.run_id) or _run_worker_alive(run.run_id):
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        if run.is_finished:
            return CheckRunHealthResult(WorkerStatus.SUCCESS)
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"Run supervisor (pid {pid}) and its run worker exited before the run finished.",
        )

    def join(self, timeout: float = 30) -> None:
        """Wait for the run processes this launcher started (tests, orderly shutdown)."""
        for run_id, process in list(self._processes.items()):
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise TimeoutError(
                    f"run {run_id}'s supervisor (pid {process.pid}) still running after {timeout}s"
                ) from None
            self._processes.pop(run_id, None)
