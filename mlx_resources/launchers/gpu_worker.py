"""Run supervisor for :class:`~mlx_resources.launchers.local_gpu.LocalGpuRunLauncher`.

The launcher starts ``python gpu_worker.py <spec.json>`` for every run; this process then

1. leases the GPUs the run needs: one lock file per GPU under the lease directory, taken with
   ``fcntl.flock``. While none is free the run stays STARTING and the supervisor logs a
   "waiting for GPU" engine event to the run (not a failure). The kernel drops a flock when its
   holder dies, so a crashed run can never leak a GPU;
2. starts the real run worker (``dagster api execute_run``) in its own process group with
   ``CUDA_VISIBLE_DEVICES`` set to the leased GPUs, forwarding SIGTERM/SIGINT to it;
3. when the run worker exits, kills what is left of its process group (orphaned step
   processes would otherwise keep using the GPU), marks the run failed/canceled if the worker
   died without finishing it, and only then releases the GPUs by exiting.

The lock descriptors are also handed to the run worker, so the GPUs stay leased even if this
supervisor itself is killed while the run goes on.

This file is executed by path, so it imports nothing from ``mlx_resources`` (the run's Python
need not have the package on ``sys.path``); dagster is imported only when something must be
reported to the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

ASSIGNED_GPUS_TAG = "mlx/assigned-gpus"
GROUP_KILL_GRACE_SECONDS = 10.0


class WorkerSpec(BaseModel):
    """What the launcher hands the supervisor; a 0600 file, as it holds the instance ref."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    instance_ref: str  # serialized dagster InstanceRef
    command: list[str] = Field(min_length=1)
    gpus: int = Field(ge=0)
    gpu_ids: list[str] = []
    lease_dir: str
    env: dict[str, str] = {}
    poll_interval_seconds: float = Field(default=2.0, gt=0)
    wait_log_interval_seconds: float = Field(default=60.0, gt=0)


def _lock_file_name(gpu_id: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", gpu_id) + ".lock"


class GpuLeases:
    """One flock-ed lock file per GPU under ``lease_dir``."""

    def __init__(self, lease_dir: str | os.PathLike[str], gpu_ids: list[str]):
        self.lease_dir = Path(lease_dir)
        self.gpu_ids = list(gpu_ids)

    def _path(self, gpu_id: str) -> Path:
        return self.lease_dir / _lock_file_name(gpu_id)

    def _open(self, gpu_id: str) -> int:
        self.lease_dir.mkdir(parents=True, exist_ok=True)
        return os.open(self._path(gpu_id), os.O_RDWR | os.O_CREAT, 0o644)

    def try_acquire(self, count: int, holder: dict[str, Any]) -> dict[str, int] | None:
        """Lease ``count`` free GPUs (lowest ids first) or none at all: ``{gpu_id: fd}``.

        All-or-nothing so multi-GPU runs never sit on a partial set (no hold-and-wait deadlock).
        """
        held: dict[str, int] = {}
        for gpu_id in self.gpu_ids:
            if len(held) == count:
                break
            fd = self._open(gpu_id)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            held[gpu_id] = fd
        if len(held) < count:
            self.release(held)
            return None
        for fd in held.values():
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        return held

    @staticmethod
    def release(held: dict[str, int]) -> None:
        for fd in held.values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def status(self) -> dict[str, dict[str, Any] | None]:
        """``{gpu_id: holder-info or None if free}``, probing each lock without keeping it."""
        result: dict[str, dict[str, Any] | None] = {}
        for gpu_id in self.gpu_ids:
            fd = self._open(gpu_id)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                result[gpu_id] = None
            except BlockingIOError:
                try:
                    result[gpu_id] = json.loads(os.pread(fd, 4096, 0) or b"{}")
                except ValueError:
                    result[gpu_id] = {}
            finally:
                os.close(fd)
        return result


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class Supervisor:
    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.leases = GpuLeases(spec.lease_dir, spec.gpu_ids)
        self.child: subprocess.Popen[bytes] | None = None
        self.received_signal: int | None = None
        self._instance: Any = None

    # -- dagster access (lazy: a CPU run that ends normally never imports dagster here) -------

    def instance(self) -> Any:
        if self._instance is None:
            from dagster import DagsterInstance
            from dagster._core.instance.ref import InstanceRef
            from dagster._serdes import deserialize_value

            ref = deserialize_value(self.spec.instance_ref, InstanceRef)
            self._instance = DagsterInstance.from_ref(ref)
        return self._instance

    def run(self) -> Any:
        return self.instance().get_run_by_id(self.spec.run_id)

    def log(self, message: str) -> None:
        run = self.run()
        if run is not None:
            self.instance().report_engine_event(message, run)
        print(f"[mlx gpu supervisor] run {self.spec.run_id}: {message}", file=sys.stderr)

    # -- signals ------------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.received_signal = signum
        if self.child is not None and self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child.pid, signum)

    # -- phases -------------------------------------------------------------------------------

    def wait_for_gpus(self) -> dict[str, int] | None:
        spec = self.spec
        holder = {"run_id": spec.run_id, "pid": os.getpid(), "since": time.time()}
        started = time.monotonic()
        last_log: float | None = None
        while True:
            if self.received_signal is not None:
                self.finish_unstarted_run("while it was waiting for a GPU")
                return None
            held = self.leases.try_acquire(spec.gpus, holder)
            if held is not None:
                if last_log is not None:
                    self.log(
                        f"GPU(s) {', '.join(held)} free after waiting "
                        f"{time.monotonic() - started:.0f}s; starting the run."
                    )
                return held
            run = self.run()
            if run is None or run.is_finished:
                print(f"run {spec.run_id} ended while waiting for a GPU", file=sys.stderr)
                return None
            if run.status.value == "CANCELING":
                self.finish_unstarted_run("while it was waiting for a GPU")
                return None
            now = time.monotonic()
            if last_log is None or now - last_log >= spec.wait_log_interval_seconds:
                busy = ", ".join(
                    f"{gpu} (run {(info or {}).get('run_id', '?')})"
                    for gpu, info in self.leases.status().items()
                    if info is not None
                )
                self.log(
                    f"Waiting for {spec.gpus} free GPU(s) of [{', '.join(spec.gpu_ids)}] "
                    f"(busy: {busy or 'none'}). The run stays STARTING and begins as soon as "
                    "GPUs are released; it has not failed."
                )
                last_log = now
            time.sleep(spec.poll_interval_seconds)

    def finish_unstarted_run(self, when: str) -> None:
        run = self.run()
        if run is None or run.is_finished:
            return
        if run.status.value == "CANCELING" or self.received_signal is not None:
            self.instance().report_run_canceled(run, f"Run canceled {when}.")
        else:
            self.instance().report_run_failed(run, f"Run supervisor stopped {when}.")

    def start_child(self, held: dict[str, int]) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.spec.env}
        if self.spec.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(held)
        # Own process group: everything the run worker spawns can be cleaned up together.
        return subprocess.Popen(
            self.spec.command,
            env=env,
            stdin=subprocess.DEVNULL,
            process_group=0,
            pass_fds=tuple(held.values()),
        )

    def kill_leftovers(self, pgid: int) -> None:
        """Terminate (then kill) whatever remains of the run worker's process group."""
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + GROUP_KILL_GRACE_SECONDS
        sent_kill = False
        while True:
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            if time.monotonic() > deadline:
                if sent_kill:
                    return  # only zombies left for someone else to reap
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                sent_kill = True
                deadline = time.monotonic() + GROUP_KILL_GRACE_SECONDS
            time.sleep(0.1)

    def after_exit(self, returncode: int, gpus: list[str]) -> None:
        if returncode == 0:
            return  # execute_run exits 0 once the run has a final status (success or failure)
        run = self.run()
        if run is None or run.is_finished:
            return
        released = f" GPU(s) {', '.join(gpus)} released." if gpus else ""
        message = (
            f"Run worker process (pid {self.child.pid if self.child else '?'}) exited with "
            f"{_describe_exit(returncode)} before the run finished.{released}"
        )
        if run.status.value == "CANCELING":
            self.instance().report_run_canceled(run, message)
        else:
            self.instance().report_run_failed(run, message)

    def main(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        held: dict[str, int] = {}
        try:
            if self.spec.gpus:
                maybe_held = self.wait_for_gpus()
                if maybe_held is None:
                    return 0
                held = maybe_held
            if self.received_signal is not None:
                self.finish_unstarted_run("before its run worker started")
                return 0
            self.child = self.start_child(held)
            if held:
                self.instance().add_run_tags(self.spec.run_id, {ASSIGNED_GPUS_TAG: ",".join(held)})
                self.log(
                    f"Run worker (pid {self.child.pid}) started on GPU(s) {', '.join(held)} "
                    f"(CUDA_VISIBLE_DEVICES={','.join(held)})."
                )
            returncode = self.child.wait()
            self.kill_leftovers(self.child.pid)
            self.after_exit(returncode, list(held))
            return 0
        finally:
            GpuLeases.release(held)
            if self._instance is not None:
                self._instance.dispose()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Run by path, this file's folder is sys.path[0]; don't let it shadow anything.
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if not p or str(Path(p).resolve()) != here]
    spec_path = Path(argv[0])
    spec = WorkerSpec.model_validate_json(spec_path.read_text())
    spec_path.unlink(missing_ok=True)
    return Supervisor(spec).main()


if __name__ == "__main__":
    sys.exit(main())
