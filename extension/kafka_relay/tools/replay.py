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


def cli() -> int:
    try:
        from kafka_relay.tools.replayer import main  # noqa: PLC0415 - needs confluent-kafka
    except ModuleNotFoundError as exc:
        sys.stderr.write(f"error: replay needs {exc.name}: pip install 'kafka-relay[replay]'\n")
        return USAGE_ERROR
    return run_cli(lambda: main(sys.argv[1:], env=os.environ, stdout=sys.stdout,
                                stderr=sys.stderr))


if __name__ == "__main__":
    sys.exit(cli())
