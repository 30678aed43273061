"""The NATS entrypoint (SPEC §5): job and catalog commands as request/reply, mirroring the HTTP routes."""
