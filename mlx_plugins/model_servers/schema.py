"""The request schema of a served model: plain pydantic, no platform imports, so that a
server's worker can load it without the plugin kernel (and Dagster)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Task = Literal["binary", "multiclass", "regression"]
UnknownCategory = Literal["missing", "reject"]


class RequestSchema(BaseModel):
    """What a served model accepts: built from the version's feature spec and preprocessing.

    A request row is a JSON object with one key per feature. Numeric features take a JSON
    number, ``true``/``false`` or ``null`` (``null`` is a missing value, imputed as training
    did: the training mean); categorical features take a string or ``null``. Unknown keys are
    refused (a typo in a feature name is a 422, not a silently imputed feature).
    """

    model_config = ConfigDict(frozen=True)

    numeric: tuple[str, ...]
    """Numeric feature names, in the model's column order."""
    categorical: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """Categorical feature -> the categories seen in training (sorted)."""
    unknown_category: UnknownCategory = "missing"
    """``missing``: a category not seen in training is treated like a null, as the training
    preprocessing does (index 0); ``reject``: it is a 422 naming the field and the value."""
    max_batch_rows: int = Field(default=1024, ge=1)
    """Most rows in one request; more is answered 413."""
    task: Task = "binary"
    classes: tuple[str, ...] = ()
    """Class labels of a ``multiclass`` model, in output order (empty otherwise)."""

    @property
    def features(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical)


def example_row(schema: RequestSchema) -> dict[str, Any]:
    """One valid request row for ``schema``: 0.0 per numeric feature, the first known category
    (or null) per categorical one."""
    row: dict[str, Any] = {name: 0.0 for name in schema.numeric}
    row.update({name: (cats[0] if cats else None) for name, cats in schema.categorical.items()})
    return row
