"""The persistent producer: settings, error classification, the relay engine."""
