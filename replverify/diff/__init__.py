"""Compare two servers table by table: key-range planning, the I/O-free comparison
machine (``machine.py``), digests, COPY-stream narrowing, row sources, the async driver,
resume state, and ``run.py``, the orchestration behind :func:`replverify.api.diff`.

Imports lag (the lag snapshot a diff report carries), db, values, errors and types."""
