"""Pure: how a value is encoded, compared and printed (no I/O; imports only errors and types)."""
