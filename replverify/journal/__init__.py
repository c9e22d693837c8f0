"""The application's write journal: record format, reader, `sql` statements, writer.

Imports db, values, errors and types."""
