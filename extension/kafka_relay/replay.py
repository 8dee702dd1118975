"""``python -m kafka_relay.replay`` / ``kafka-relay-replay``: re-produce spilled records.

The work is in ``kafka_relay.spill.replay`` (it needs confluent-kafka:
``pip install 'kafka-relay[replay]'``).

    python -m kafka_relay.replay s3://my-spill-bucket/kafka-relay/rss-producer/ --dry-run
    python -m kafka_relay.replay /tmp/kafka-relay-spool --delete
    python -m kafka_relay.replay --log-file spilled.log --bootstrap localhost:9092
    python -m kafka_relay.replay --log-group /aws/lambda/rss-producer --start 1d
"""

from __future__ import annotations

import os
import sys

from kafka_relay.cli import USAGE_ERROR, run_cli

_USAGE = """usage: kafka-relay-replay SOURCE [--bootstrap HOST:PORT] [--dry-run] [--delete] ...
       kafka-relay-replay --log-file FILE | --log-group GROUP [--start 1d]

Re-produce spilled records (a spool directory, s3://bucket/prefix/, a log file or a
CloudWatch log group). Its options are listed once its extra is installed:
    pip install 'kafka-relay[replay]'
"""


def cli() -> int:
    try:
        from kafka_relay.spill.replay import main  # noqa: PLC0415 - needs confluent-kafka
    except ModuleNotFoundError as exc:
        if {"-h", "--help"} & set(sys.argv[1:]):
            sys.stdout.write(_USAGE)
            return 0
        sys.stderr.write(f"error: replay needs {exc.name}: pip install 'kafka-relay[replay]'\n")
        return USAGE_ERROR
    return run_cli(lambda: main(sys.argv[1:], env=os.environ, stdout=sys.stdout,
                                stderr=sys.stderr), extra="replay")


if __name__ == "__main__":
    sys.exit(cli())
