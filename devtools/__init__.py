"""Developer tools for kafka-relay: the local Lambda sandbox, a real Kafka broker, fault and SASL
proxies, the recorded upstream fixtures, moto in server mode and the demo.

Imported by tests, bench and the demo; never by the layer (extension/).
"""

import sys
from pathlib import Path

# The relay's own package is extension/kafka_relay (the layer's source, not installed here):
# `python -m devtools.sandbox` from the checkout reads its log events and shares its CLI
# guard. Appended, so an installed kafka_relay comes first.
_EXTENSION = str(Path(__file__).resolve().parent.parent / "extension")
if _EXTENSION not in sys.path:
    sys.path.append(_EXTENSION)
