"""replverify: verify PostgreSQL replication and find exactly the data a failover lost.

The Python API lives in :mod:`replverify.api` (``diff``); the CLI in :mod:`replverify.cli`
is a thin layer over it.

The package is layered; a module imports from its own subpackage and from layers below
it, never above, and the packages that share a layer do not import each other
(``tests/test_layout.py`` checks this and that there is no import cycle)::

    __main__                          python -m replverify
    cli                               the click commands, config profiles
    testing                           clusters, sample data, demo, pytest plugin
    reports                           text / JSON / Markdown / HTML renderers (no asyncpg)
    ops                               gate, failback, health, file and blob copies
    api                               the documented Python API (a facade over diff.run)
    reconcile | failover              journal against a database | the failover-aware pool
    journal                           the application's write journal
    diff                              compare two servers
    lag                               replication lag: model (pure), probes, sampler
    db                                the PostgreSQL edge: DSNs, connections, catalog
    values                            pure: value encodings, LSNs, wording
    errors, types, replverify         the exception tree, the result records, __version__
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
