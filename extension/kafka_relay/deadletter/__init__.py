"""Where records go when Kafka will not take them: spill to S3, the /tmp spool, or log lines."""
