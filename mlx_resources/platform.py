"""``platform``: the composition's ``settings:`` block as a typed resource.

It carries what every stage needs and no plugin owns: the local home folder, the training
window, the quality gate. Dates are ISO strings because Dagster config has no date type.

``settings.llm`` (the LLM provider group's policy) is not a field: it is its own resource,
``llm_settings`` (:class:`mlx_plugins.llm_providers.settings.LLMSettings`), bound only when the
composition has ``llm_provider`` plugins, so that loading the code location does not infer the
block's config schema when nothing uses it. ``Platform(**composition.settings)`` still accepts
the block (checked, then left out: :meth:`Platform.__init__`).
"""

# No ``from __future__ import annotations`` here: pydantic would evaluate every field's
# annotation from its text when each model is created, at every load of the code location.

import os
from datetime import date
from pathlib import Path

import dagster as dg
from pydantic import ConfigDict, Field, field_validator, model_validator

HOME_ENV = "MLX_HOME"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _iso(v: object) -> str:
    if isinstance(v, date):  # YAML reads 2013-01-01 as a date
        return v.isoformat()
    if not isinstance(v, str):
        raise ValueError(f"{v!r} is not an ISO date (YYYY-MM-DD)")
    try:
        date.fromisoformat(v)
    except ValueError:
        raise ValueError(f"{v!r} is not an ISO date (YYYY-MM-DD)") from None
    return v


class TrainingWindow(dg.Config):
    """Days that train, validate and test the model, split by time (never at random)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # misspelled keys, true for 1: errors

    train_start: str = "2013-01-01"
    train_end: str = "2013-08-31"
    valid_days: int = Field(default=30, ge=1, description="Last days of the train window held out.")
    test_start: str = "2013-09-01"
    test_end: str = "2013-10-31"

    _check_dates = field_validator(
        "train_start", "train_end", "test_start", "test_end", mode="before"
    )(_iso)

    @model_validator(mode="after")
    def _order(self) -> "TrainingWindow":
        a, b, c, d = (
            date.fromisoformat(x)
            for x in (self.train_start, self.train_end, self.test_start, self.test_end)
        )
        if not a < b < c <= d:
            raise ValueError("need train_start < train_end < test_start <= test_end")
        if (b - a).days <= self.valid_days:
            raise ValueError("valid_days must be shorter than the training window")
        return self

    def shifted(self, test_end: str) -> "TrainingWindow":
        """The same lengths, moved so that the test period ends on ``test_end``."""
        delta = date.fromisoformat(test_end) - date.fromisoformat(self.test_end)
        moved = {
            k: (date.fromisoformat(getattr(self, k)) + delta).isoformat()
            for k in ("train_start", "train_end", "test_start", "test_end")
        }
        return TrainingWindow(valid_days=self.valid_days, **moved)

    def dates(self) -> tuple[date, date, date, date, date]:
        """train_start, valid_start, train_end, test_start, test_end."""
        a, b, c, d = (
            date.fromisoformat(x)
            for x in (self.train_start, self.train_end, self.test_start, self.test_end)
        )
        from datetime import timedelta

        return a, b - timedelta(days=self.valid_days - 1), b, c, d


class QualityGate(dg.Config):
    # misspelled keys, true for 1, .inf and .nan: errors
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    min_roc_auc: float = Field(default=0.6, ge=0, le=1)
    max_log_loss_ratio: float = Field(
        default=1.0, gt=0, description="Model log loss over the base-rate predictor's."
    )


class DriftPolicy(dg.Config):
    """What the drift sensor does with a day's drift (the detector decides what drifted)."""

    # misspelled keys, true for 1, .inf and .nan (cooldown_minutes: .inf would overflow the
    # sensor's time arithmetic): errors
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    warn_share: float = Field(
        default=0.25, ge=0, le=1, description="Share of drifted columns that logs a warning."
    )
    retrain_on_dataset_drift: bool = Field(
        default=True, description="Request retraining when the detector's dataset rule fires."
    )
    cooldown_minutes: float = Field(
        default=360, ge=0, description="No second retraining within this many minutes."
    )
    shift_window: bool = Field(
        default=True, description="Retrain on the window that ends at the drifted day."
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Retraining runs requested for one drift event before the sensor gives up "
        "on it (a failed run makes its event eligible again until then).",
    )
    min_rows: int = Field(
        default=0,
        ge=0,
        description="A day with fewer rows than this is reported as 'insufficient_data' (never "
        "as drift: no warning, no retraining, no incident); 0 turns the rule off.",
    )


class Platform(dg.ConfigurableResource):
    home: str = Field(default="", description=f"Local data home; {HOME_ENV} overrides.")
    lifecycles: list[str] | None = Field(
        default=None,
        description="Names of the lifecycle instances to load from the defs folder (default: "
        "every instance there).",
    )
    defs_folder: str = Field(
        default="",
        description="Folder of lifecycle instances (<name>/defs.yaml); relative to the "
        "composition file; default: the project's mlx_assets/defs.",
    )
    window: TrainingWindow = TrainingWindow()
    quality_gate: QualityGate = QualityGate()
    drift: DriftPolicy = DriftPolicy()
    arrival_cron: str = Field(
        default="* * * * *",
        description="How often the arrival schedule materializes the next unmonitored day.",
    )

    model_config = ConfigDict(extra="forbid", strict=True)  # misspelled keys, true for 1: errors

    def __init__(self, **data: object) -> None:
        """Like any resource's, but the composition's ``settings:`` block as a whole builds a
        Platform (``mlx serving stop`` does ``Platform(**settings)``): its ``llm`` key is
        checked as :class:`~mlx_plugins.llm_providers.settings.LLMGroupSettings` and left out,
        the group's policy being the ``llm_settings`` resource (``mlx_assets.build`` validates
        it there, with errors naming ``settings.llm.<key>``).

        Raises:
            pydantic.ValidationError: a bad value, ``llm``'s included (located under ``llm``).
        """
        if "llm" in data:
            from mlx_plugins.llm_providers.settings import LLMSettings

            LLMSettings.model_validate({"llm": data.pop("llm")})
        super().__init__(**data)

    @field_validator("arrival_cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from mlx_plugins.kernel.cron import check_cron

        return check_cron(v)

    @property
    def home_path(self) -> Path:
        raw = os.environ.get(HOME_ENV) or self.home or str(REPO_ROOT / ".mlx_home")
        return Path(raw).expanduser().resolve()

    def path(self, *parts: str) -> Path:
        p = self.home_path.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p
