"""``python -m replverify``: the same as the ``replverify`` command."""

from __future__ import annotations

from replverify.cli.main import main

if __name__ == "__main__":
    main()
