"""Replication lag: ``model.py`` (the records, the report and its verdict), ``estimate.py``
(the arithmetic from readings to samples), ``relation.py`` (how a target relates to a
source) - these three pure, no I/O - and ``probe.py`` (the SQL each sample reads),
``sampler.py`` (the sampling loop), ``metrics.py`` (Prometheus).

Imports db, values, errors and types."""
