"""Option types shared by the polars detector's config and its statistics (no numpy, no
imports of either module, so that neither imports the other)."""

from __future__ import annotations

from typing import Literal

KSMethod = Literal["auto", "exact", "asymp"]
"""How the KS p-value is computed: ``exact`` distribution, ``asymp`` (asymptotic) or ``auto``."""
Binning = Literal["quantile", "equal_width"]
"""How numeric columns are binned for PSI / Jensen-Shannon: reference quantiles or equal width."""
