"""The PostgreSQL edge: DSNs and connections, the server-error policy, the catalog.

Imports values, errors and types."""
