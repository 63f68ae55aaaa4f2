"""Storage formats of ``PolarsIOManager``, without importing the file machinery."""

from collections.abc import Mapping
from typing import Literal

Format = Literal["parquet", "ipc"]
Compression = Literal["zstd", "lz4", "uncompressed"]

EXTENSIONS: Mapping[str, str] = {"parquet": ".parquet", "ipc": ".arrow"}
