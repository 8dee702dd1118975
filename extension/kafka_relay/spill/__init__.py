"""Where records go when Kafka (and its DLQ) will not take them: sinks in an ordered chain
(S3, the /tmp spool, ``KAFKA_RELAY_SPILL`` log lines), their formats, and replay reading."""
