"""The command line's one logging set-up: what reaches the terminal, and --verbose.

replverify's own modules log to ``replverify.*``; libraries (asyncpg, asyncio) log to
their own loggers, and asyncpg attaches tracebacks to some records (a pool that cannot
reconnect says "Failed to restore the pool connection floor" with the full traceback of
each attempt). Without a handler Python prints such records, traceback and all, to
stderr (``logging.lastResort``). One handler on the root logger decides instead:

* by default only replverify's own warnings and errors, one line each;
* with ``--verbose``, every record at INFO or above (DEBUG for replverify's own), each
  with its logger's name, and tracebacks.

The verdict and the errors the user must see do not go through logging: the commands
print them (``replverify: error: ...``).
"""

from __future__ import annotations

import logging
import sys

_OURS = "replverify"


def _is_ours(record: logging.LogRecord) -> bool:
    return record.name == _OURS or record.name.startswith(_OURS + ".")


class _Terminal(logging.Handler):
    """Writes to the ``sys.stderr`` of the moment (a test runner swaps it per call)."""

    def __init__(self, verbose: bool) -> None:
        super().__init__(logging.DEBUG)
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return _is_ours(record) or record.levelno >= logging.INFO
        return _is_ours(record) and record.levelno >= logging.WARNING

    def format(self, record: logging.LogRecord) -> str:
        text = f"replverify: {record.levelname.lower()}: "
        if not _is_ours(record):
            text += f"{record.name}: "
        text += record.getMessage()
        if self.verbose and record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        return text

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # a closed or full stderr: nothing else to tell
            pass


def configure(*, verbose: bool) -> None:
    """Install the terminal handler (replacing one installed before)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _Terminal):
            root.removeHandler(handler)
    root.addHandler(_Terminal(verbose))
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger(_OURS).setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.captureWarnings(True)  # a library's warnings.warn goes the same way
