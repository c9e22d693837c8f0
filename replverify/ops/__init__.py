"""Operations built on the engines: ``gate.py`` (the promotion gate), ``failback.py``
(the old primary's own changes, read from both servers) with ``failback_attribution.py``
(its pure attribution rules and records), ``failback_replay.py`` (its replay script) and
``xidhorizon.py`` (the promotion's xid horizon from WAL bytes, pure), ``health.py``,
``files.py`` and ``objstore.py`` (file and blob copies).

Imports api, reconcile, diff, lag, db, values, errors and types."""
