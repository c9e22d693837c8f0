"""Rendering reports as text, JSON, Markdown and HTML. Never imports asyncpg.

``formatting.py`` holds the helpers every renderer shares; ``diff.py``, ``lag.py``,
``reconcile.py`` and ``ops.py`` render one report kind each as text, JSON and Markdown;
``pages.py`` renders every kind as an HTML page, from the building blocks of ``html.py``
(its CSS is the package resource ``report.css``) and the lag chart of ``chart.py``;
``formats.py``, the registry of ``--format`` choices, sits above all of them.

Imports the report records of ops, reconcile, lag and diff (the records of modules that
do I/O only under ``TYPE_CHECKING``), values, errors and types."""
