"""The MLX asset graph, by lifecycle stage, and its Definitions."""

import warnings

from dagster import BetaWarning

# Two Dagster 1.13 "beta" parameters are deliberate choices here: single-run backfills (a year
# of days in one run, not 365) and data versions from content hashes. Their warnings are not news.
warnings.filterwarnings(
    "ignore", category=BetaWarning, message=r"Parameter `(backfill_policy|data_version)`"
)
