"""The ``snowflake`` data source through the official connector (via dagster-snowflake) against
fakesnow's server on loopback: the SQL the warehouse runs (pushdown, quoting), Arrow into
polars, idempotent write-back, credentials, cancellation, and the data-source contract."""

from __future__ import annotations

import _thread
import contextlib
import datetime as dt
import threading

import dagster as dg
import polars as pl
import pytest
from pydantic import ValidationError

from mlx_plugins.data_sources.snowflake import (
    IdentifierError,
    SnowflakeCredentialsError,
    SnowflakeError,
    SnowflakeSource,
    quote_identifier,
    quote_qualified,
)
from mlx_plugins.testing import DataSourceContract
from tests.sources._snowflake_server import Server, snowflake_server
from tests.sources.conftest import DAYS, sf_config

# fakesnow's own note about its DuckDB result copies, not about the code under test
pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")


class TestSnowflakeContract(DataSourceContract):
    sample_partition = DAYS[2]

    @pytest.fixture
    def plugin(self, sf_server: Server, sf_database: str) -> SnowflakeSource:
        return SnowflakeSource(**sf_config(sf_server, sf_database))


def _source(server: Server, database: str, **over: object) -> SnowflakeSource:
    return SnowflakeSource(**sf_config(server, database, **over))


# -- reads: pushdown ---------------------------------------------------------------------------


def test_day_range_and_columns_are_pushed_into_the_executed_sql(sf_server, sf_database):
    with _source(sf_server, sf_database).session() as src:
        df = src.read("customer_features", DAYS[1], DAYS[2], columns=["day", "spend"])
    assert df.schema == pl.Schema({"day": pl.Date(), "spend": pl.Float64()})
    assert sorted(set(df["day"].to_list())) == [DAYS[1], DAYS[2]]
    assert df.height == 8
    # the statement the warehouse received: explicit columns, the range as bound parameters
    reads = [(s, b) for s, b in sf_server.statements if s.startswith('SELECT "DAY", "SPEND"')]
    assert len(reads) == 1
    sql, bindings = reads[0]
    assert sql == 'SELECT "DAY", "SPEND" FROM "CUSTOMER_FEATURES" WHERE "DAY" >= ? AND "DAY" < ?'
    assert [b["type"] for b in bindings.values()] == ["DATE", "DATE"]
    days = [
        dt.date(1970, 1, 1) + dt.timedelta(milliseconds=int(b["value"])) for b in bindings.values()
    ]
    assert days == [DAYS[1], DAYS[3]]  # end + 1 day: a half-open range
    assert "2024" not in sql  # values are never spliced into the text


def test_all_columns_are_named_and_an_open_range_has_one_bound(sf_server, sf_database):
    with _source(sf_server, sf_database).session() as src:
        df = src.read("customer_features", DAYS[3], None)
    assert sorted(set(df["day"].to_list())) == DAYS[3:]
    assert df.columns == ["day", "customer_id", "spend", "segment", "seen_at"]
    assert df.schema["seen_at"] == pl.Datetime("us") and df.schema["customer_id"] == pl.Int64()
    assert sf_server.sql('FROM "CUSTOMER_FEATURES" WHERE "DAY" >= ?') == [
        'SELECT "DAY", "CUSTOMER_ID", "SPEND", "SEGMENT", "SEEN_AT" FROM "CUSTOMER_FEATURES" '
        'WHERE "DAY" >= ?'
    ]


def test_results_come_as_arrow_batches_straight_into_polars(sf_server, sf_database, monkeypatch):
    """The read fetches the connector's Arrow batches; neither the connector's pandas fetches
    nor polars' pandas conversion is used (no pandas detour)."""
    from snowflake.connector.cursor import SnowflakeCursor

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pandas detour")

    for name in ("fetch_pandas_all", "fetch_pandas_batches", "fetchall", "fetchmany"):
        monkeypatch.setattr(SnowflakeCursor, name, refuse)
    monkeypatch.setattr(pl, "from_pandas", refuse)
    real = SnowflakeCursor.fetch_arrow_batches
    calls: list[int] = []

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SnowflakeCursor, "fetch_arrow_batches", spy)
    with _source(sf_server, sf_database).session() as src:
        df = src.read("customer_features", DAYS[0], DAYS[1])
    assert df.height == 8 and calls == [1]


def test_a_query_table_gets_the_range_around_it(sf_server, sf_database):
    tables = {
        "spend_by_segment": {
            "query": "SELECT day, segment, SUM(spend) AS total FROM customer_features "
            "GROUP BY day, segment",
            "date_column": "day",
        }
    }
    with _source(sf_server, sf_database, read_tables=tables).session() as src:
        df = src.read("spend_by_segment", DAYS[0], DAYS[0])
        sql, qid = src.last_query("spend_by_segment")
    assert df.height == 2 and set(df["day"]) == {DAYS[0]}
    assert sql.startswith('SELECT "DAY", "SEGMENT", "TOTAL" FROM (SELECT day, segment')
    assert sql.endswith(') AS "MLX_QUERY" WHERE "DAY" >= ? AND "DAY" < ?')
    assert qid  # the warehouse's query id, for lineage


def test_a_timestamp_partition_column_reads_as_date(sf_server, sf_database):
    tables = {"seen": {"table": "customer_features", "date_column": "seen_at"}}
    with _source(sf_server, sf_database, read_tables=tables).session() as src:
        assert src.schema("seen")["seen_at"] == pl.Date()
        df = src.read("seen", DAYS[4], DAYS[4])
    assert df.height == 4 and set(df["seen_at"]) == {DAYS[4]}


def test_an_empty_range_has_the_schema(sf_server, sf_database):
    with _source(sf_server, sf_database).session() as src:
        df = src.read("customer_features", dt.date(2030, 1, 1), dt.date(2030, 1, 2))
        assert df.height == 0 and dict(df.schema) == src.schema("customer_features")


# -- identifiers -------------------------------------------------------------------------------

HOSTILE = [
    'customer_features"; DROP TABLE segments; --',
    "customer_features; DROP TABLE segments",
    "a b",
    "x' OR '1'='1",
    '"unbalanced',
    '"a"b"',
    "",
    "\x00evil",
    "a" * 300,
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_identifiers_are_refused_naming_the_field(sf_server, name):
    tables = {"t": {"table": name}}
    with pytest.raises(ValidationError, match=r"read_tables\.t\.table"):
        _source(sf_server, "DB", read_tables=tables)
    with pytest.raises(ValidationError, match=r"read_tables\.t\.date_column"):
        _source(sf_server, "DB", read_tables={"t": {"table": "ok", "date_column": name}})
    with pytest.raises(ValidationError, match=r"read_tables\.t\.columns"):
        _source(sf_server, "DB", read_tables={"t": {"table": "ok", "columns": [name]}})


def test_quoting_rules():
    assert quote_identifier("customer_id") == '"CUSTOMER_ID"'
    assert quote_identifier('"Mixed Case"') == '"Mixed Case"'
    assert quote_identifier('"say ""hi"" ; drop"') == '"say ""hi"" ; drop"'
    assert quote_qualified("db.public.t") == '"DB"."PUBLIC"."T"'
    assert quote_qualified('"my.db".s."T x"') == '"my.db"."S"."T x"'
    for bad in ("a.b.c.d", "a..b", ".a", "a.", 'a."b'):
        with pytest.raises(IdentifierError, match="not a table name"):
            quote_qualified(bad)


def test_a_quoted_hostile_name_is_only_a_name(sf_server, sf_database):
    evil = '"SEGMENTS""; DROP TABLE SEGMENTS; --"'
    src = _source(
        sf_server,
        sf_database,
        read_tables={"evil": {"table": evil}, "segments": {"table": "segments"}},
    )
    with src.session() as s:
        with pytest.raises(SnowflakeError, match="describing table 'evil'") as err:
            s.schema("evil")
        assert "fix" in str(err.value).lower()
        assert s.read("segments").height == 2  # still there
    sent = sf_server.sql("DROP TABLE")
    assert sent == ['SELECT * FROM "SEGMENTS""; DROP TABLE SEGMENTS; --"']


# -- write-back --------------------------------------------------------------------------------


def _scores(days: list[dt.date], value: float) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "day": [d for d in days for _ in range(3)],
            "customer_id": [i for _ in days for i in range(3)],
            "score": [value] * (3 * len(days)),
        }
    )


def _count(src: SnowflakeSource, table: str) -> pl.DataFrame:
    return src.read(table).sort("day", "customer_id")


def test_write_back_is_idempotent_per_day_range(sf_server, sf_database):
    over = {
        "write_tables": {"scores": {"table": "customer_scores", "date_column": "day"}},
        "read_tables": {"scores": {"table": "customer_scores", "date_column": "day"}},
    }
    with _source(sf_server, sf_database, **over).session() as src:
        assert src.write("scores", _scores(DAYS[:2], 0.5), DAYS[0], DAYS[1]) == 6
        first = _count(src, "scores")
        assert src.write("scores", _scores(DAYS[:2], 0.5), DAYS[0], DAYS[1]) == 6  # a re-run
        assert _count(src, "scores").equals(first)
        # re-scoring one day replaces that day only
        src.write("scores", _scores(DAYS[1:2], 0.9), DAYS[1], DAYS[1])
        after = _count(src, "scores")
    assert after.height == 6
    assert after.filter(pl.col("day") == DAYS[0])["score"].to_list() == [0.5] * 3
    assert after.filter(pl.col("day") == DAYS[1])["score"].to_list() == [0.9] * 3
    sent = [s.split(" (")[0] for s in sf_server.sql("") if not s.startswith(("SELECT", "select"))]
    assert sent[:5] == [
        'CREATE TABLE IF NOT EXISTS "CUSTOMER_SCORES"',
        "BEGIN",
        'DELETE FROM "CUSTOMER_SCORES" WHERE "DAY" >= ? AND "DAY" < ?',
        'INSERT INTO "CUSTOMER_SCORES"',
        "COMMIT",
    ]


def test_a_failed_write_rolls_back_and_keeps_the_previous_rows(sf_server, sf_database):
    over = {
        "write_tables": {"scores": {"table": "customer_scores", "date_column": "day"}},
        "read_tables": {"scores": {"table": "customer_scores", "date_column": "day"}},
    }
    with _source(sf_server, sf_database, **over).session() as src:
        src.write("scores", _scores(DAYS[:1], 0.5), DAYS[0], DAYS[0])
        bad = _scores(DAYS[:1], 0.7).with_columns(pl.lit("x").alias("not_a_column"))
        with pytest.raises(SnowflakeError, match=r"writing 'scores' .* failed"):
            src.write("scores", bad, DAYS[0], DAYS[0])
        assert sf_server.sql("ROLLBACK")
        assert _count(src, "scores")["score"].to_list() == [0.5] * 3


def test_write_refuses_rows_outside_the_range(sf_server, sf_database):
    over = {"write_tables": {"scores": {"table": "customer_scores", "date_column": "day"}}}
    with _source(sf_server, sf_database, **over).session() as src:
        with pytest.raises(ValueError, match=r"outside 2024-01-01\.\.2024-01-01"):
            src.write("scores", _scores(DAYS[:2], 0.5), DAYS[0], DAYS[0])
        with pytest.raises(KeyError, match="no write table 'nope'"):
            src.write("nope", _scores(DAYS[:1], 0.5), DAYS[0], DAYS[0])
    assert not sf_server.sql("DELETE")


# -- credentials -------------------------------------------------------------------------------


def test_a_wrong_password_is_a_clear_health_result(sf_server, sf_database):
    src = _source(sf_server, sf_database, password="not-the-password")
    with src.session():
        status = src.check_health()
    assert not status.healthy
    assert "account 'fakesnow' refused the login of user 'MLX_TEST' by password" in status.detail
    assert "Incorrect username or password" in status.detail and "Fix:" in status.detail
    assert "not-the-password" not in status.detail
    with src.session(), pytest.raises(SnowflakeCredentialsError):
        src.read("segments")


def test_mlx_health_names_the_refused_login_without_a_traceback(
    sf_server, sf_database, tmp_path, monkeypatch, capsys
):
    from mlx_assets.cli import main

    monkeypatch.setenv("SF_TEST_PASSWORD", "wrong-password-123")
    args = sf_server.connection_args(sf_database)
    comp = tmp_path / "mlx.yaml"
    comp.write_text(
        "plugins:\n"
        "  ml_platform: local_torch\n"
        "  drift_detector: polars\n"
        "  data_source:\n"
        "    - name: warehouse\n"
        "      plugin: snowflake\n"
        "      config:\n"
        "        account: fakesnow\n"
        f"        user: {sf_server.user}\n"
        "        password: {env: SF_TEST_PASSWORD}\n"
        f"        database: {sf_database}\n"
        "        schema_name: PUBLIC\n"
        "        retries: 1\n"
        f"        connection_args: {{host: 127.0.0.1, port: {args['port']}, protocol: http}}\n"
        "        read_tables: {segments: {table: segments}}\n"
    )
    assert main(["health", str(comp)]) == 1
    out = capsys.readouterr()
    line = next(x for x in out.out.splitlines() if "warehouse" in x)
    assert line.startswith("FAIL") and "refused the login of user 'MLX_TEST'" in line
    assert "wrong-password-123" not in out.out + out.err
    assert "Traceback" not in out.out + out.err
    monkeypatch.setenv("SF_TEST_PASSWORD", sf_server.password)
    assert main(["health", str(comp)]) == 0
    assert "ok  warehouse" in capsys.readouterr().out


def test_an_unreachable_account_names_the_address_and_the_fix() -> None:
    """Nobody answers the login (a wrong account or host): one error naming the account, the
    address tried and the fix, at health and at a read; no password in it."""
    import socket

    from mlx_plugins.data_sources.snowflake import SnowflakeUnreachableError

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = {
        "account": "xy12345",
        "user": "MLX_TEST",
        "password": "pw-never-shown-42",
        "retries": 1,
        "login_timeout_s": 1,
        "connection_args": {"host": "127.0.0.1", "port": port, "protocol": "http"},
        "read_tables": {"segments": {"table": "segments"}},
    }
    src = SnowflakeSource(**config)
    with src.session():
        status = src.check_health()
    assert not status.healthy
    assert status.detail.startswith("SnowflakeUnreachableError: snowflake: cannot reach account")
    assert f"'xy12345' at http://127.0.0.1:{port}" in status.detail
    assert "Fix: check account" in status.detail and "pw-never-shown-42" not in status.detail
    with src.session(), pytest.raises(SnowflakeUnreachableError) as err:
        src.read("segments")
    assert isinstance(err.value, ConnectionError)  # a run's retry policy may try again


def _rsa_pem() -> tuple[str, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def test_key_pair_login(sf_database, tmp_path):
    private, public = _rsa_pem()
    other, _ = _rsa_pem()
    with snowflake_server(public_key_pem=public) as server:
        config = sf_config(server, sf_database, password=None, private_key=private)
        with SnowflakeSource(**config).session() as src:
            assert src.check_health().healthy
        config["private_key"] = other
        with SnowflakeSource(**config).session() as src:
            status = src.check_health()
        assert not status.healthy and "by key pair" in status.detail
        assert "JWT token is invalid" in status.detail
        config["private_key"] = "not a key"
        with SnowflakeSource(**config).session() as src:
            status = src.check_health()
        assert not status.healthy
        assert "the private_key for user 'MLX_TEST' can't be read or loaded" in status.detail
        # from a file (a mounted secret), and a path that is not there
        key_file = tmp_path / "rsa_key.p8"
        key_file.write_text(private)
        config.update(private_key=None, private_key_path=str(key_file))
        with SnowflakeSource(**config).session() as src:
            assert src.check_health().healthy
        config["private_key_path"] = str(tmp_path / "missing.p8")
        with SnowflakeSource(**config).session() as src:
            status = src.check_health()
        assert not status.healthy and "missing.p8" in status.detail


def test_password_and_key_together_or_neither_are_refused(sf_server):
    with pytest.raises(
        ValidationError, match="give one of password, private_key, private_key_path"
    ):
        _source(sf_server, "DB", private_key="k")
    with pytest.raises(ValidationError, match=r"give password: \{env: NAME\} or private_key"):
        _source(sf_server, "DB", password=None)


# -- cancellation ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["run terminated (SIGTERM in a Dagster step)", "Ctrl-C"])
def test_an_interrupted_read_cancels_its_query_in_the_warehouse(sf_server, sf_database, how):
    """A terminated run's step gets SIGTERM, which Dagster's handler (installed around step
    execution) raises as DagsterExecutionInterruptedError in the main thread while the query
    runs; Ctrl-C raises KeyboardInterrupt. Either way the query is aborted in the warehouse."""
    import os
    import signal

    from dagster._core.errors import DagsterExecutionInterruptedError, raise_execution_interrupts

    dagster_step = how.startswith("run terminated")
    src = _source(sf_server, sf_database)
    sf_server.aborted.clear()
    sf_server.status_polled.clear()
    sf_server.hold_queries.set()

    def interrupt_once_running() -> None:
        if sf_server.status_polled.wait(timeout=60):
            if dagster_step:
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                _thread.interrupt_main()

    helper = threading.Thread(target=interrupt_once_running, daemon=True)
    expected = DagsterExecutionInterruptedError if dagster_step else KeyboardInterrupt
    scope = raise_execution_interrupts() if dagster_step else contextlib.nullcontext()
    try:
        with src.session() as s:
            s.schema("customer_features")
            with scope:
                helper.start()
                with pytest.raises(expected):
                    s.read("customer_features", DAYS[0], DAYS[0])
            qid = s.last_query("customer_features")[1]
    finally:
        sf_server.hold_queries.clear()
        helper.join(timeout=60)
    assert qid and sf_server.aborted == [qid]


def test_close_cancels_a_running_query(sf_server, sf_database):
    """Teardown (the step ends or is killed) cancels what is still running."""
    src = _source(sf_server, sf_database)
    sf_server.aborted.clear()
    sf_server.status_polled.clear()
    sf_server.hold_queries.set()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            src.read("customer_features", DAYS[0], DAYS[0])
        except BaseException as exc:
            errors.append(exc)

    try:
        src.open()
        src.schema("customer_features")
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert sf_server.status_polled.wait(timeout=60)
        src.close()
    finally:
        sf_server.hold_queries.clear()
    reader.join(timeout=60)
    assert not reader.is_alive()
    assert len(sf_server.aborted) == 1


# -- retries and Dagster runs ------------------------------------------------------------------


def test_transient_errors_are_retried_on_a_new_connection(sf_server, sf_database, monkeypatch):
    """A connection lost mid-query (the connector's OperationalError, after its own retries)
    is retried with backoff on a fresh login; a SQL error is not retried."""
    import tenacity
    from snowflake.connector.errors import OperationalError, ProgrammingError

    monkeypatch.setattr(tenacity.nap.time, "sleep", lambda s: None)
    real = SnowflakeSource._fetch
    failures: list[BaseException] = []
    calls: list[int] = []

    def flaky(self, table, sql, params):  # type: ignore[no-untyped-def]
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return real(self, table, sql, params)

    monkeypatch.setattr(SnowflakeSource, "_fetch", flaky)
    with _source(sf_server, sf_database, retries=3).session() as src:
        src.schema("customer_features")
        logins = sf_server.logins
        failures[:] = [OperationalError(msg="connection reset by peer", errno=251006)] * 2
        assert src.read("customer_features", DAYS[0], DAYS[0]).height == 4
        assert len(calls) == 3 and sf_server.logins == logins + 1  # logged in again
        calls.clear()
        failures[:] = [ProgrammingError(msg="SQL compilation error", errno=1003)]
        with pytest.raises(ProgrammingError):
            src.read("customer_features", DAYS[0], DAYS[0])
        assert len(calls) == 1


def test_reads_in_a_dagster_run_with_the_password_from_env(sf_server, sf_database, monkeypatch):
    monkeypatch.setenv("SF_RUN_PASSWORD", sf_server.password)
    config = sf_config(sf_server, sf_database, password=dg.EnvVar("SF_RUN_PASSWORD"))
    daily = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-06")
    got: dict[str, pl.DataFrame] = {}

    @dg.asset(partitions_def=daily)
    def features(context, warehouse: SnowflakeSource) -> None:  # type: ignore[no-untyped-def]
        day = dt.date.fromisoformat(context.partition_key)
        got["df"] = warehouse.read("customer_features", day, day)

    result = dg.materialize(
        [features], resources={"warehouse": SnowflakeSource(**config)}, partition_key="2024-01-04"
    )
    assert result.success
    assert got["df"].height == 4 and set(got["df"]["day"]) == {DAYS[3]}
