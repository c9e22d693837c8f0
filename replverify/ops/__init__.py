"""Operations built on the engines: gate, failback, health, file/blob copies.

Imports api, reconcile, diff, lag, db, values, errors and types."""
