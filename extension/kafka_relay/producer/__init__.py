"""The persistent producer: settings and error classification."""
