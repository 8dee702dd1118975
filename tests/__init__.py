"""kafka-relay test suite and its local infrastructure (broker, fault proxy, Lambda sandbox)."""
