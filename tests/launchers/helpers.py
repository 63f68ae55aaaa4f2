"""Helpers shared by the launcher tests: real runs of the jobs in gpu_defs.py."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from dagster import AssetKey, DagsterInstance, DagsterRun
from dagster._core.definitions.reconstruct import ReconstructableRepository

GPU_DEFS_FILE = Path(__file__).with_name("gpu_defs.py")

T = TypeVar("T")


def create_run(
    instance: DagsterInstance,
    job_name: str,
    *,
    run_config: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    asset_selection: set[str] | None = None,
) -> DagsterRun:
    """A run stored the way the webserver/daemon store one: with job + execution plan snapshots
    and a python origin a run worker can load."""
    recon_job = ReconstructableRepository.for_file(
        str(GPU_DEFS_FILE), "defs", working_directory=str(GPU_DEFS_FILE.parent)
    ).get_reconstructable_job(job_name)
    job_def = recon_job.get_definition()
    keys = {AssetKey(name) for name in asset_selection} if asset_selection else None
    if keys:
        job_def = job_def.get_subset(asset_selection=keys)
    return instance.create_run_for_job(
        job_def=job_def,
        run_config=run_config,
        tags=tags,
        asset_selection=keys,
        job_code_origin=recon_job.get_python_origin(),
    )


def wait_for(
    predicate: Callable[[], T | None], timeout: float = 120.0, what: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns something truthy; generous timeout, no speed claims."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
