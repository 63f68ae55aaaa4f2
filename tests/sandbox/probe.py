"""A data source whose methods exercise the sandbox (importable by the sandboxed child)."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, ClassVar

import polars as pl
from pydantic import Field

from mlx_plugins.data_sources.base import DataSource, TableInfo
from mlx_plugins.kernel.metadata import PluginMetadata

log = logging.getLogger("tests.sandbox.probe")


class ProbeSource(DataSource):
    metadata: ClassVar[PluginMetadata] = PluginMetadata(
        name="sandbox_probe", kind="data_source", version="0.0.1", capabilities=("tables",)
    )
    rows: int = 5
    token: str = Field(default="", json_schema_extra={"secret": True})

    def tables(self) -> dict[str, TableInfo]:
        return {"t": TableInfo(name="t")}

    def schema(self, table: str) -> dict[str, Any]:
        return {"x": pl.Int64(), "pid": pl.Int64()}

    def read(self, table: str, start: Any = None, end: Any = None) -> pl.DataFrame:
        self.table_info(table)
        return pl.DataFrame({"x": list(range(self.rows))}, schema={"x": pl.Int64()})

    def pid(self) -> int:
        return os.getpid()

    def env(self, name: str) -> str | None:
        return os.environ.get(name)

    def token_length(self) -> int:
        return len(self.token)

    def hog_memory(self, mb: int) -> int:
        block = bytearray(mb * 1024 * 1024)
        return len(block)

    def burn_cpu(self) -> int:
        n = 0
        while True:
            n += 1

    def write_file(self, mb: int) -> int:
        with open("big.bin", "wb") as f:  # in the private working directory
            for _ in range(mb):
                f.write(b"\0" * 1024 * 1024)
        return os.path.getsize("big.bin")

    def open_files(self, n: int) -> int:
        handles = [open(os.devnull) for _ in range(n)]  # noqa: SIM115 - held open on purpose
        for h in handles:
            h.close()
        return len(handles)

    def connect(self, port: int) -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return "connected"

    def say(self, text: str) -> str:
        log.info("probe says %s", text)
        return text

    def fail(self) -> None:
        raise ValueError("probe failed on purpose")
