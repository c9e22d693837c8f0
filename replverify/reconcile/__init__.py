"""Judge a journal against the surviving database, and build replay scripts.

Imports journal, diff (SQL building), db, values, errors and types."""
