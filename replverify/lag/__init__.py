"""Replication lag: LSN arithmetic, SQL probes, the sampling loop, Prometheus metrics.

Imports db, values, errors and types."""
