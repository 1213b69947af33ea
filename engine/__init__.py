"""Temporal plumbing shared by the client and the workers: connection, payload codec, tracing, starts."""
