"""pytest plugin: fixtures and assertions for failover tests (work in progress)."""

from __future__ import annotations
