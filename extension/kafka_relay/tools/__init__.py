"""Offline operator command lines (logs table, replay, redrive); the runtime never imports them."""
