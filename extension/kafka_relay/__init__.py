"""kafka-relay: a Lambda extension that keeps one Kafka producer for the life of the environment.

Handlers import only ``kafka_relay.client`` (stdlib only). Everything else in
this package runs inside the extension process.
"""

__version__ = "0.2.0"
