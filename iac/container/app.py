"""A minimal handler for the container-image example: records go to the kafka-relay extension."""

from __future__ import annotations

from typing import Any

from kafka_relay import client


@client.relay_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    records = [{"key": str(order["id"]), "value": order} for order in event.get("orders", [])]
    result = client.send(records, wait=True)
    return {"accepted": result.accepted, "outcomes": result.outcomes}
