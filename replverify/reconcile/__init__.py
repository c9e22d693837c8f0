"""Judge a journal against the surviving database, and build replay scripts.

``judge`` (the verdicts) and ``ledger`` (the passes' state) are pure: no I/O, and at run
time they import only the standard library; ``findings`` is the report's data;
``targets`` reads the target's rows; ``run`` drives the passes; ``replay`` builds the
script that restores lost writes.

Imports journal, diff (SQL building), db, values, errors and types."""
