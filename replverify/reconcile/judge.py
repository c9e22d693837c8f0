"""The verdicts (pure: no I/O, and no import of the database driver or sqlglot).

A row's judged write and what the target shows of its row (an :class:`Observation`: the
row's values and the write's images, as canonical encodings) decide the verdict; the
table is in :mod:`replverify.reconcile.run`'s docs and, case by case, in
``tests/test_judge.py``. The journal's types are imported for type checking only, so that
importing this module imports nothing but the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias

if TYPE_CHECKING:
    from replverify.journal.format import JSONValue, RowWrite, TxId

__all__ = [
    "CHAIN_STATES",
    "HELD",
    "VERDICTS",
    "ChainState",
    "Image",
    "Observation",
    "Probe",
    "Verdict",
    "WriteId",
    "chain_probe",
    "judge",
    "judge_chain",
    "judge_in_doubt",
    "probe_for",
]

Verdict = Literal["durable", "lost", "superseded", "conflict", "in_doubt", "aborted"]
VERDICTS: tuple[Verdict, ...] = ("durable", "lost", "superseded", "conflict", "in_doubt", "aborted")
#: writes of a lost or conflicting row compared with the target (its first and last ones)
CHAIN_STATES = 32
Image: TypeAlias = "Mapping[str, JSONValue]"
WriteId = tuple[int, int]  # (line, row index within the record)


def _wid(w: RowWrite) -> WriteId:
    return (w.record.line, w.index)


# --------------------------------------------------------------------------- the edge's answers


@dataclass(frozen=True, slots=True)
class Probe:
    """Ask the target about ``write``'s row and read ``images`` as the column types.

    ``quick``: if the row holds ``images[0]``, that is all the asker needs to know; the
    target may then answer :data:`HELD` and read nothing else (see :func:`probe_for`).
    """

    write: RowWrite
    images: tuple[Image, ...]
    quick: bool = False


@dataclass(frozen=True, slots=True)
class Observation:
    """The answer to a :class:`Probe`, as canonical encodings (type-aware equality)."""

    found: bool
    row: Mapping[str, bytes]  # the target's values of the images' columns
    images: tuple[Mapping[str, bytes], ...]  # each image read as the column types
    #: the target showed the row holding the probe's first image (a ``quick`` probe's
    #: answer; ``row`` and ``images`` are then empty)
    held: bool = False

    def holds(self, image: Mapping[str, bytes]) -> bool:
        """The row exists and equals ``image`` on its columns."""
        return self.found and all(self.row.get(c) == v for c, v in image.items())

    def differs(self, image: Mapping[str, bytes]) -> tuple[str, ...]:
        return tuple(c for c, v in image.items() if self.row.get(c) != v) if self.found else ()


#: the answer to a ``quick`` probe whose row holds its first image
HELD = Observation(True, {}, (), held=True)


def probe_for(w: RowWrite, *, verdict_only: bool = False) -> Probe:
    """The images of a judged or in-doubt write: its post-image, then its before-image.

    ``verdict_only``: the answer goes to :func:`judge` alone, which needs nothing more
    once the row is shown to hold the post-image - for every write but a delete (whose
    post-image is empty, and which that row does not make durable)."""
    images: tuple[Image, ...] = (w.post_image(),)
    if w.before is not None:
        images += (w.before,)
    return Probe(w, images, verdict_only and w.op != "delete")


def judge(w: RowWrite, obs: Observation) -> tuple[Verdict, str, tuple[str, ...]]:
    """The verdict on the judged write ``w`` of a row: ``(verdict, reason, differing)``;
    ``obs`` answers :func:`probe_for` ``(w)`` (with ``verdict_only`` or without)."""
    if w.op == "delete":
        before = obs.images[1] if w.before is not None else None
        if not obs.found:
            return "durable", "the row is gone", ()
        if before is None:
            return "lost", "the row is still there", ()
        if obs.holds(before):
            return "lost", "the row is still there, as it was before the delete", ()
        return (
            "conflict",
            "the row is still there, and no longer as it was before the delete",
            obs.differs(before),
        )
    if obs.held or obs.holds(obs.images[0]):
        return "durable", "the row holds the written values", ()
    post = obs.images[0]
    before = obs.images[1] if w.before is not None else None
    differs = obs.differs(post)
    if w.op == "insert":
        if not obs.found:
            return "lost", "the row is absent", ()
        return "conflict", "a row with this key holds other values", differs
    if not obs.found:
        if w.op == "upsert":
            return "lost", "the row is absent", ()
        return "conflict", "the row is absent (and the journal has no insert of it)", ()
    if before is None:
        return "lost", "the row does not hold the written values", differs
    if obs.holds(before):
        return "lost", "the row still holds the before-image", differs
    return "conflict", "the row holds neither the written values nor the before-image", differs


def judge_in_doubt(w: RowWrite, obs: Observation, *, covered: bool) -> tuple[bool | None, str]:
    """Whether the unsettled write ``w`` shows on the target: ``(applied, reason)``."""
    shows = not obs.found if w.op == "delete" else obs.holds(obs.images[0])
    if shows:
        return True, "never settled; the target shows it applied"
    if covered:
        return None, "never settled; cannot tell: a later write decides what the row holds"
    return False, "never settled; the target does not show it"


@dataclass(frozen=True, slots=True)
class ChainState:
    """What re-judging needs of one earlier write of a row (lighter than a RowWrite)."""

    op: str
    txid: TxId
    seq: int
    post: Image
    before: Image | None

    @classmethod
    def of(cls, w: RowWrite) -> ChainState:
        return cls(w.op, w.record.txid, w.record.seq, w.post_image(), w.before)

    def who(self) -> str:
        return f"{self.op} {self.txid} #{self.seq}"


def chain_probe(write: RowWrite, chain: Sequence[ChainState]) -> Probe:
    """For every write of ``write``'s chain its post-image and before-image (``{}`` if
    unknown)."""
    images: list[Image] = []
    for w in chain:
        images.append(w.post)
        images.append(w.before if w.before is not None else {})
    return Probe(write, tuple(images))


def judge_chain(
    chain: Sequence[ChainState], obs: Observation, verdict: Verdict, reason: str
) -> tuple[Verdict, str]:
    """Re-judge the lost or conflicting last write of ``chain`` against every earlier
    state of the row: if the target holds one, the writes since never reached it (lost).
    ``obs`` answers :func:`chain_probe`."""
    if verdict not in ("lost", "conflict"):
        return verdict, reason
    first = chain[0]
    if first.op in ("insert", "upsert") and not obs.found:
        return "lost", f"the row is absent: nothing since {first.who()} created it arrived"
    for k, w in enumerate(chain):
        post, before = obs.images[2 * k], obs.images[2 * k + 1]
        if w.before is not None and obs.holds(before):
            return (
                "lost",
                f"the row holds the state before {w.who()}; that write and later ones are missing",
            )
        if k == len(chain) - 1:
            break
        holds = not obs.found if w.op == "delete" else obs.holds(post)
        if holds:
            return "lost", f"the row holds the state after {w.who()}; later writes are missing"
    return verdict, reason
