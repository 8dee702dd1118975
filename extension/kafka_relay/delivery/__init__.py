"""The delivery engine: routing (pure), the ledger of unsettled records, the pump (sole
owner of the confluent-kafka Producer) and the engine facade. Knows no HTTP."""
