"""The wire: msgspec Structs for HTTP bodies, DTOs and NATS messages. Depends on msgspec only."""
