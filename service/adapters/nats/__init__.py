"""NATS adapters: the embedded server, the connection, publishers and subscribers (SPEC §5)."""
