"""Compare two servers table by table: key-range planning, the I/O-free comparison
machine, digests, COPY-stream narrowing, row sources, the async driver, resume state.

Imports db, values, errors and types."""
