"""Data source plugins: read source tables as polars frames."""
