"""What one lifecycle instance declares: its data, features, target, gate, window and drift policy.

A lifecycle instance is a YAML file (``mlx_assets/defs/<name>/defs.yaml``, the attributes of the
``MLLifecycle`` component); :class:`LifecycleSpec` is its schema. The composition file
(``mlx.yaml``) keeps choosing the plugins; an instance chooses the data and the model, and names
the data source it reads by the name the composition gives it.

:class:`Lifecycle` is a spec resolved against the composition's settings (its defaults for the
window, quality gate, drift policy and arrival cron), with the asset keys, job, sensor and
schedule names of the instance. Every asset factory and the planner take one.
"""

# No ``from __future__ import annotations`` here: pydantic would evaluate every field's
# annotation from its text when each model is created, at every load of the code location
# (~0.35 ms for these models; docs/lifecycle_component.md, "Load time", seventh round).
import math
import re
from datetime import date, timedelta
from functools import cached_property
from typing import Any, Literal

import dagster as dg
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictStr,
    field_validator,
    model_validator,
)

from mlx_plugins.kernel.sandbox import SandboxSpec
from mlx_resources.platform import DriftPolicy, Platform, TrainingWindow

_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_DAGSTER_NAME = re.compile(r"[A-Za-z0-9_]+")
"""Dagster's rule for names (``dagster._core.definitions.utils.VALID_NAME_REGEX``)."""
_DAGSTER_RESERVED = frozenset(
    {"context", "conf", "config", "meta", "arg_dict", "dict", "input_arg_dict"}
    | {"output_arg_dict", "int", "str", "float", "bool", "input", "output", "type"}
    | set(__import__("keyword").kwlist)
)
"""Names Dagster refuses for ops (``DISALLOWED_NAMES``): an asset's name becomes its op's."""
_TARGET = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*")
TaskKind = Literal["binary", "multiclass", "regression"]


class SpecValueError(ValueError):
    """A mistake in an instance, at ``key`` (dotted, relative to the model that raised it):
    ``problem`` and ``fix``. The loader names the file and the full key under ``attributes``;
    elsewhere its text is ``<problem>\nfix: <fix>`` (the shape ``from_validation_error`` reads).
    """

    def __init__(self, key: str, problem: str, fix: str) -> None:
        self.key = key
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\nfix: {fix}")


def _identifier(value: str, what: str) -> str:
    """``value`` if it is lower-case letters, digits and underscores starting with a letter
    (a subset of Dagster's names: it becomes part of asset keys, op and job names)."""
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} must be lower-case letters, digits and underscores, starting "
            "with a letter (it becomes part of asset keys and job names, and Dagster allows "
            "only letters, digits and underscores in those)\nfix: write e.g. "
            f"{_suggest(value)!r}"
        )
    return value


def _asset_name(value: str, what: str) -> str:
    """``value`` checked as an asset name: :func:`_identifier` and not a name Dagster reserves."""
    _identifier(value, what)
    if value in _DAGSTER_RESERVED:
        raise ValueError(
            f"{what} {value!r} is a name Dagster reserves (a Python keyword or one of its own)"
            f"\nfix: write another name, e.g. {value + '_table'!r}"
        )
    return value


def _suggest(value: str) -> str:
    """A valid lower-case identifier close to ``value`` (for the fix of a bad name)."""
    out = re.sub(r"[^a-z0-9_]+", "_", value.strip().lower()).strip("_") or "name"
    return out if out[0].isalpha() else f"m_{out}"


def _real_date(value: object, key: str) -> object:
    """``value`` unchanged, unless it is ISO-shaped text that is not a real day (2024-02-30)."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        try:
            date.fromisoformat(value)
        except ValueError as exc:
            raise SpecValueError(
                key,
                f"{value!r} is written as an ISO date but is not a real day ({exc})",
                "write a day that exists in the calendar, YYYY-MM-DD",
            ) from None
    return value


class _Strict(BaseModel):
    """Unknown keys refused; scalars strict (``"no"``/``0`` are no bool, ``"10"`` no number)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TableSpec(_Strict):
    """One table of the data source, materialized as one raw asset."""

    name: StrictStr = Field(
        description="The table's name in the data source (DataSource.tables())."
    )
    asset: StrictStr | None = Field(
        default=None, description="Asset name (default ``raw_<name>``), under the key prefix."
    )
    partitioned: StrictBool = Field(
        default=True,
        description="Daily partitions by the time column (False: a reference table read whole).",
    )
    key_columns: tuple[StrictStr, ...] = Field(
        default=(),
        description="Columns that must not be null (the blocking ``no_null_keys`` check); the "
        "time column is always one.",
    )
    description: StrictStr | None = None

    @property
    def asset_name(self) -> str:
        return self.asset or f"raw_{self.name}"

    @field_validator("asset")
    @classmethod
    def _asset(cls, v: str | None) -> str | None:
        return None if v is None else _asset_name(v, "data.tables[].asset")

    @model_validator(mode="after")
    def _default_asset(self) -> "TableSpec":
        if self.asset is None and not (
            _NAME.fullmatch(self.asset_name) and _DAGSTER_NAME.fullmatch(self.asset_name)
        ):
            raise SpecValueError(
                "name",
                f"table {self.name!r} gives the asset name {self.asset_name!r}, which is not a "
                "valid name (Dagster allows only letters, digits and underscores; MLX asks for "
                "lower-case)",
                f"name the asset: add asset: {_suggest(self.asset_name)} to this table",
            )
        return self


class DataSpec(_Strict):
    """Where the rows come from and how they are cut into daily partitions."""

    source: StrictStr = Field(
        description="Name of a data_source entry in the composition (mlx.yaml)."
    )
    tables: tuple[TableSpec, ...] = Field(min_length=1)
    time_column: StrictStr = Field(
        default="date", description="Date column (polars Date) that assigns a row to its day."
    )
    start: date = Field(description="First daily partition (ISO date).")
    end: date | None = Field(
        default=None,
        description="Day after the last partition (exclusive); default: partitions up to today.",
    )

    @field_validator("start", "end", mode="before")
    @classmethod
    def _days(cls, v: object) -> object:
        return _real_date(v, "")

    @model_validator(mode="after")
    def _check(self) -> "DataSpec":
        if not any(t.partitioned for t in self.tables):
            raise SpecValueError(
                "tables",
                "data.tables needs at least one partitioned table (the daily data)",
                "set partitioned: true on the table that has a row per day",
            )
        names = [t.asset_name for t in self.tables]
        if len(set(names)) != len(names):
            raise SpecValueError(
                "tables",
                f"two tables have the same asset name: {names}",
                "give each table its own asset: name",
            )
        if self.end is not None and self.end <= self.start:
            raise SpecValueError(
                "end",
                f"data.end ({self.end}) must be after data.start ({self.start})",
                "make data.end a later day than data.start (it is exclusive)",
            )
        return self

    @property
    def daily(self) -> tuple[TableSpec, ...]:
        return tuple(t for t in self.tables if t.partitioned)

    @property
    def reference(self) -> tuple[TableSpec, ...]:
        return tuple(t for t in self.tables if not t.partitioned)


class FeatureSpec(_Strict):
    """The model's inputs: columns of the features asset."""

    asset: StrictStr = Field(default="features", description="Asset name, under the key prefix.")
    function: StrictStr | None = Field(
        default=None,
        description="``module:function`` called with one polars DataFrame per table, by table "
        "name (``fn(flights=..., weather=..., planes=...)``), returning the feature frame with "
        "the time column, the feature columns and the target. Default: the first partitioned "
        "table as it is.",
    )
    sandbox: SandboxSpec | None = Field(
        default=None,
        description="Run ``function`` in a sandboxed child process with these limits (the "
        "shape of a plugin entry's ``sandbox:`` key: memory_mb, cpu_seconds, open_files, "
        "file_size_mb, wall_seconds, network, env); the tables go in and the frame comes out "
        "as Arrow IPC files in its private working directory. A limit hit fails the step "
        "naming the limit and its value; nothing is stored.",
    )
    numeric: tuple[StrictStr, ...] = ()
    categorical: tuple[StrictStr, ...] = ()
    not_monitored: tuple[StrictStr, ...] = Field(
        default=(),
        description="Features left out of drift monitoring (e.g. calendar features, which "
        "always differ between one day and months of reference).",
    )
    slice_by: StrictStr | None = Field(
        default=None, description="A categorical column the evaluation reports metrics by."
    )

    @field_validator("asset")
    @classmethod
    def _asset(cls, v: str) -> str:
        return _asset_name(v, "features.asset")

    @field_validator("function")
    @classmethod
    def _function(cls, v: str | None) -> str | None:
        if v is not None and not _TARGET.fullmatch(v):
            raise ValueError(
                f"features.function {v!r} is not of the form 'package.module:function'"
                "\nfix: write e.g. mlx_assets.features.flight_features:build_features"
            )
        return v

    @model_validator(mode="after")
    def _check(self) -> "FeatureSpec":
        if not (self.numeric or self.categorical):
            raise SpecValueError(
                "",
                "features needs at least one numeric or categorical column",
                "list the model's input columns under features.numeric or features.categorical",
            )
        both = set(self.numeric) & set(self.categorical)
        if both:
            raise SpecValueError(
                "categorical",
                f"{sorted(both)} are both numeric and categorical",
                "list each column under one of features.numeric and features.categorical",
            )
        unknown = set(self.not_monitored) - set(self.numeric) - set(self.categorical)
        if unknown:
            raise SpecValueError(
                "not_monitored",
                f"names no feature: {sorted(unknown)}",
                f"list only features: {', '.join(self.columns)}",
            )
        if self.slice_by is not None and self.slice_by not in self.categorical:
            raise SpecValueError(
                "slice_by",
                f"{self.slice_by!r} is not a categorical feature",
                f"use one of features.categorical: {', '.join(self.categorical) or 'none'}",
            )
        if self.sandbox is not None and self.function is None:
            raise SpecValueError(
                "sandbox",
                "features.sandbox needs features.function (only a function can be sandboxed)",
                "set features.function: 'package.module:function' or remove the sandbox",
            )
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical)

    @property
    def monitored_numeric(self) -> list[str]:
        return [c for c in self.numeric if c not in self.not_monitored]

    @property
    def monitored_categorical(self) -> list[str]:
        return [c for c in self.categorical if c not in self.not_monitored]


class TargetSpec(_Strict):
    """What the model predicts."""

    column: StrictStr
    kind: TaskKind = "binary"
    classes: tuple[StrictStr, ...] = Field(
        default=(),
        description="Multiclass: the labels as text, in index order (a number is quoted: "
        "``['0', '1']``); the target column holds these labels, or their indices.",
    )

    @field_validator("classes", mode="before")
    @classmethod
    def _labels(cls, v: object) -> object:
        if isinstance(v, (list, tuple)):
            for i, label in enumerate(v):
                if not isinstance(label, str):
                    raise SpecValueError(
                        str(i),
                        f"label {label!r} is not text: target.classes are the labels as text, "
                        "in index order (the target column may hold them or their indices)",
                        "quote it, e.g. classes: [" + ", ".join(repr(str(x)) for x in v) + "]",
                    )
        return v

    @model_validator(mode="after")
    def _check(self) -> "TargetSpec":
        if self.kind == "multiclass" and len(self.classes) < 2:
            raise SpecValueError(
                "classes",
                "target.classes must list at least two labels for kind multiclass",
                "list the labels in index order, e.g. classes: [sun, rain, snow]",
            )
        if self.kind != "multiclass" and self.classes:
            raise SpecValueError(
                "classes",
                f"target.classes is for kind multiclass, not {self.kind}",
                "remove target.classes, or set target.kind: multiclass",
            )
        return self


GATE_METRICS = {
    "binary": ("roc_auc", "log_loss", "brier", "log_loss_ratio"),
    "multiclass": ("accuracy", "macro_f1", "log_loss", "log_loss_ratio", "accuracy_lift"),
    "regression": ("rmse", "mae", "r2", "rmse_ratio"),
}
"""Metrics a gate may name, by task. ``*_ratio`` is the model's value over the baseline's (the
training rows' base rate or class frequencies; the training mean for regression);
``accuracy_lift`` is the model's accuracy minus the baseline's (always the training rows' most
frequent class), e.g. ``min: {accuracy_lift: 0.0}`` to require beating it."""


_MAX_EXACT_BOUND = 2**53
"""A gate bound written as a whole number must be one a float holds exactly (a metric is a
float; a larger one would overflow or round)."""


class GateSpec(_Strict):
    """The blocking quality gate: every rule must hold for the version to be registered."""

    min: dict[StrictStr, StrictFloat] = Field(default_factory=dict, description="metric >= value")
    max: dict[StrictStr, StrictFloat] = Field(default_factory=dict, description="metric < value")

    @field_validator("min", "max", mode="before")
    @classmethod
    def _numbers(cls, v: object) -> object:
        if isinstance(v, dict):
            for metric, bound in v.items():
                if (
                    isinstance(bound, bool)
                    or not isinstance(bound, (int, float))
                    or (isinstance(bound, float) and not math.isfinite(bound))
                    or (isinstance(bound, int) and abs(bound) > _MAX_EXACT_BOUND)
                ):
                    raise SpecValueError(
                        str(metric),
                        f"{bound!r} is not a finite number (the gate compares the metric with it)",
                        f"write a number without quotes, e.g. {metric}: 0.7",
                    )
        return v


DEFAULT_GATES: dict[str, GateSpec] = {
    "multiclass": GateSpec(max={"log_loss_ratio": 1.0}),
    "regression": GateSpec(max={"rmse_ratio": 1.0}),
}


class LifecycleSpec(_Strict):
    """One model's lifecycle, as written in its ``defs.yaml`` (the component's attributes)."""

    name: StrictStr = Field(description="The model's name: registry name, default key prefix.")
    key_prefix: tuple[StrictStr, ...] | None = Field(
        default=None,
        description="Asset key prefix (default ``[name]``; ``[]`` for none: at most one "
        "instance of a code location may use none).",
    )
    group: StrictStr | None = Field(
        default=None,
        description="Asset group (default: the name): letters, digits and underscores "
        "(Dagster's rule for names).",
    )
    data: DataSpec
    features: FeatureSpec
    target: TargetSpec
    gate: GateSpec | None = Field(
        default=None,
        description="Default: binary from settings.quality_gate; multiclass log_loss_ratio < "
        "1; regression rmse_ratio < 1.",
    )
    window: TrainingWindow | None = Field(default=None, description="Default: settings.window.")
    drift: DriftPolicy | None = Field(
        default=None,
        description="Drift policy (warn_share, retrain_on_dataset_drift, cooldown_minutes, "
        "min_rows: a day with fewer rows is 'insufficient_data', not drift, ...). "
        "Default: settings.drift.",
    )
    arrival_cron: StrictStr | None = Field(
        default=None, description="Default: settings.arrival_cron."
    )
    default_run: StrictBool = Field(
        default=True,
        description="``mlx lifecycle`` without ``--model`` runs this instance (false: only when "
        "named, ``-m NAME``, or with ``--all``); the UI, sensor and schedule have it either way.",
    )
    rollout: dict[str, Any] = Field(
        default_factory=dict,
        description="The canary rollout of ``model_deployment`` (when the composition has a "
        "model_server): keys of mlx_plugins.model_servers.rollout.RolloutPolicy: steps "
        "([10, 50, 100]), hold_requests (200), hold_seconds, max_step_seconds (600), rule "
        "{max_error_rate: 0.01, max_p99_ms: 1000, max_shed_rate, min_requests: 20}. Checked "
        "when the definitions are built with a model_server.",
    )
    ml_platform: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of the composition's ml_platform plugin config for this model "
        "(e.g. ``{hidden: [32], epochs: 10}``): the model spec.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _identifier(v, "name")

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for part in v or ():
            _identifier(part, "key_prefix")
        return v

    @field_validator("group")
    @classmethod
    def _group(cls, v: str | None) -> str | None:
        if v is not None and not _DAGSTER_NAME.fullmatch(v):
            good = re.sub(r"[^A-Za-z0-9_]+", "_", v).strip("_") or "my_group"
            raise ValueError(
                f"group {v!r} is not a valid Dagster group name: Dagster allows only letters, "
                "digits and underscores in names"
                f"\nfix: write e.g. group: {good}"
            )
        return v

    @field_validator("window", mode="before")
    @classmethod
    def _window_days(cls, v: object) -> object:
        if isinstance(v, dict):
            for k in ("train_start", "train_end", "test_start", "test_end"):
                _real_date(v.get(k), k)
        return v

    @field_validator("arrival_cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from mlx_plugins.kernel.cron import check_cron

        return check_cron(v)

    @model_validator(mode="after")
    def _check(self) -> "LifecycleSpec":
        if self.window is not None:
            first = date.fromisoformat(self.window.train_start)
            last = date.fromisoformat(self.window.test_end)
            end = self.data.end
            if first < self.data.start or (end is not None and last >= end):
                raise SpecValueError(
                    "window",
                    f"window {self.window.train_start}..{self.window.test_end} is not inside "
                    f"the data's days {self.data.start}..{end - timedelta(days=1) if end else ''}",
                    "move the window or data.start/data.end",
                )
        columns = set(self.features.columns)
        if self.target.column in columns:
            raise SpecValueError(
                "target.column",
                f"{self.target.column!r} is also a feature",
                "remove it from features.numeric/categorical (the model must not see its target)",
            )
        if self.gate is not None:
            allowed = GATE_METRICS[self.target.kind]
            for side, rules in (("min", self.gate.min), ("max", self.gate.max)):
                for m in rules:
                    if m not in allowed:
                        raise SpecValueError(
                            f"gate.{side}.{m}",
                            f"gate metric {m!r} is not a {self.target.kind} metric (target.kind "
                            f"is {self.target.kind})",
                            f"use one of the {self.target.kind} metrics: {', '.join(allowed)}",
                        )
        return self


class Lifecycle:
    """A :class:`LifecycleSpec` resolved against the composition's platform settings.

    Args:
        spec: the instance.
        platform: the composition's ``settings`` (defaults for window, gate, drift, cron).
        source_file: the instance's YAML file (for error messages), if it came from one.
    """

    def __init__(
        self,
        spec: LifecycleSpec,
        platform: Platform,
        source_file: str = "",
        *,
        serving: bool = False,
    ) -> None:
        self.spec = spec
        self.platform = platform
        self.source_file = source_file
        self.window: TrainingWindow = spec.window or platform.window
        self.drift: DriftPolicy = spec.drift or platform.drift
        self.arrival_cron: str = spec.arrival_cron or platform.arrival_cron
        self.prefix: tuple[str, ...] = (
            spec.key_prefix if spec.key_prefix is not None else (spec.name,)
        )
        self.serving = serving
        """Whether the code location serves the model (the composition has a model_server)."""

    # names -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def model_name(self) -> str:
        """The registry's model name."""
        return self.spec.name

    @property
    def group(self) -> str:
        return self.spec.group or self.spec.name

    @property
    def task(self) -> TaskKind:
        return self.spec.target.kind

    def key(self, name: str) -> dg.AssetKey:
        """``name`` under the instance's key prefix."""
        return dg.AssetKey([*self.prefix, name])

    def name_of(self, what: str) -> str:
        """A job, sensor or schedule name: ``what`` alone without a key prefix, else
        ``<prefix>__<what>`` (Dagster names allow letters, digits and underscores)."""
        return "__".join((*self.prefix, what))

    def job(self, stage: str) -> str:
        """Job name of a stage: ``reference``, ``daily``, ``training`` or ``monitoring``."""
        return self.name_of(stage)

    @property
    def raw_keys(self) -> dict[str, dg.AssetKey]:
        """Table name -> its raw asset key."""
        return {t.name: self.key(t.asset_name) for t in self.spec.data.tables}

    @property
    def features_key(self) -> dg.AssetKey:
        return self.key(self.spec.features.asset)

    @property
    def training_set_key(self) -> dg.AssetKey:
        return self.key("training_set")

    @property
    def model_key(self) -> dg.AssetKey:
        return self.key("model")

    @property
    def evaluation_key(self) -> dg.AssetKey:
        return self.key("model_evaluation")

    @property
    def registered_key(self) -> dg.AssetKey:
        return self.key("registered_model")

    @property
    def drift_key(self) -> dg.AssetKey:
        return self.key("feature_drift")

    @property
    def incident_key(self) -> dg.AssetKey:
        return self.key("drift_incident_summary")

    @property
    def gate_check(self) -> dg.AssetCheckKey:
        return dg.AssetCheckKey(self.evaluation_key, "beats_baseline")

    @property
    def deployment_key(self) -> dg.AssetKey:
        return self.key("model_deployment")

    @property
    def job_assets(self) -> dict[str, tuple[dg.AssetKey, ...]]:
        """Asset keys per job, in lifecycle order (the lifecycle runner plans with these).
        ``training`` ends with ``model_deployment`` when the code location serves models
        (:attr:`serving`)."""
        data = self.spec.data
        daily = (*(self.raw_keys[t.name] for t in data.daily), self.features_key)
        return {
            "reference": tuple(self.raw_keys[t.name] for t in data.reference),
            "daily": daily,
            "training": (
                self.training_set_key,
                self.model_key,
                self.evaluation_key,
                self.registered_key,
                *((self.deployment_key,) if self.serving else ()),
            ),
            "monitoring": (*daily, self.drift_key, self.incident_key),
        }

    # partitions ----------------------------------------------------------------------------
    @cached_property
    def partitions_def(self) -> dg.DailyPartitionsDefinition:
        data = self.spec.data
        return dg.DailyPartitionsDefinition(
            start_date=data.start.isoformat(),
            end_date=data.end.isoformat() if data.end else None,
        )

    @property
    def last_day(self) -> date | None:
        return self.spec.data.end - timedelta(days=1) if self.spec.data.end else None

    # gate ----------------------------------------------------------------------------------
    @property
    def gate(self) -> GateSpec:
        if self.spec.gate is not None:
            return self.spec.gate
        if self.task == "binary":
            g = self.platform.quality_gate
            return GateSpec(
                min={"roc_auc": g.min_roc_auc}, max={"log_loss_ratio": g.max_log_loss_ratio}
            )
        return DEFAULT_GATES[self.task]

    def __repr__(self) -> str:
        return f"Lifecycle({self.name!r}, prefix={list(self.prefix)})"
