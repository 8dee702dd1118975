"""The batch views as SQL over the archive's Parquet rows, run by DuckDB (in the close
function, and locally) and by Athena over the Glue tables in ``iac/`` (``archive_prices`` /
``archive_feeds``); and the archive's Parquet objects themselves, written with DuckDB.

The same rules as ``views_model`` (the reference the tests hold the SQL to): rows once per
topic-partition-offset, a price point once per identity (token, ts; the lowest partition
and offset wins), a feed item once (the row the archive claimed, ``counted``); count, sum,
min, max and the last price (greatest ts) per period x market x token, with the outcome and
question of its first point; items per period x feed. The average is ``sum / count`` to 12
places (left to the reader: DuckDB's decimal division gives a double).

    python -m views_sql ROOT [--period hour|day]   # ROOT: a local copy of the bucket

``duckdb`` ships in ``views-functions.zip`` (the views functions' own zip), not in
``producer-functions.zip``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
from views_model import AVERAGE_PLACES, PRICE_LIMIT, PeriodViews

PERIOD_CHARS = {"hour": 13, "day": 10}  # YYYY-MM-DDTHH / YYYY-MM-DD prefixes of the ts

# Decoded prices are below PRICE_LIMIT and quantized to AVERAGE_PLACES: 12 integer and 12
# fractional digits hold every one exactly (and sums of them fit DuckDB's DECIMAL(38,12)).
PRICE_SCALE = -int(AVERAGE_PLACES.as_tuple().exponent)
PRICE_TYPE = f"DECIMAL({PRICE_LIMIT.adjusted() + PRICE_SCALE},{PRICE_SCALE})"

PRICES = """
WITH once AS (
  SELECT *, row_number() OVER (PARTITION BY topic, "partition", "offset"
                               ORDER BY relay_id) AS copy
  FROM archive_prices
), points AS (
  SELECT *, row_number() OVER (PARTITION BY token_id, ts
                               ORDER BY "partition", "offset") AS nth
  FROM once WHERE copy = 1
), firsts AS (
  SELECT *, substr(ts, 1, {chars}) AS period,
         first_value(outcome) OVER (PARTITION BY substr(ts, 1, {chars}), market_id, token_id
                                    ORDER BY "partition", "offset") AS first_outcome,
         first_value(question) OVER (PARTITION BY substr(ts, 1, {chars}), market_id, token_id
                                     ORDER BY "partition", "offset") AS first_question
  FROM points WHERE nth = 1
)
SELECT period, market_id, token_id, max(first_outcome) AS outcome,
       max(first_question) AS question,
       count(*) AS count, sum(price) AS sum, min(price) AS min, max(price) AS max,
       max_by(price, ts) AS last, max(ts) AS last_ts,
       'price#' || token_id || '#' || max(ts) AS last_id
FROM firsts
GROUP BY period, market_id, token_id
ORDER BY period, market_id, token_id
"""

FEEDS = """
WITH once AS (
  SELECT *, row_number() OVER (PARTITION BY topic, "partition", "offset"
                               ORDER BY relay_id) AS copy
  FROM archive_feeds
)
SELECT substr(fetched_hour, 1, {chars}) AS period, source, count(DISTINCT guid) AS count
FROM once WHERE copy = 1 AND counted
GROUP BY substr(fetched_hour, 1, {chars}), source
ORDER BY period, source
"""

PRICE_COLUMNS = {"topic": "VARCHAR", "partition": "INTEGER", "offset": "BIGINT",
                 "timestamp_ms": "BIGINT", "relay_id": "VARCHAR", "market_id": "VARCHAR",
                 "token_id": "VARCHAR", "outcome": "VARCHAR", "question": "VARCHAR",
                 "price": PRICE_TYPE, "ts": "VARCHAR"}
FEED_COLUMNS = {"topic": "VARCHAR", "partition": "INTEGER", "offset": "BIGINT",
                "timestamp_ms": "BIGINT", "relay_id": "VARCHAR", "source": "VARCHAR",
                "guid": "VARCHAR", "fetched_hour": "VARCHAR", "counted": "BOOLEAN"}
TABLES = {"archive_prices": PRICE_COLUMNS, "archive_feeds": FEED_COLUMNS}


class UnreadableArchive(ValueError):
    """An archive object DuckDB cannot read as the table's Parquet (truncated, other
    columns): the close quarantines it and carries on."""


def statements(period: str) -> tuple[str, str]:
    """The (prices, feeds) SQL of one period kind, for DuckDB or Athena."""
    chars = PERIOD_CHARS[period]
    return PRICES.format(chars=chars), FEEDS.format(chars=chars)


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f'"{name}"' for name in names)


def _path(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


@contextmanager
def _connect(scratch: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB that writes only under ``scratch`` (Lambda: only /tmp is
    writable) and never fetches an extension (Parquet and JSON are built in)."""
    connection = duckdb.connect(config={
        "home_directory": str(scratch), "temp_directory": str(scratch / "spill"),
        "autoinstall_known_extensions": False, "autoload_known_extensions": False,
        "threads": 1, "memory_limit": "256MB"})
    try:
        yield connection
    finally:
        connection.close()


class Engine:
    """An in-memory DuckDB holding the archive tables: write rows as Parquet objects (the
    archive), or load Parquet objects (and rows of the JSON-lines objects written before
    the archive was Parquet) and compute the views (the close)."""

    def __init__(self, connection: duckdb.DuckDBPyConnection, scratch: Path) -> None:
        self.connection = connection
        self.scratch = scratch
        self.loaded = 0
        for table, columns in TABLES.items():
            spec = ", ".join(f'"{name}" {kind}' for name, kind in columns.items())
            connection.execute(f"CREATE TABLE {table} ({spec})")

    def _scratch(self, suffix: str) -> Path:
        self.loaded += 1
        return self.scratch / f"object-{self.loaded}{suffix}"

    def add_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Archive rows (decimals as text, so they are cast exactly) into ``table``, in
        their order: through a JSON-lines file, which DuckDB reads far faster than it
        binds parameters."""
        columns = TABLES[table]
        path = self._scratch(".ndjson")
        path.write_text("".join(json.dumps({name: row.get(name) for name in columns}) + "\n"
                                for row in rows))
        spec = ", ".join(f"'{name}': '{kind}'" for name, kind in columns.items())
        try:
            self.connection.execute(
                f"INSERT INTO {table} ({_quoted(columns)}) SELECT {_quoted(columns)} FROM "
                f"read_json({_path(path)}, format = 'newline_delimited', "
                f"columns = {{{spec}}})")
        finally:
            path.unlink()

    def parquet(self, table: str, rows: Sequence[Mapping[str, Any]]) -> bytes:
        """``rows`` as one Parquet object with ``table``'s column types, in their order
        (the table is emptied first and after)."""
        out = self._scratch(".parquet")
        self.connection.execute(f"DELETE FROM {table}")
        try:
            self.add_rows(table, rows)
            self.connection.execute(
                f"COPY {table} TO {_path(out)} (FORMAT parquet, COMPRESSION zstd)")
            return out.read_bytes()
        finally:
            self.connection.execute(f"DELETE FROM {table}")
            out.unlink(missing_ok=True)

    def add_file(self, table: str, path: Path) -> None:
        """Every row of one Parquet file; UnreadableArchive (nothing added) if it is not
        Parquet with the table's columns."""
        columns = TABLES[table]
        try:
            self.connection.execute(
                f"INSERT INTO {table} ({_quoted(columns)}) SELECT {_quoted(columns)} "
                f"FROM read_parquet({_path(path)}, hive_partitioning = false)")
        except duckdb.Error as exc:
            raise UnreadableArchive(str(exc).splitlines()[0]) from exc

    def add_object(self, table: str, data: bytes) -> None:
        path = self._scratch(".parquet")
        path.write_bytes(data)
        try:
            self.add_file(table, path)
        finally:
            path.unlink()

    def rows(self, period: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The (prices, feeds) view rows of every ``period`` in the tables."""
        out = []
        for sql in statements(period):
            cursor = self.connection.execute(sql)
            names = [column[0] for column in cursor.description]
            out.append([dict(zip(names, row, strict=True)) for row in cursor.fetchall()])
        return out[0], out[1]

    def views(self, period: str) -> dict[str, PeriodViews]:
        prices, feeds = self.rows(period)
        by_period: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
        for row in prices:
            by_period.setdefault(row["period"], ([], []))[0].append(row)
        for row in feeds:
            by_period.setdefault(row["period"], ([], []))[1].append(row)
        return {key: PeriodViews.from_rows(*found) for key, found in by_period.items()}


@contextmanager
def engine() -> Iterator[Engine]:
    with tempfile.TemporaryDirectory(prefix="views-sql-") as scratch, \
            _connect(Path(scratch)) as connection:
        yield Engine(connection, Path(scratch))


def run_duckdb(root: Path, period: str, *, price_topic: str = "polymarket.price_hourly",
               rss_topic: str = "rss.events") -> tuple[list[dict[str, Any]],
                                                        list[dict[str, Any]]]:
    """The view rows of every ``period`` in a local copy of the bucket's ``archive/``."""
    with engine() as found:
        for table, topic in (("archive_prices", price_topic), ("archive_feeds", rss_topic)):
            for path in sorted((root / "archive" / f"topic={topic}").rglob("*.parquet")):
                found.add_file(table, path)
        return found.rows(period)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a local copy of the views bucket")
    parser.add_argument("--period", choices=sorted(PERIOD_CHARS), default="day")
    args = parser.parse_args(argv)
    prices, feeds = run_duckdb(args.root, args.period)
    for row in prices + feeds:
        print(json.dumps(row, default=str, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
