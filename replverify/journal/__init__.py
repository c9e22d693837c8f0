"""The application's write journal: record format, reader, `sql` statements, writer.

``format`` (the records and their fields) < ``statements`` (``sql`` records, sqlglot) <
``reader`` (a file's lines into records) < ``resolve`` (records into rows, against a
catalog) and ``transaction`` < ``writer`` (a journaled transaction's records; the
fsync'd append-only writer). The names below are the
documented ones; import them from here.

Imports db, values, errors and types."""

from __future__ import annotations

from replverify.journal.format import (
    FORMAT_VERSION,
    MAX_LINE_BYTES,
    JSONValue,
    Marker,
    Op,
    Record,
    RowWrite,
    Statement,
    TornTail,
    WriteRecord,
)
from replverify.journal.reader import JournalReader, read_journal
from replverify.journal.resolve import RowResolver, row_writes
from replverify.journal.statements import journal_value, parse_statement, render_sql
from replverify.journal.writer import (
    FsyncPolicy,
    IntentTemplate,
    JournalTransaction,
    JournalWriter,
    definitely_failed,
)

__all__ = [
    "FORMAT_VERSION",
    "MAX_LINE_BYTES",
    "FsyncPolicy",
    "IntentTemplate",
    "JSONValue",
    "JournalReader",
    "JournalTransaction",
    "JournalWriter",
    "Marker",
    "Op",
    "Record",
    "RowResolver",
    "RowWrite",
    "Statement",
    "TornTail",
    "WriteRecord",
    "definitely_failed",
    "journal_value",
    "parse_statement",
    "read_journal",
    "render_sql",
    "row_writes",
]
