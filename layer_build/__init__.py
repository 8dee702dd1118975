"""Build and deploy kafka-relay: reproducible layer/function zips, and a boto3 deployer.

``python -m layer_build.build`` writes ``dist/kafka-relay-layer-<arch>.zip``,
``dist/producer-functions.zip`` and ``dist/manifest.json``;
``python -m layer_build.deploy`` publishes them to Lambda. ``./build.sh build``
and ``./build.sh deploy`` run the same commands.
"""

import sys
from pathlib import Path

# The relay's own package is extension/kafka_relay (the layer's source, not installed here).
# The tools run from the checkout (`python -m layer_build.deploy`, `python -m devtools.sandbox`
# import this package) and use its CLI guard and log parsing without a PYTHONPATH. Appended,
# so an installed kafka_relay comes first.
_EXTENSION = str(Path(__file__).resolve().parent.parent / "extension")
if _EXTENSION not in sys.path:
    sys.path.append(_EXTENSION)
