"""Code for tests and the demo: ``clusters.py`` (the suite's local clusters, the facade the
docs import from), ``cluster.py`` (one local cluster's lifecycle: initdb, base backup,
start, stop, promote, rewind), ``postgres.py`` (finding the binaries, cleaning up servers
a process left running), ``servers.py`` (replication control over a connection: wait
for replay, cut, restore, promote, pause), ``proxy.py`` and ``linkproxy.py`` (network
faults), ``sample.py`` (sample data), ``memory.py`` (in-memory sources and targets),
``pytest_plugin.py``, ``demo.py``.

Imports everything below it (reports, ops, api, reconcile, journal, lag, diff, db, values,
errors and types); only cli imports it (the ``demo`` command)."""
