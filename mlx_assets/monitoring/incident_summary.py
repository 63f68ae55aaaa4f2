"""A drift incident summary per drift event, downstream of ``feature_drift``.

For each day whose drift severity is not ``ok`` (a drift event), the summary states the day's
drift (share, severity, the top drifted columns by statistic, the report), the current model's
metrics (the latest ``model_evaluation``) and the decision taken (retraining requested, inside
the current model's window, or watch only). It is written to
``<home>/reports/incidents/<day>.md`` and shown as the partition's metadata.

With ``llm_provider`` plugins in the composition the summary is written by them through a
:class:`ProviderGroup` (parallel over days, breakers, retries, failover, persistent cache in
``<home>/cache/llm``) run with the composition's ``settings.llm`` (the ``llm_settings``
resource, :data:`LLM_SETTINGS_KEY`, required only then); a day the providers could not
answer, and every day when no provider is configured, gets a deterministic template summary
labelled ``template (no LLM provider)``, so the lifecycle never needs an API key.
"""

from typing import TYPE_CHECKING, Any

import dagster as dg

from mlx_assets.component.spec import Lifecycle
from mlx_assets.monitoring.events import DriftObservation
from mlx_assets.partitions import SINGLE_RUN
from mlx_assets.versioning import code_version
from mlx_resources.io_managers.frames import DataFrame
from mlx_resources.platform import Platform

if TYPE_CHECKING:
    import polars as pl


INCIDENT_ASSET = "drift_incident_summary"
LLM_SETTINGS_KEY = "llm_settings"
"""Resource key of ``settings.llm`` (:class:`mlx_plugins.llm_providers.settings.LLMSettings`),
bound and required only when the composition has ``llm_provider`` plugins."""
TOP_COLUMNS = 5
TEMPLATE_LABEL = "template (no LLM provider)"
SYSTEM = (
    "You write short incident summaries for an ML platform's on-call engineer. Use only the "
    "facts given. Four sentences at most, then one line starting 'Next step:'."
)
METRICS = ("roc_auc", "log_loss", "brier", "baseline_log_loss")


def observations(
    instance: dg.DagsterInstance, days: list[str], drift_key: dg.AssetKey
) -> dict[str, DriftObservation]:
    """Each day's ``DriftObservation``: the metadata of its latest ``feature_drift``
    materialization (days never materialized, or unreadable, are left out)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=drift_key, asset_partitions=days),
        limit=max(len(days) * 4, 10),
        ascending=False,
    ).records
    out: dict[str, DriftObservation] = {}
    for record in records:
        mat = record.asset_materialization
        if mat is None or mat.partition is None or mat.partition in out:
            continue
        try:
            out[mat.partition] = DriftObservation.from_metadata(mat.metadata, day=mat.partition)
        except ValueError:
            continue
    return out


def model_metrics(instance: dg.DagsterInstance, evaluation_key: dg.AssetKey) -> dict[str, float]:
    """Headline metrics of the latest ``model_evaluation`` (empty before the first): for a
    binary model ``METRICS``, for others every number of its metadata."""
    event = instance.get_latest_materialization_event(evaluation_key)
    mat = event.asset_materialization if event else None
    if mat is None:
        return {}
    out = {}
    for key, entry in mat.metadata.items():
        value = getattr(entry, "value", None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    if any(k in out for k in METRICS):  # a binary model: its four headline metrics
        return {k: out[k] for k in METRICS if k in out}
    return out


def top_columns(rows: "pl.DataFrame", n: int = TOP_COLUMNS) -> list[dict[str, Any]]:
    """The day's drifted columns first, then by statistic, at most ``n``."""
    if rows.is_empty():
        return []
    ranked = rows.sort(["drifted", "statistic"], descending=[True, True], nulls_last=True)
    return ranked.head(n).select("column", "test", "statistic", "p_value", "drifted").to_dicts()


def decision(obs: DriftObservation) -> str:
    """What the platform does about the day (the drift sensor's rule, in words)."""
    if obs.reference_end is not None and obs.day <= obs.reference_end:
        return (
            f"no retraining: {obs.day} is inside the current model's window "
            f"(ends {obs.reference_end})"
        )
    if obs.severity == "retrain":
        return "retraining requested by drift_retrain_sensor (once per day, after its cooldown)"
    return "watch: drift below the retraining rule, no retraining"


def facts(obs: DriftObservation, cols: list[dict[str, Any]], metrics: dict[str, float]) -> str:
    """The facts of one incident as plain lines (the LLM prompt and the template's body)."""
    lines = [
        f"Day: {obs.day}",
        f"Severity: {obs.severity}; drift share {obs.drift_share:.0%} of monitored columns; "
        f"dataset drift {'yes' if obs.dataset_drift else 'no'}; {obs.rows} rows compared",
        "Top columns: "
        + (
            "; ".join(
                f"{c['column']} ({c['test']} {_num(c['statistic'])}"
                f"{', drifted' if c['drifted'] else ''})"
                for c in cols
            )
            or "none"
        ),
        "Model metrics: "
        + (", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) or "no evaluated model yet"),
        f"Decision: {decision(obs)}",
    ]
    if obs.report:
        lines.append(f"Report: {obs.report}")
    return "\n".join(lines)


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def template_summary(facts_text: str) -> str:
    """The deterministic summary: the facts under a label saying no LLM wrote it."""
    return f"**Drift incident summary — {TEMPLATE_LABEL}**\n\n" + "\n".join(
        f"- {line}" for line in facts_text.splitlines()
    )


def llm_provider_keys(composition: Any) -> tuple[str, ...]:
    """Resource names of the composition's ``llm_provider`` entries, in failover order.

    Raises:
        CompositionError: an entry writes its ``api_key`` in the file instead of
            ``{env: NAME}`` (keys come only from the environment), naming the entry.
    """
    from mlx_plugins.kernel.errors import CompositionError

    entries = composition.of_kind("llm_provider")
    for i, entry in enumerate(entries):
        key = entry.config.get("api_key")
        if key is not None and not (isinstance(key, dict) and set(key) == {"env"}):
            raise CompositionError(
                composition.source,
                f"plugins.llm_provider[{i}].config.api_key",
                f"the {entry.plugin} API key is written in the file; keys are read only from "
                "the environment",
                f"write api_key: {{env: {entry.plugin.upper()}_API_KEY}} and export "
                f"{entry.plugin.upper()}_API_KEY",
            )
    return tuple(e.name for e in entries)


def build_incident_summary(
    lc: Lifecycle, provider_keys: tuple[str, ...] = ()
) -> dg.AssetsDefinition:
    """The instance's ``drift_incident_summary`` asset, requiring the ``llm_provider``
    resources named ``provider_keys`` (in failover order) and, with any, the group's policy
    :data:`LLM_SETTINGS_KEY`; empty: template summaries only, neither required."""
    required = {"platform", *provider_keys, *((LLM_SETTINGS_KEY,) if provider_keys else ())}

    @dg.asset(
        key=lc.incident_key,
        ins={"feature_drift": dg.AssetIn(key=lc.drift_key)},
        partitions_def=lc.partitions_def,
        backfill_policy=SINGLE_RUN,
        group_name=lc.group,
        kinds={"markdown"},
        code_version=code_version(__file__),
        required_resource_keys=required,
        description="A drift incident summary per drift event (top columns, model metrics, "
        "decision), written by the configured LLM providers or, without any, a deterministic "
        "template labelled as such. Files in <home>/reports/incidents/<day>.md.",
    )
    def drift_incident_summary(
        context: dg.AssetExecutionContext, feature_drift: DataFrame
    ) -> dg.MaterializeResult:
        import polars as pl

        from mlx_resources.atomic import atomic_write_text

        platform: Platform = context.resources.platform
        days = list(context.partition_keys)
        seen = observations(context.instance, days, lc.drift_key)
        metrics = model_metrics(context.instance, lc.evaluation_key)
        by_day = {
            d.isoformat(): f for (d,), f in feature_drift.partition_by("date", as_dict=True).items()
        }
        incidents: dict[str, str] = {}
        for day in days:
            obs = seen.get(day)
            if obs is not None and obs.severity in ("warn", "retrain"):
                incidents[day] = facts(obs, top_columns(by_day.get(day, pl.DataFrame())), metrics)
        written, group_meta = _summaries(context, provider_keys, platform, incidents)
        out_dir = platform.path("reports", "incidents", *lc.prefix)
        for day in days:
            if day not in incidents:
                context.add_asset_metadata(
                    {"incident": dg.MetadataValue.bool(False)}, partition_key=day
                )
                continue
            text, author = written[day]
            path = atomic_write_text(out_dir / f"{day}.md", text + "\n")
            context.add_asset_metadata(
                {
                    "incident": dg.MetadataValue.bool(True),
                    "author": dg.MetadataValue.text(author),
                    "summary": dg.MetadataValue.md(text),
                    "path": dg.MetadataValue.path(str(path)),
                    # the lifecycle re-writes a summary whose file is gone or changed
                    "byte_size": dg.MetadataValue.int(path.stat().st_size),
                },
                partition_key=day,
            )
        if incidents:
            context.log.info(f"{len(incidents)} drift incident summaries in {out_dir}")
        return dg.MaterializeResult(metadata=group_meta)

    return drift_incident_summary


def _summaries(
    context: dg.AssetExecutionContext,
    provider_keys: tuple[str, ...],
    platform: Platform,
    incidents: dict[str, str],
) -> tuple[dict[str, tuple[str, str]], dict[str, Any]]:
    """Day -> (summary, author) and the run's LLM metadata (usage, cost, breakers)."""
    template = {day: (template_summary(f), TEMPLATE_LABEL) for day, f in incidents.items()}
    if not provider_keys or not incidents:
        return template, {"llm_providers_configured": dg.MetadataValue.int(len(provider_keys))}
    from mlx_plugins.llm_providers.group import LLMRequest, ProviderGroup

    group = ProviderGroup(
        {key: getattr(context.resources, key) for key in provider_keys},
        getattr(context.resources, LLM_SETTINGS_KEY).llm,
        cache_dir=platform.path("cache", "llm"),
    )
    try:
        days = list(incidents)
        results = group.run([LLMRequest(prompt=incidents[d], system=SYSTEM, id=d) for d in days])
        meta = group.to_metadata()
    finally:
        group.close()
    out = dict(template)
    failed = []
    for day, result in zip(days, results, strict=True):
        if result.ok and result.text:
            body = f"**Drift incident summary — written by {result.provider} ({result.model})**"
            text = f"{body}\n\n{result.text.strip()}\n\n---\n\n{incidents[day]}"
            out[day] = (text, f"llm: {result.provider}")
        else:
            failed.append(f"{day} ({result.error_kind})")
    if failed:
        context.log.warning(
            f"no provider answered for {len(failed)} incidents, template summaries written: "
            + ", ".join(failed[:10])
        )
    meta["llm_providers_configured"] = dg.MetadataValue.int(len(provider_keys))
    return out, meta
