"""kafka-relay test suite: unit, integration (real broker) and end-to-end (local sandbox)."""
