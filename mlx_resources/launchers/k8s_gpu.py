"""Kubernetes run launcher that gives GPU runs their GPUs.

``GpuK8sRunLauncher`` is dagster-k8s's ``K8sRunLauncher`` with one extra layer in the container
context. The layers, later ones winning on conflicts and all merged the dagster-k8s way
(dicts deep-merged, lists appended without duplicates):

1. the launcher's own config in ``dagster.yaml`` (``resources``, ``env_vars``, ...);
2. the code location's ``container_context``;
3. **the GPU layer** built from the run's :class:`GpuRequest` (GPU limits/requests, node
   selector and tolerations of the GPU type, memory request, ``MLX_GPU_*`` env vars);
4. the run's ``dagster-k8s/config`` tag, so a user can still adjust a single run.

Runs with no GPU step get no GPU layer at all: no GPU limit and no GPU node selector.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import kubernetes.client
import pydantic
from dagster import Array, Field, Map, Noneable, Permissive, Shape, StringSource
from dagster._core.storage.dagster_run import DagsterRun
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    K8S_RESOURCE_REQUIREMENTS_KEY,
    USER_DEFINED_K8S_CONFIG_KEY,
    UserDefinedDagsterK8sConfig,
    get_user_defined_k8s_config,
)
from dagster_k8s.launcher import K8sRunLauncher
from kubernetes.utils import parse_quantity
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from mlx_resources.launchers.gpu_requirements import (
    GPU_MEMORY_TAG,
    GPU_POOL,
    GPU_TAG,
    GPU_TYPE_TAG,
    GpuRequest,
    gpu_request_for_run,
    gpu_steps_for_run,
)

DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
MEMORY_FRACTION_ENV = "MLX_GPU_MEMORY_FRACTION"
MEMORY_GB_ENV = "MLX_GPU_MEMORY_GB"
GPU_COUNT_ENV = "MLX_GPU_COUNT"

# Sections of the dagster-k8s/config tag and the Kubernetes model each one is checked against.
_TAG_SECTIONS: dict[str, type] = {
    "container_config": kubernetes.client.V1Container,
    "pod_template_spec_metadata": kubernetes.client.V1ObjectMeta,
    "pod_spec_config": kubernetes.client.V1PodSpec,
    "job_config": kubernetes.client.V1Job,
    "job_metadata": kubernetes.client.V1ObjectMeta,
    "job_spec_config": kubernetes.client.V1JobSpec,
}
_TAG_TOP_LEVEL = {*_TAG_SECTIONS, "merge_behavior"}
_LIST_TYPE = re.compile(r"^[Ll]ist\[(.*)\]$")
_DICT_TYPE = re.compile(r"^[Dd]ict[\[(]([^,]*),\s*(.*)[\])]$")


class K8sGpuConfigError(ValueError):
    """Launch-time configuration error; the message names the run, the key and the fix."""


# --------------------------------------------------------------------------------------------
# Checking Kubernetes keys (typos such as 'nodeSelecter' would otherwise surface as a bare
# "Unexpected keys in model class V1PodSpec" with no run or tag named).
# --------------------------------------------------------------------------------------------


def _suggest(key: str, model_class: type) -> str:
    attribute_map: Mapping[str, str] = model_class.attribute_map  # type: ignore[attr-defined]
    names = [*attribute_map.values(), *attribute_map]
    match = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if not match:
        return ""
    best = match[0]
    # Answer in the user's spelling style: camelCase if they wrote camelCase.
    if "_" not in key and best in attribute_map:
        best = attribute_map[best]
    return f" (did you mean '{best}'?)"


def unknown_k8s_keys(model_class: type, value: Any, path: str) -> list[str]:
    """Paths of keys in ``value`` that ``model_class`` (a kubernetes.client model) lacks.

    Accepts camelCase and snake_case keys, like dagster-k8s does, and recurses into nested
    models, lists and maps. Returns one human-readable line per unknown key.
    """
    if not isinstance(value, Mapping):
        return []
    attribute_map: Mapping[str, str] = model_class.attribute_map  # type: ignore[attr-defined]
    openapi_types: Mapping[str, str] = model_class.openapi_types  # type: ignore[attr-defined]
    camel_to_snake = {camel: snake for snake, camel in attribute_map.items()}
    problems: list[str] = []
    for key, child in value.items():
        snake = key if key in attribute_map else camel_to_snake.get(key)
        child_path = f"{path}.{key}" if path else key
        if snake is None:
            problems.append(f"{child_path}{_suggest(key, model_class)}")
            continue
        problems.extend(_unknown_in_type(openapi_types[snake], child, child_path))
    return problems


def _unknown_in_type(type_name: str, value: Any, path: str) -> list[str]:
    if value is None:
        return []
    list_match = _LIST_TYPE.match(type_name)
    if list_match:
        if not isinstance(value, list):
            return []
        return [
            problem
            for index, item in enumerate(value)
            for problem in _unknown_in_type(list_match.group(1), item, f"{path}[{index}]")
        ]
    dict_match = _DICT_TYPE.match(type_name)
    if dict_match:
        if not isinstance(value, Mapping):
            return []
        return [
            problem
            for key, item in value.items()
            for problem in _unknown_in_type(dict_match.group(2), item, f"{path}[{key}]")
        ]
    model_class = getattr(kubernetes.client, type_name, None)
    if model_class is None or not hasattr(model_class, "attribute_map"):
        return []  # str, int, object, datetime...
    return unknown_k8s_keys(model_class, value, path)


def check_user_k8s_config_tag(run: DagsterRun) -> None:
    """Fail early and clearly on a malformed ``dagster-k8s/config`` run tag."""
    raw = run.tags.get(USER_DEFINED_K8S_CONFIG_KEY)
    if raw is None:
        return
    fix = (
        f"Fix: correct the run's '{USER_DEFINED_K8S_CONFIG_KEY}' tag (on the launch, the "
        "schedule/sensor RunRequest or the job's tags); keys are Kubernetes field names in "
        "camelCase or snake_case."
    )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise K8sGpuConfigError(
            f"Run {run.run_id}: tag '{USER_DEFINED_K8S_CONFIG_KEY}' is not valid JSON ({exc}). "
            f"{fix}"
        ) from None
    if not isinstance(config, Mapping):
        raise K8sGpuConfigError(
            f"Run {run.run_id}: tag '{USER_DEFINED_K8S_CONFIG_KEY}' must be a JSON object with "
            f"keys {sorted(_TAG_TOP_LEVEL)}. {fix}"
        )
    problems: list[str] = []
    for section, value in config.items():
        if section not in _TAG_TOP_LEVEL:
            close = difflib.get_close_matches(section, sorted(_TAG_TOP_LEVEL), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"{section}{hint}")
        elif section in _TAG_SECTIONS:
            problems.extend(unknown_k8s_keys(_TAG_SECTIONS[section], value, section))
    if problems:
        raise K8sGpuConfigError(
            f"Run {run.run_id}: tag '{USER_DEFINED_K8S_CONFIG_KEY}' has unknown key(s): "
            f"{'; '.join(problems)}. {fix}"
        )


# --------------------------------------------------------------------------------------------
# Launcher config
# --------------------------------------------------------------------------------------------


class GpuTypeConfig(BaseModel):
    """How to place one GPU type: where its nodes are and how they are tainted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    resource_name: str = DEFAULT_GPU_RESOURCE
    # Device memory of one GPU; lets the launcher pick a type from mlx/gpu-memory-gb and
    # export MLX_GPU_MEMORY_FRACTION.
    memory_gb: float | None = pydantic.Field(default=None, gt=0)

    @field_validator("tolerations")
    @classmethod
    def _check_tolerations(cls, tolerations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        problems = [
            problem
            for index, toleration in enumerate(tolerations)
            for problem in unknown_k8s_keys(
                kubernetes.client.V1Toleration, toleration, f"tolerations[{index}]"
            )
        ]
        if problems:
            raise ValueError(f"unknown toleration key(s): {'; '.join(problems)}")
        return tolerations


class GpuLauncherSettings(BaseModel):
    """The GPU part of ``GpuK8sRunLauncher``'s config, validated when the instance loads it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu_types: dict[str, GpuTypeConfig] = {}
    default_gpu_type: str | None = None
    # Host memory requested for a GPU run whose steps don't set mlx/gpu-memory-gb.
    default_memory_gb: float | None = pydantic.Field(default=None, gt=0)

    @field_validator("gpu_types")
    @classmethod
    def _lower_type_names(cls, types: dict[str, GpuTypeConfig]) -> dict[str, GpuTypeConfig]:
        lowered = {name.strip().lower(): config for name, config in types.items()}
        if len(lowered) != len(types):
            raise ValueError("gpu_types has names that differ only in case")
        return lowered

    @field_validator("default_gpu_type")
    @classmethod
    def _lower_default(cls, name: str | None) -> str | None:
        return name.strip().lower() if name else None

    @model_validator(mode="after")
    def _default_is_known(self) -> GpuLauncherSettings:
        if self.default_gpu_type and self.default_gpu_type not in self.gpu_types:
            raise ValueError(
                f"default_gpu_type '{self.default_gpu_type}' is not one of gpu_types "
                f"{sorted(self.gpu_types)}"
            )
        return self


def _gpu_config_fields() -> dict[str, Field]:
    gpu_type_shape = Shape(
        {
            "node_selector": Field(
                Map(str, str), is_required=False, description="Node labels of this GPU type."
            ),
            "tolerations": Field(
                Array(Permissive()),
                is_required=False,
                description="Tolerations for the taints on this GPU type's nodes.",
            ),
            "resource_name": Field(
                str,
                is_required=False,
                default_value=DEFAULT_GPU_RESOURCE,
                description="Extended resource to request, e.g. nvidia.com/gpu or a MIG slice.",
            ),
            "memory_gb": Field(
                Noneable(float), is_required=False, description="Device memory of one GPU (GB)."
            ),
        }
    )
    return {
        "gpu_types": Field(
            Map(str, gpu_type_shape),
            is_required=False,
            default_value={},
            description="GPU type name (as used in mlx/gpu-type) -> placement.",
        ),
        "default_gpu_type": Field(
            Noneable(StringSource),
            is_required=False,
            default_value=None,
            description="Type used when a GPU run names none.",
        ),
        "default_memory_gb": Field(
            Noneable(float),
            is_required=False,
            default_value=None,
            description="Memory request (GB) for GPU runs without mlx/gpu-memory-gb.",
        ),
    }


def _quantity_gb(gb: float) -> str:
    """A Kubernetes memory quantity for ``gb`` gigabytes (whole Gi when possible, else Mi)."""
    if float(gb).is_integer():
        return f"{int(gb)}Gi"
    return f"{math.ceil(gb * 1024)}Mi"


class GpuK8sRunLauncher(K8sRunLauncher):
    """``K8sRunLauncher`` that adds GPU resources and placement to runs with GPU steps.

    Configure it in ``dagster.yaml`` exactly like ``K8sRunLauncher`` plus ``gpu_types``,
    ``default_gpu_type`` and ``default_memory_gb`` (see docs/gpu.md).
    """

    def __init__(
        self,
        gpu_types: Mapping[str, Any] | None = None,
        default_gpu_type: str | None = None,
        default_memory_gb: float | None = None,
        **kwargs: Any,
    ):
        try:
            self.gpu_settings = GpuLauncherSettings(
                gpu_types=dict(gpu_types or {}),
                default_gpu_type=default_gpu_type,
                default_memory_gb=default_memory_gb,
            )
        except ValidationError as exc:
            raise K8sGpuConfigError(
                f"Invalid GPU settings for {type(self).__name__} (run_launcher.config in "
                f"dagster.yaml): {exc}"
            ) from None
        super().__init__(**kwargs)

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {**K8sRunLauncher.config_type(), **_gpu_config_fields()}

    # -- GPU layer ---------------------------------------------------------------------------

    def _type_source(self, run: DagsterRun, gpu_type: str) -> str:
        if GPU_TYPE_TAG in run.tags:
            return f"run tag {GPU_TYPE_TAG}"
        steps = sorted(
            step
            for step, request in gpu_steps_for_run(self._instance, run).items()
            if request.gpu_type == gpu_type
        )
        return f"{GPU_TYPE_TAG} on step '{steps[0]}'" if steps else GPU_TYPE_TAG

    def resolve_gpu_type(
        self, run: DagsterRun, request: GpuRequest
    ) -> tuple[str | None, GpuTypeConfig | None]:
        """The configured GPU type a request lands on (``None`` when no types are configured)."""
        settings = self.gpu_settings
        types = settings.gpu_types
        known = ", ".join(sorted(types)) or "none configured"
        if request.gpu_type is not None:
            config = types.get(request.gpu_type)
            if config is None:
                raise K8sGpuConfigError(
                    f"Run {run.run_id}: unknown GPU type '{request.gpu_type}' (from "
                    f"{self._type_source(run, request.gpu_type)}); the run launcher knows: "
                    f"{known}. Fix: use one of those in {GPU_TYPE_TAG}, or add "
                    f"gpu_types.{request.gpu_type} to run_launcher.config in dagster.yaml."
                )
            if (
                request.memory_gb is not None
                and config.memory_gb is not None
                and request.memory_gb > config.memory_gb
            ):
                raise K8sGpuConfigError(
                    f"Run {run.run_id}: {GPU_MEMORY_TAG}={request.memory_gb:g} but GPU type "
                    f"'{request.gpu_type}' has {config.memory_gb:g} GB. Fix: lower "
                    f"{GPU_MEMORY_TAG} or choose a larger {GPU_TYPE_TAG}."
                )
            return request.gpu_type, config

        default = settings.default_gpu_type
        sized = {name: c for name, c in types.items() if c.memory_gb is not None}
        if request.memory_gb is None or not sized:
            return default, types.get(default) if default else None
        default_config = types.get(default) if default else None
        if default_config is not None and (
            default_config.memory_gb is None or default_config.memory_gb >= request.memory_gb
        ):
            return default, default_config
        fitting = sorted(
            (c.memory_gb, name)
            for name, c in sized.items()
            if c.memory_gb is not None and c.memory_gb >= request.memory_gb
        )
        if not fitting:
            raise K8sGpuConfigError(
                f"Run {run.run_id}: {GPU_MEMORY_TAG}={request.memory_gb:g} but no configured "
                f"GPU type has that much memory ({known}). Fix: lower {GPU_MEMORY_TAG} or add a "
                "larger type to gpu_types in dagster.yaml."
            )
        name = fitting[0][1]
        return name, types[name]

    def gpu_container_context(
        self, run: DagsterRun, request: GpuRequest, base_memory_request: str | None = None
    ) -> K8sContainerContext:
        """Container context holding only what a GPU run adds (layer 3).

        The memory request is only raised, never lowered below ``base_memory_request`` (what
        the launcher config / code location already request).
        """
        _name, type_config = self.resolve_gpu_type(run, request)
        resource = type_config.resource_name if type_config else DEFAULT_GPU_RESOURCE
        count = str(request.gpus)
        requests: dict[str, str] = {resource: count}
        memory_gb = request.memory_gb or self.gpu_settings.default_memory_gb
        if memory_gb is not None:
            memory = _quantity_gb(memory_gb)
            if base_memory_request is None or _bytes(memory) > _bytes(base_memory_request):
                requests["memory"] = memory

        env = [{"name": GPU_COUNT_ENV, "value": count}]
        if request.memory_gb is not None:
            env.append({"name": MEMORY_GB_ENV, "value": f"{request.memory_gb:g}"})
            if type_config is not None and type_config.memory_gb:
                fraction = min(1.0, request.memory_gb / type_config.memory_gb)
                env.append({"name": MEMORY_FRACTION_ENV, "value": f"{fraction:.4f}"})

        pod_spec: dict[str, Any] = {}
        if type_config is not None and type_config.node_selector:
            pod_spec["node_selector"] = dict(type_config.node_selector)
        if type_config is not None and type_config.tolerations:
            pod_spec["tolerations"] = [dict(t) for t in type_config.tolerations]

        return K8sContainerContext(
            resources={"limits": {resource: count}, "requests": requests},
            env=env,
            run_k8s_config=UserDefinedDagsterK8sConfig(pod_spec_config=pod_spec),
        )

    def get_container_context_for_run(self, dagster_run: DagsterRun) -> K8sContainerContext:
        check_user_k8s_config_tag(dagster_run)
        # Layers 1+2: launcher config and code-location container context (checked against
        # only_allow_user_defined_* by dagster-k8s).
        context = K8sContainerContext.create_for_run(dagster_run, self, include_run_tags=False)
        base = context

        request = gpu_request_for_run(self._instance, dagster_run)
        gpu_layer = None
        if request is not None:
            base_requests = _resources(context).get("requests") or {}
            gpu_layer = self.gpu_container_context(
                dagster_run, request, base_memory_request=base_requests.get("memory")
            )
            context = context.merge(gpu_layer)

        # Layer 4: the run's own dagster-k8s/config tag, with the same allowlist checks.
        run_tag_context = K8sContainerContext(
            run_k8s_config=get_user_defined_k8s_config(dagster_run.tags)
        ).validate_user_k8s_config_for_run(
            self.only_allow_user_defined_k8s_config_fields,
            self.only_allow_user_defined_env_vars,
        )
        context = context.merge(run_tag_context)

        if request is not None and gpu_layer is not None:
            _check_gpu_limit_survived(dagster_run, request, gpu_layer, context)
        self._check_one_gpu_count(
            dagster_run,
            request,
            layers=[
                (_BASE_LAYER, base.run_k8s_config),
                (_user_layer_name(dagster_run), run_tag_context.run_k8s_config),
            ],
            gpu_resource=None if gpu_layer is None else next(iter(_limits(gpu_layer))),
            final=context,
        )
        return context

    # -- one GPU count ------------------------------------------------------------------------

    def gpu_resource_names(self) -> set[str]:
        """Extended resources that count GPUs: the configured types' ``resource_name`` and the
        common device plugins' names (see :func:`is_gpu_resource`)."""
        return {
            *KNOWN_GPU_RESOURCES,
            *(t.resource_name for t in self.gpu_settings.gpu_types.values()),
        }

    def _count_source(self, run: DagsterRun, request: GpuRequest) -> str:
        if GPU_TAG in run.tags:
            return f"the run tag {GPU_TAG}={run.tags[GPU_TAG]!r}"
        steps = sorted(
            step
            for step, req in gpu_steps_for_run(self._instance, run).items()
            if req.gpus == request.gpus
        )
        where = f"step '{steps[0]}'" if steps else "the run's GPU steps"
        return f"{where} ({GPU_TAG} op tag, or pool '{GPU_POOL}' for one GPU)"

    def _check_one_gpu_count(
        self,
        run: DagsterRun,
        request: GpuRequest | None,
        *,
        layers: list[tuple[str, UserDefinedDagsterK8sConfig]],
        gpu_resource: str | None,
        final: K8sContainerContext,
    ) -> None:
        """Refuse a Job whose GPU count is stated twice with different values, so that one
        count is the request, the limit and ``MLX_GPU_COUNT``; and any extended resource whose
        request and limit differ (Kubernetes refuses those). Raises :class:`K8sGpuConfigError`
        naming the run, both sources and the fix."""
        names = self.gpu_resource_names()
        fix_count = (
            f"Fix: state the GPU count once, as {GPU_TAG} (on the asset's op_tags, or as a run "
            f"tag {GPU_TAG}=<n> for one run), and remove the GPU resource and {GPU_COUNT_ENV} "
            "from the Kubernetes config: the launcher sets the request, the limit and "
            f"{GPU_COUNT_ENV} from {GPU_TAG}."
        )
        statements = [st for name, cfg in layers for st in _gpu_statements(name, cfg, names)]
        if request is None:
            if statements:
                st = statements[0]
                raise K8sGpuConfigError(
                    f"Run {run.run_id}: no step of this run asks for a GPU, but {st.source} "
                    f"sets {st.value!r}. {fix_count}"
                )
            _check_extended_resources(run, final, layers)
            return
        want = Decimal(request.gpus)
        count_source = self._count_source(run, request)
        for st in statements:
            if st.sidecar:
                raise K8sGpuConfigError(
                    f"Run {run.run_id}: {st.source} gives a GPU ({st.value!r}) to a container "
                    f"other than the run's; this run's {request.gpus} GPU(s) from {count_source} "
                    "go to the run container. Fix: remove the GPU resource from that container."
                )
            if st.resource not in (gpu_resource, GPU_COUNT_ENV):
                raise K8sGpuConfigError(
                    f"Run {run.run_id}: {st.source} asks for {st.value!r} of a second GPU "
                    f"resource; this run's GPUs are {gpu_resource} ({request.gpus}, from "
                    f"{count_source}). Fix: remove {st.resource} from the Kubernetes config, or "
                    "set resource_name of the GPU type in the launcher config."
                )
            if st.layer == _BASE_LAYER and st.resource == gpu_resource:
                continue  # a default the GPU layer replaces (merged after it)
            if _quantity(st.value) != want:
                raise K8sGpuConfigError(
                    f"Run {run.run_id}: the GPU count is stated twice with different values: "
                    f"{count_source} says {request.gpus}, but {st.source} says {st.value!r}. "
                    "Kubernetes refuses a GPU whose request and limit differ, and the run must "
                    f"see the count it got in {GPU_COUNT_ENV}. {fix_count}"
                )
        config = final.run_k8s_config.container_config
        resources = config.get("resources") or {}
        for part in ("limits", "requests"):
            value = (resources.get(part) or {}).get(gpu_resource)
            if value is not None and _quantity(value) != want:  # pragma: no cover - guarded above
                raise K8sGpuConfigError(
                    f"Run {run.run_id}: the Job would get {part}['{gpu_resource}']={value!r} but "
                    f"{count_source} asks for {request.gpus}. {fix_count}"
                )
        for entry in config.get("env") or []:
            if entry.get("name") == GPU_COUNT_ENV and entry.get("value") != str(request.gpus):
                raise K8sGpuConfigError(  # pragma: no cover - guarded above
                    f"Run {run.run_id}: {GPU_COUNT_ENV}={entry.get('value')!r} but "
                    f"{count_source} asks for {request.gpus}. {fix_count}"
                )
        _check_extended_resources(run, final, layers)


KNOWN_GPU_RESOURCES = frozenset(
    {"nvidia.com/gpu", "amd.com/gpu", "gpu.intel.com/i915", "gpu.intel.com/xe"}
)
_BASE_LAYER = "the run launcher's config / the code location's container_context"


def is_gpu_resource(name: str, known: set[str] | frozenset[str] = KNOWN_GPU_RESOURCES) -> bool:
    """Whether the extended resource ``name`` counts GPUs: one of ``known``, a MIG slice
    (``nvidia.com/mig-...``) or any ``<vendor>/gpu``."""
    return name in known or name.startswith("nvidia.com/mig-") or name.endswith("/gpu")


def _is_extended(name: str) -> bool:
    # Kubernetes: a fully qualified name outside the kubernetes.io domain is an extended resource
    domain = name.split("/", 1)[0] if "/" in name else ""
    return bool(domain) and not (domain == "kubernetes.io" or domain.endswith(".kubernetes.io"))


def _user_layer_name(run: DagsterRun) -> str:
    tags = [
        t for t in (USER_DEFINED_K8S_CONFIG_KEY, K8S_RESOURCE_REQUIREMENTS_KEY) if t in run.tags
    ]
    return " / ".join(f"the run's '{t}' tag" for t in tags) or "the run's tags"


@dataclass(frozen=True)
class _Statement:
    layer: str
    source: str
    resource: str
    value: Any
    sidecar: bool = False


def _gpu_statements(
    layer: str, config: UserDefinedDagsterK8sConfig, names: set[str]
) -> list[_Statement]:
    """Every place in one layer's config that states a GPU count: the run container's GPU
    limits and requests and its ``MLX_GPU_COUNT``, and GPU resources of other containers
    (``pod_spec_config`` containers and init containers)."""
    out: list[_Statement] = []
    container = config.container_config or {}
    resources = container.get("resources") or {}
    for part in ("limits", "requests"):
        for name, value in (resources.get(part) or {}).items():
            if is_gpu_resource(name, names):
                where = f"{layer}: container_config.resources.{part}['{name}']"
                out.append(_Statement(layer, where, name, value))
    for entry in container.get("env") or []:
        if entry.get("name") == GPU_COUNT_ENV:
            where = f"{layer}: container_config.env {GPU_COUNT_ENV}"
            out.append(_Statement(layer, where, GPU_COUNT_ENV, entry.get("value")))
    pod = config.pod_spec_config or {}
    for key in ("containers", "init_containers"):
        for index, other in enumerate(pod.get(key) or []):
            other_resources = (other or {}).get("resources") or {}
            for part in ("limits", "requests"):
                for name, value in (other_resources.get(part) or {}).items():
                    if is_gpu_resource(name, names):
                        where = (
                            f"{layer}: pod_spec_config.{key}[{index}].resources.{part}['{name}']"
                        )
                        out.append(_Statement(layer, where, name, value, sidecar=True))
    return out


def _quantity(value: Any) -> Decimal | None:
    try:
        amount: Decimal = parse_quantity(value if isinstance(value, int | float) else str(value))
    except (ValueError, TypeError):
        return None
    return amount


def _check_extended_resources(
    run: DagsterRun,
    final: K8sContainerContext,
    layers: list[tuple[str, UserDefinedDagsterK8sConfig]],
) -> None:
    """Kubernetes refuses an extended resource (``vendor/name``) whose request and limit are
    both given and differ, or that is not a whole number: refuse it here, naming the sources."""
    resources = final.run_k8s_config.container_config.get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}

    def source(part: str, name: str) -> str:
        for layer, cfg in reversed(layers):
            given = ((cfg.container_config or {}).get("resources") or {}).get(part) or {}
            if name in given:
                return f"{layer} ({part}['{name}']={given[name]!r})"
        return f"the GPU layer ({part}['{name}'])"

    for name in sorted({*limits, *requests}):
        if not _is_extended(name):
            continue
        for part, values in (("limits", limits), ("requests", requests)):
            amount = _quantity(values[name]) if name in values else None
            if name in values and (amount is None or amount != amount.to_integral_value()):
                raise K8sGpuConfigError(
                    f"Run {run.run_id}: {source(part, name)} is not a whole number; Kubernetes "
                    f"counts extended resources such as {name} in whole units. Fix: give a "
                    "whole number."
                )
        both = name in limits and name in requests
        if both and _quantity(limits[name]) != _quantity(requests[name]):
            raise K8sGpuConfigError(
                f"Run {run.run_id}: extended resource {name} has limit {limits[name]!r} from "
                f"{source('limits', name)} but request {requests[name]!r} from "
                f"{source('requests', name)}; Kubernetes refuses an extended resource whose "
                "request and limit differ. Fix: give one value (or only the limit)."
            )


def _resources(context: K8sContainerContext) -> Mapping[str, Any]:
    return context.run_k8s_config.container_config.get("resources") or {}


def _limits(context: K8sContainerContext) -> Mapping[str, str]:
    return _resources(context).get("limits") or {}


def _bytes(quantity: str) -> Decimal:
    try:
        return parse_quantity(quantity)
    except ValueError:
        return Decimal(0)  # leave odd values to Kubernetes' own validation


def _check_gpu_limit_survived(
    run: DagsterRun, request: GpuRequest, gpu_layer: K8sContainerContext, final: K8sContainerContext
) -> None:
    """A SHALLOW-merge user tag can replace ``resources`` wholesale; never launch a GPU run
    without its GPU limit."""
    missing = [resource for resource in _limits(gpu_layer) if resource not in _limits(final)]
    if missing:
        raise K8sGpuConfigError(
            f"Run {run.run_id}: its '{USER_DEFINED_K8S_CONFIG_KEY}' tag replaced "
            f"container_config.resources and dropped the {missing[0]} limit this GPU run needs "
            f"({request.gpus} GPU(s)). Fix: use merge_behavior DEEP (the default) or include "
            f"limits['{missing[0]}'] in the tag."
        )
