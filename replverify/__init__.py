"""replverify: verify PostgreSQL replication and find exactly the data a failover lost.

The Python API lives in :mod:`replverify.api` (``diff``); the CLI in :mod:`replverify.cli.main`
is a thin layer over it.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
