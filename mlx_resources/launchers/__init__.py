"""Run launchers that place GPU runs (see docs/gpu.md).

- :class:`GpuK8sRunLauncher` (``mlx_resources.launchers.k8s_gpu``): Kubernetes Jobs with GPU
  limits, node selectors and tolerations.
- :class:`LocalGpuRunLauncher` (``mlx_resources.launchers.local_gpu``): one multi-GPU host,
  ``CUDA_VISIBLE_DEVICES`` leases.
- :func:`gpu_request_for_run` (``mlx_resources.launchers.gpu_requirements``): what a run needs.

Attributes load lazily so that importing one launcher does not pull in the other's
dependencies (the Kubernetes client, for instance).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlx_resources.launchers.gpu_requirements import (
        GpuRequest,
        GpuRequirementError,
        gpu_request_for_run,
        gpu_steps_for_run,
    )
    from mlx_resources.launchers.k8s_gpu import GpuK8sRunLauncher, K8sGpuConfigError
    from mlx_resources.launchers.local_gpu import LocalGpuLaunchError, LocalGpuRunLauncher

_EXPORTS = {
    "GpuRequest": "gpu_requirements",
    "GpuRequirementError": "gpu_requirements",
    "gpu_request_for_run": "gpu_requirements",
    "gpu_steps_for_run": "gpu_requirements",
    "GpuK8sRunLauncher": "k8s_gpu",
    "K8sGpuConfigError": "k8s_gpu",
    "LocalGpuRunLauncher": "local_gpu",
    "LocalGpuLaunchError": "local_gpu",
}

__all__ = [
    "GpuK8sRunLauncher",
    "GpuRequest",
    "GpuRequirementError",
    "K8sGpuConfigError",
    "LocalGpuLaunchError",
    "LocalGpuRunLauncher",
    "gpu_request_for_run",
    "gpu_steps_for_run",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
