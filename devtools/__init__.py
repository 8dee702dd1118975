"""Developer tools for kafka-relay: the local Lambda sandbox, a real Kafka broker, fault and SASL
proxies, the recorded upstream fixtures, moto in server mode and the demo.

Imported by tests, bench and the demo; never by the layer (extension/).
"""

# For kafka_relay from the checkout (layer_build puts extension/ on the path).
import layer_build  # noqa: F401
