"""``s3``: the ``files`` data source for tables on S3 (or an S3-compatible store).

The same reader as ``files`` (hive or date-column layouts of parquet, CSV and Arrow IPC, lazy
scans that open only the days read; see :mod:`mlx_plugins.data_sources.files`), with every path
an ``s3://`` URL, so ``data_source: [snowflake, s3]`` says what the platform reads from.
Credentials and endpoint go in ``storage_options`` (s3fs vocabulary, ``{env: NAME}`` values);
without them the usual AWS chain applies (environment, profile, instance role).

Example composition entry::

    data_source:
      - name: lake
        plugin: s3
        config:
          storage_options: {key: {env: AWS_ACCESS_KEY_ID}, secret: {env: AWS_SECRET_ACCESS_KEY}}
          files:
            customer_features: {path: s3://ml-lake/features/, date_column: day, hive: true}
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import model_validator

from mlx_plugins.data_sources.files import FilesSource
from mlx_plugins.kernel.metadata import PluginMetadata
from mlx_plugins.kernel.object_store import is_s3


class S3Source(FilesSource):
    """Tables of files on S3: :class:`FilesSource` whose paths must be ``s3://`` URLs."""

    metadata: ClassVar[PluginMetadata] = PluginMetadata(
        name="s3",
        kind="data_source",
        version="1.0.0",
        capabilities=("tables", "parquet", "csv", "ipc", "hive", "s3", "lazy"),
        description="Parquet, CSV or Arrow IPC objects on S3, read lazily (the files reader).",
    )

    @model_validator(mode="after")
    def _s3_paths(self) -> S3Source:
        for name, table in self.files.items():
            if not is_s3(table.path):
                raise ValueError(
                    f"files.{name}.path {table.path!r} is not an s3:// URL; write "
                    "s3://bucket/prefix/ (use the files plugin for local folders)"
                )
        return self
