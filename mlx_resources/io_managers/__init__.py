"""IO managers for the MLX asset graph."""

from mlx_resources.io_managers.polars_io import (
    ALLOW_MISSING_PARTITIONS_KEY,
    PARTITION_EXPR_KEY,
    CorruptPartitionFileError,
    MissingPartitionFileError,
    PartitionSchemaMismatchError,
    PartitionSplitError,
    PolarsIOManager,
    PolarsIOManagerError,
    StorageAccessError,
    UnstorableDtypeError,
    content_hash,
    polars_output,
)

__all__ = [
    "ALLOW_MISSING_PARTITIONS_KEY",
    "PARTITION_EXPR_KEY",
    "CorruptPartitionFileError",
    "MissingPartitionFileError",
    "PartitionSchemaMismatchError",
    "PartitionSplitError",
    "PolarsIOManager",
    "PolarsIOManagerError",
    "StorageAccessError",
    "UnstorableDtypeError",
    "content_hash",
    "polars_output",
]
