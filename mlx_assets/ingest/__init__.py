"""Ingest: source tables into partitioned parquet, with blocking schema and null checks."""
