"""fsync without a thread: Linux native AIO (``IOCB_CMD_FSYNC``), its completion read
from an eventfd on the event loop.

The writer's fsync thread costs more than its fsync. Every fsync means two GIL
handoffs and a wake-up of the event loop from another thread: on two busy cores about
140 µs of the process's CPU per fsync on top of the fsync's own 80 µs (TPC-B at 8
clients; ``benchmarks/README.md``). Here the kernel runs the fsync in its own worker
and signals an eventfd that the event loop watches like a socket. The caller pays for
two system calls (``io_submit``, then ``io_getevents`` once the eventfd is readable)
and no Python thread runs at all. The fsync is the kernel's ``vfs_fsync``, the same
call as :func:`os.fsync`, so it promises the same durability.

Only Linux on x86-64 and arm64 (the system call numbers and the little-endian
``struct iocb`` below); elsewhere, or where ``io_setup`` is refused (a seccomp
profile, ``fs.aio-max-nr`` used up), :func:`open_aio` returns None and the writer keeps
its thread. ``REPLVERIFY_JOURNAL_AIO=0`` turns this off.

The module only wraps the system calls; the group commit around them (who waits for
which fsync) is :class:`~replverify.journal.writer.JournalWriter`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import platform
import sys
from collections.abc import Callable

__all__ = ["AioFsync", "open_aio"]

#: io_setup, io_destroy, io_submit, io_getevents
_SYSCALLS = {"x86_64": (206, 207, 209, 208), "aarch64": (0, 1, 2, 4)}
_IOCB_CMD_FSYNC = 2
_IOCB_FLAG_RESFD = 1  # signal aio_resfd (an eventfd) on completion


class _Iocb(ctypes.Structure):
    # linux/aio_abi.h, little-endian (aio_key before aio_rw_flags)
    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _IoEvent(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


def _syscall() -> tuple[Callable[..., int], tuple[int, int, int, int]] | None:
    numbers = _SYSCALLS.get(platform.machine())
    if sys.platform != "linux" or numbers is None or sys.byteorder != "little":
        return None
    if os.environ.get("REPLVERIFY_JOURNAL_AIO", "1") == "0":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    call = libc.syscall
    call.restype = ctypes.c_long
    return call, numbers


class AioFsync:
    """fsyncs of one file descriptor, one at a time, finished on one event loop.

    :meth:`submit` starts an fsync of ``fd``; when the kernel has done it, ``done`` is
    called on the loop with 0 or a negative errno. Not thread-safe: use it from its
    loop only (:meth:`close` excepted, once the loop is closed)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        call: Callable[..., int],
        numbers: tuple[int, int, int, int],
        ctx: ctypes.c_ulong,
        done: Callable[[int], None],
    ) -> None:
        self.loop = loop
        self.pid = os.getpid()  # an AIO context does not survive fork()
        self._call = call
        self._setup, self._destroy, self._submit, self._getevents = numbers
        self._ctx = ctx
        self._done = done
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._iocb = _Iocb(aio_lio_opcode=_IOCB_CMD_FSYNC, aio_flags=_IOCB_FLAG_RESFD,
                           aio_resfd=self._efd)  # fmt: skip
        self._iocbs = (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(self._iocb))
        self._events = (_IoEvent * 1)()
        self._no_wait = (ctypes.c_long * 2)(0, 0)
        self.busy = False
        self.closed = False
        try:
            loop.add_reader(self._efd, self._ready)
        except BaseException:
            os.close(self._efd)
            raise

    def submit(self, fd: int) -> None:
        """Start an fsync of ``fd``; :class:`OSError` if the kernel refuses it."""
        self._iocb.aio_fildes = fd
        if self._call(self._submit, self._ctx, 1, self._iocbs) != 1:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        self.busy = True

    def _ready(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._efd)
        # the kernel posts the completion to the ring before it signals the eventfd
        got = self._call(self._getevents, self._ctx, 0, 1, self._events, self._no_wait)
        while got < 0 and ctypes.get_errno() == errno.EINTR:
            got = self._call(self._getevents, self._ctx, 0, 1, self._events, self._no_wait)
        if got == 1:
            self.busy = False
            self._done(int(self._events[0].res))

    def close(self) -> None:
        """Stop watching the eventfd and free the context (io_destroy waits for an
        fsync still running)."""
        if self.closed:
            return
        self.closed = True
        if not self.loop.is_closed():
            with contextlib.suppress(RuntimeError, ValueError):
                self.loop.remove_reader(self._efd)
        if self.pid == os.getpid():
            self._call(self._destroy, self._ctx)
        os.close(self._efd)


def open_aio(loop: asyncio.AbstractEventLoop, done: Callable[[int], None]) -> AioFsync | None:
    """An :class:`AioFsync` on ``loop`` calling ``done``; None where this kernel,
    machine or environment has no native AIO for us."""
    found = _syscall()
    if found is None:
        return None
    call, numbers = found
    ctx = ctypes.c_ulong(0)
    if call(numbers[0], 4, ctypes.byref(ctx)) != 0:
        return None
    try:
        return AioFsync(loop, call, numbers, ctx, done)
    except (OSError, NotImplementedError, RuntimeError):
        # no eventfd, or a loop that cannot watch one (add_reader: Windows' proactor)
        call(numbers[1], ctx)
        return None
