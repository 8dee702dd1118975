"""The batch views as SQL over the archive's rows: one statement, run by DuckDB locally and
by Athena over the Glue tables in ``iac/`` (``archive_prices`` / ``archive_feeds``).

The same rules as ``views_model``: rows once per topic-partition-offset, a price point once
per identity (token, ts; the lowest partition and offset wins), a feed item once (the row
the archive claimed, ``counted``); count, sum, min, max and the last price (greatest ts)
per period x market x token, and items per period x feed. The average is ``sum / count``
to 12 places (left to the reader: DuckDB's decimal division gives a double).

    python -m views_sql ROOT [--period hour|day]   # ROOT: a local copy of the bucket

DuckDB (``pip install duckdb``, pinned in requirements-dev.txt) is not in the functions'
zip: the close function computes the same views with ``views_model``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PERIOD_CHARS = {"hour": 13, "day": 10}  # YYYY-MM-DDTHH / YYYY-MM-DD prefixes of the ts

PRICES = """
WITH once AS (
  SELECT *, row_number() OVER (PARTITION BY topic, "partition", "offset"
                               ORDER BY relay_id) AS copy
  FROM archive_prices
), points AS (
  SELECT *, row_number() OVER (PARTITION BY token_id, ts
                               ORDER BY "partition", "offset") AS nth
  FROM once WHERE copy = 1
)
SELECT substr(ts, 1, {chars}) AS period, market_id, token_id,
       count(*) AS count, sum(price) AS sum, min(price) AS min, max(price) AS max,
       max_by(price, ts) AS last, max(ts) AS last_ts
FROM points WHERE nth = 1
GROUP BY substr(ts, 1, {chars}), market_id, token_id
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
                 "price": "DECIMAL(38,12)", "ts": "VARCHAR"}
FEED_COLUMNS = {"topic": "VARCHAR", "partition": "INTEGER", "offset": "BIGINT",
                "timestamp_ms": "BIGINT", "relay_id": "VARCHAR", "source": "VARCHAR",
                "guid": "VARCHAR", "fetched_hour": "VARCHAR", "counted": "BOOLEAN"}


def statements(period: str) -> tuple[str, str]:
    """The (prices, feeds) SQL of one period kind, for DuckDB or Athena."""
    chars = PERIOD_CHARS[period]
    return PRICES.format(chars=chars), FEEDS.format(chars=chars)


def _relation(root: Path, topic: str, columns: dict[str, str]) -> str:
    files = root / "archive" / f"topic={topic}"
    pattern = str(files / "**" / "*.ndjson").replace("'", "''")
    spec = ", ".join(f"'{name}': '{kind}'" for name, kind in columns.items())
    if not any(files.rglob("*.ndjson")):
        return "SELECT " + ", ".join(f"NULL::{kind} AS \"{name}\""
                                     for name, kind in columns.items()) + " WHERE false"
    return (f"SELECT * FROM read_json('{pattern}', format = 'newline_delimited', "
            f"columns = {{{spec}}}, hive_partitioning = false)")


def run_duckdb(root: Path, period: str, *, price_topic: str = "polymarket.price_hourly",
               rss_topic: str = "rss.events") -> tuple[list[dict[str, Any]],
                                                        list[dict[str, Any]]]:
    """The views of every ``period`` in a local copy of the bucket's ``archive/``."""
    import duckdb  # noqa: PLC0415 - a dev dependency, absent from the functions' zip

    connection = duckdb.connect()
    try:
        connection.execute(f"CREATE VIEW archive_prices AS "
                           f"{_relation(root, price_topic, PRICE_COLUMNS)}")
        connection.execute(f"CREATE VIEW archive_feeds AS "
                           f"{_relation(root, rss_topic, FEED_COLUMNS)}")
        out = []
        for sql in statements(period):
            cursor = connection.execute(sql)
            names = [column[0] for column in cursor.description]
            out.append([dict(zip(names, row, strict=True)) for row in cursor.fetchall()])
        return out[0], out[1]
    finally:
        connection.close()


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
