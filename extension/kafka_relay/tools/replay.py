"""``python -m kafka_relay.tools.replay`` / ``kafka-relay-replay``: re-produce spilled records.

The work is in ``kafka_relay.tools.replayer`` (it needs confluent-kafka:
``pip install 'kafka-relay[replay]'``).

    python -m kafka_relay.tools.replay s3://my-spill-bucket/kafka-relay/rss-producer/ --dry-run
    python -m kafka_relay.tools.replay /tmp/kafka-relay-spool --delete
    python -m kafka_relay.tools.replay --log-file spilled.log --bootstrap localhost:9092
    python -m kafka_relay.tools.replay --log-group /aws/lambda/rss-producer --start 1d
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
