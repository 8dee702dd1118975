"""``kafka-relay-replay`` (``python -m kafka_relay.tools.replay``): re-produce spilled records,
or redrive a dead-letter topic.

The work is in ``kafka_relay.tools.replayer`` and ``.redrive`` (they need confluent-kafka:
``pip install 'kafka-relay[replay]'``).

    kafka-relay-replay s3://my-spill-bucket/kafka-relay/rss-producer/ --dry-run
    kafka-relay-replay /tmp/kafka-relay-spool --delete
    kafka-relay-replay --log-file spilled.log --bootstrap localhost:9092
    kafka-relay-replay --log-group /aws/lambda/rss-producer --start 1d
    kafka-relay-replay --from-topic dlq.rss.events --error-kind transient --rate 100
"""

from __future__ import annotations

import os
import sys

from kafka_relay.tools.cli import USAGE_ERROR, run_cli

_USAGE = """usage: kafka-relay-replay SOURCE [--bootstrap HOST:PORT] [--dry-run] [--delete] ...
       kafka-relay-replay --log-file FILE | --log-group GROUP [--start 1d]
       kafka-relay-replay --from-topic DLQ_TOPIC [--error-kind transient] [--rate N] ...

Re-produce spilled records (a spool directory, s3://bucket/prefix/, a log file or a
CloudWatch log group), or redrive a dead-letter topic. Its options are listed once its
extra is installed:
    pip install 'kafka-relay[replay]'
"""


def cli() -> int:
    try:
        from kafka_relay.tools.replayer import main  # noqa: PLC0415 - needs confluent-kafka
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
