"""Code for tests and the demo: local clusters, sample data, in-memory sources and
targets, the pytest plugin, the demo.

Imports everything below it (reports, ops, api, reconcile, journal, lag, diff, db, values,
errors and types); only cli imports it (the ``demo`` command)."""
