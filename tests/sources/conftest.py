"""Fixtures for the enterprise data-source tests: a loopback Snowflake (fakesnow's server behind
the official connector) and a loopback S3 (moto's server)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from tests.sources._s3_server import S3, s3_server
from tests.sources._snowflake_server import Server, snowflake_server, unique_database

DAYS = [dt.date(2024, 1, d) for d in range(1, 6)]


@pytest.fixture(scope="module")
def sf_server() -> Iterator[Server]:
    with snowflake_server() as server:
        yield server


@pytest.fixture
def sf_database(sf_server: Server) -> str:
    """A fresh database with ``PUBLIC.CUSTOMER_FEATURES`` (4 rows per day of ``DAYS``) and
    ``PUBLIC.SEGMENTS``, created through the real connector."""
    import snowflake.connector

    database = unique_database()
    conn = snowflake.connector.connect(
        user=sf_server.user,
        password=sf_server.password,
        account="fakesnow",
        **sf_server.connection_args(database),
    )
    try:
        cur = conn.cursor()
        cur.execute(f"CREATE DATABASE {database}")
        cur.execute(f"CREATE SCHEMA {database}.PUBLIC")
        cur.execute(f"USE SCHEMA {database}.PUBLIC")
        cur.execute(
            "CREATE TABLE CUSTOMER_FEATURES (DAY DATE, CUSTOMER_ID NUMBER(38,0), "
            "SPEND NUMBER(10,2), SEGMENT VARCHAR, SEEN_AT TIMESTAMP_NTZ)"
        )
        rows = [
            (day, i, float(i) * day.day + 0.25, "ab"[i % 2], dt.datetime(2024, 1, day.day, i))
            for day in DAYS
            for i in range(4)
        ]
        cur.executemany("INSERT INTO CUSTOMER_FEATURES VALUES (%s, %s, %s, %s, %s)", rows)
        cur.execute("CREATE TABLE SEGMENTS (SEGMENT VARCHAR, LABEL VARCHAR)")
        cur.execute("INSERT INTO SEGMENTS VALUES ('a', 'A'), ('b', 'B')")
    finally:
        conn.close()
    sf_server.statements.clear()
    return database


def sf_config(server: Server, database: str, **over: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "account": "fakesnow",
        "user": server.user,
        "password": server.password,
        "database": database,
        "schema_name": "PUBLIC",
        "retries": 1,
        "login_timeout_s": 10,
        "connection_args": server.connection_args(database),
        "read_tables": {
            "customer_features": {"table": "customer_features", "date_column": "day"},
            "segments": {"table": "segments"},
        },
    }
    config.update(over)
    return config


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with s3_server() as server:
        yield server
