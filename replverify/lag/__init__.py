"""Replication lag: ``model.py`` (the records and the pure arithmetic, no I/O),
``probe.py`` (the SQL each sample reads), ``sampler.py`` (the sampling loop),
``metrics.py`` (Prometheus).

Imports db, values, errors and types."""
