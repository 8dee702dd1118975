"""``python -m kafka_relay.replay``: re-produce spilled records.

The work is in ``kafka_relay.spill.replay``.

    python -m kafka_relay.replay s3://my-spill-bucket/kafka-relay/rss-producer/ --dry-run
    python -m kafka_relay.replay /tmp/kafka-relay-spool --delete
    python -m kafka_relay.replay --log-file spilled.log --bootstrap localhost:9092
    python -m kafka_relay.replay --log-group /aws/lambda/rss-producer --start 1d
"""

from __future__ import annotations

import os
import sys

from kafka_relay.spill.replay import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], env=os.environ, stdout=sys.stdout, stderr=sys.stderr))
