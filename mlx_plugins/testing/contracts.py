"""The contracts, one class per kind. Each test asserts behaviour a broken plugin would fail."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, Field

from mlx_plugins.kernel.base import HealthStatus, MLXPlugin
from mlx_plugins.kernel.kinds import KINDS
from mlx_plugins.kernel.metadata import PluginMetadata
from mlx_plugins.kernel.registry import import_target


class PluginContract:
    """What every plugin promises: metadata, kind, lifecycle and a health check."""

    @pytest.fixture
    def plugin(self) -> MLXPlugin:  # pragma: no cover - the subclass provides it
        raise NotImplementedError("provide a `plugin` fixture returning a configured instance")

    def test_metadata_is_valid(self, plugin: MLXPlugin) -> None:
        meta = type(plugin).metadata
        assert isinstance(meta, PluginMetadata)
        # Round-trips through validation: name, kind, semver and capabilities are well formed.
        assert PluginMetadata.model_validate(meta.model_dump()) == meta

    def test_subclasses_its_kind(self, plugin: MLXPlugin) -> None:
        kind = KINDS[type(plugin).metadata.kind]
        assert isinstance(plugin, import_target(kind.base_class))

    def test_lifecycle_is_idempotent(self, plugin: MLXPlugin) -> None:
        plugin.open()
        plugin.open()
        plugin.close()
        plugin.close()
        with plugin.session() as p:
            assert p is plugin

    def test_health_check_reports(self, plugin: MLXPlugin) -> None:
        with plugin.session():
            status = plugin.check_health()
        assert isinstance(status, HealthStatus)
        assert status.healthy, status.detail
        assert status.latency_ms >= 0

    def test_is_a_frozen_resource(self, plugin: MLXPlugin) -> None:
        fields = [f for f in type(plugin).model_fields if not f.startswith("_")]
        if not fields:
            pytest.skip("plugin has no config fields")
        with pytest.raises(Exception):  # noqa: B017 - pydantic raises its own frozen error
            setattr(plugin, fields[0], getattr(plugin, fields[0]))


class DataSourceContract(PluginContract):
    """Tables are declared; a partition read returns a polars frame with the declared schema."""

    sample_partition: Any = None  # a datetime.date inside the source's data

    def test_declares_tables(self, plugin: Any) -> None:
        tables = plugin.tables()
        assert tables, "a data source declares at least one table"
        for name, info in tables.items():
            assert info.name == name

    def test_reads_with_declared_schema(self, plugin: Any) -> None:
        import polars as pl

        with plugin.session():
            for name, info in plugin.tables().items():
                day = self.sample_partition if info.partition_column else None
                df = plugin.read(name, day, day)
                assert isinstance(df, pl.DataFrame)
                assert dict(df.schema) == plugin.schema(name), name
                if info.partition_column and day is not None:
                    assert df.height > 0, f"{name} has no rows for {day}"
                    assert set(df[info.partition_column].unique().to_list()) == {day}

    def test_unknown_table_is_a_clear_error(self, plugin: Any) -> None:
        with pytest.raises(KeyError, match="no table 'no_such_table'"):
            plugin.read("no_such_table")


def _learnable_frame(n: int, seed: int) -> Any:
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    cat = rng.choice(["a", "b", "c"], size=n)
    logit = 2.5 * x + np.where(cat == "a", 1.5, -0.5)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return pl.DataFrame({"x": x, "noise": rng.normal(size=n), "cat": cat, "y": y})


def _task_frame(n: int, seed: int) -> Any:
    """Learnable multiclass (``cls``: index 0..2 of ``TASK_CLASSES``, Int32) and regression
    (``amount``: about 1000 +/- 400, in its own units) targets from ``x``, ``z`` and ``cat``."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    x, z = rng.normal(size=n), rng.normal(size=n)
    cat = rng.choice(["a", "b", "c"], size=n)
    scores = np.stack([2 * x, -2 * x + np.where(cat == "a", 1.5, 0.0), 2 * z], axis=1)
    u = rng.random(n)[:, None]
    cls = (np.cumsum(np.exp(scores) / np.exp(scores).sum(1, keepdims=True), 1) < u).sum(1)
    amount = 1000 + 300 * x - 150 * z + np.where(cat == "b", 200.0, 0.0)
    return pl.DataFrame(
        {"x": x, "z": z, "noise": rng.normal(size=n), "cat": cat, "cls": cls.clip(0, 2)}
    ).with_columns(pl.col("cls").cast(pl.Int32), amount=amount + rng.normal(scale=50.0, size=n))


TASK_CLASSES = ("up", "down", "side")


class MLPlatformContract(PluginContract):
    """Trains on a learnable problem, beats chance, and predicts probabilities; for each of
    the platform's ``supported_tasks`` beyond binary, predicts in that task's shape too."""

    def test_trains_and_predicts(self, plugin: Any, tmp_path: Any) -> None:
        import numpy as np

        from mlx_plugins.ml_platforms.base import TrainedModel, TrainingSpec

        train, valid, test = (_learnable_frame(n, s) for n, s in ((4000, 1), (1000, 2), (2000, 3)))
        spec = TrainingSpec(
            numeric_features=("x", "noise"),
            categorical_features=("cat",),
            target="y",
            artifact_dir=str(tmp_path / "model"),
        )
        epochs: list[Any] = []
        with plugin.session():
            model = plugin.train(train, valid, spec, on_epoch=epochs.append)
            assert isinstance(model, TrainedModel)
            assert epochs and len(model.history) == len(epochs)
            p = plugin.predict_proba(model, test)
        assert p.shape == (test.height,)
        assert np.all((p >= 0) & (p <= 1))
        from sklearn.metrics import roc_auc_score

        assert roc_auc_score(test["y"].to_numpy(), p) > 0.75

    @pytest.mark.parametrize("task", ["multiclass", "regression"])
    def test_trains_and_predicts_task(self, plugin: Any, tmp_path: Any, task: str) -> None:
        import numpy as np
        from sklearn.metrics import accuracy_score, r2_score

        from mlx_plugins.ml_platforms.base import TrainingSpec, UnsupportedTaskError

        if task not in type(plugin).supported_tasks:
            pytest.skip(f"{type(plugin).metadata.name} does not train {task}")
        train, valid, test = (_task_frame(n, s) for n, s in ((4000, 1), (1000, 2), (2000, 3)))
        spec = TrainingSpec(
            numeric_features=("x", "z", "noise"),
            categorical_features=("cat",),
            target="cls" if task == "multiclass" else "amount",
            artifact_dir=str(tmp_path / task),
            task=task,  # type: ignore[arg-type]
            classes=TASK_CLASSES if task == "multiclass" else (),
        )
        with plugin.session():
            model = plugin.train(train, valid, spec)
            assert model.spec.task == task and len(model.history) >= 1
            p = plugin.predict(model, test)
            with pytest.raises(UnsupportedTaskError, match="predict"):
                plugin.predict_proba(model, test)
        assert p.dtype == np.float64 and np.isfinite(p).all()
        if task == "multiclass":
            assert p.shape == (test.height, len(TASK_CLASSES))
            assert np.all((p >= 0) & (p <= 1))
            np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
            assert accuracy_score(test["cls"].to_numpy(), p.argmax(axis=1)) > 0.55  # chance 1/3
        else:
            assert p.shape == (test.height,)
            assert r2_score(test["amount"].to_numpy(), p) > 0.5  # in the target's units


class DriftDetectorContract(PluginContract):
    """Same distribution: no dataset drift. Shifted distribution: drift, on the shifted column."""

    def test_detects_shift_and_not_noise(self, plugin: Any) -> None:
        import numpy as np
        import polars as pl

        rng = np.random.default_rng(0)
        n = 5000
        ref = pl.DataFrame(
            {"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.choice(["x", "y"], size=n)}
        )
        same = pl.DataFrame(
            {"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.choice(["x", "y"], size=n)}
        )
        shifted = same.with_columns((pl.col("a") + 2).alias("a"), (pl.col("b") * 3).alias("b"))
        with plugin.session():
            calm = plugin.compare(ref, same)
            moved = plugin.compare(ref, shifted)
        assert not calm.dataset_drift
        assert moved.dataset_drift
        assert {"a", "b"} <= set(moved.drifted_columns)
        assert "c" not in moved.drifted_columns


class LLMProviderContract(PluginContract):
    """Completes with usage, answers in a pydantic schema, classifies errors, hides its key.

    Besides ``plugin`` (answering normally; for structured output it must answer the prompt
    that asks for JSON with a :class:`ContractVerdict`, e.g. a server using
    :func:`contract_answer`), provide ``plugin_with_fault``: a callable taking one of
    ``server_error``, ``rate_limited`` (with ``Retry-After: 2``), ``timeout``, ``malformed``,
    ``bad_request`` and returning a plugin whose next call meets that fault (the loopback
    servers in ``mlx_plugins.llm_providers.loopback`` do this for OpenAI- and
    Anthropic-compatible plugins).
    """

    @pytest.fixture
    def plugin_with_fault(self) -> Any:  # pragma: no cover - the subclass provides it
        raise NotImplementedError("provide `plugin_with_fault(fault) -> plugin`")

    def test_completes_and_reports_usage(self, plugin: Any) -> None:
        from mlx_plugins.llm_providers.base import Completion

        with plugin.session() as live:
            c = live.complete("Say hello to the platform.")
        assert isinstance(c, Completion)
        assert c.text.strip()
        assert c.provider == type(plugin).metadata.name
        assert c.input_tokens > 0 and c.output_tokens > 0
        assert c.cost_usd == pytest.approx(live.cost(c.input_tokens, c.output_tokens))

    def test_structured_output_through_a_schema(self, plugin: Any) -> None:
        with plugin.session() as live:
            verdict, c = live.complete_structured("Judge: is the sky blue?", ContractVerdict)
        assert isinstance(verdict, ContractVerdict)
        assert 0 <= verdict.score <= 1
        assert c.output_tokens > 0

    @pytest.mark.parametrize(
        ("fault", "retriable"),
        [
            ("server_error", True),
            ("rate_limited", True),
            ("timeout", True),
            ("malformed", True),
            ("bad_request", False),
        ],
    )
    def test_errors_are_classified(
        self, plugin_with_fault: Any, fault: str, retriable: bool
    ) -> None:
        from mlx_plugins.llm_providers.base import LLMError

        p = plugin_with_fault(fault)
        with p.session() as live, pytest.raises(LLMError) as info:
            live.complete("hello")
        err = info.value
        assert err.retriable is retriable, (fault, err.kind, str(err))
        if fault == "rate_limited":
            assert err.kind == "rate_limited" and err.retry_after == pytest.approx(2.0)
        if p.api_key:
            assert p.api_key not in str(err)


def contract_answer(prompt: str) -> str:
    """A server-side answer that satisfies the contract: a ``ContractVerdict`` as JSON when the
    prompt asks for JSON, else a short echo."""
    if "JSON schema" in prompt:
        return '```json\n{"label": "yes", "score": 0.9}\n```'
    return "hello from the contract server: " + " ".join(prompt.split()[:8])


class ContractVerdict(BaseModel):
    """The structured answer the ``llm_provider`` contract asks for."""

    label: str
    score: float = Field(ge=0, le=1)
