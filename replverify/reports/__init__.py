"""Rendering reports as text, JSON, Markdown and HTML. Never imports asyncpg.

Imports the report records of ops, reconcile, lag and diff, values, errors and types."""
