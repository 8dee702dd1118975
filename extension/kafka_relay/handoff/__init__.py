"""Handoff API v1: the loopback HTTP server and the record schema."""
