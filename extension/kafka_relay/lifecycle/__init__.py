"""Lambda Extensions and Telemetry API clients, the event loop and the flush policy."""
