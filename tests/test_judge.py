"""The verdicts of :mod:`replverify.reconcile.judge`, case by case (no database: the
judge is pure, and these tests hand it observations directly).

The expected verdicts are written out as a table, independently of the judge's code: for
every op, with and without a before-image, and every state of the target's row (absent,
holding the post-image, holding the before-image, holding something else)."""

from __future__ import annotations

import datetime as dt
import itertools
import subprocess
import sys
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replverify.journal.format import Op, RowWrite, WriteRecord
from replverify.reconcile.judge import (
    ChainState,
    Observation,
    chain_probe,
    judge,
    judge_chain,
    judge_in_doubt,
    probe_for,
)
from replverify.types import TableRef

T = TableRef("public", "t")
TS = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
OPS: tuple[Op, ...] = ("insert", "update", "delete", "upsert")


def write(
    op: Op,
    values: Mapping[str, str] | None = None,
    before: Mapping[str, str] | None = None,
    *,
    line: int = 1,
    seq: int = 0,
) -> RowWrite:
    """A resolved write of row id=1; ``values`` are the judged columns (none for a delete)."""
    values = {} if op == "delete" else dict(values if values is not None else {"a": "2"})
    rec = WriteRecord(
        line, "t-1", seq, TS, TS.isoformat(), "committed", op, T, {"id": 1},
        None if op == "delete" else values, before,
    )  # fmt: skip
    return RowWrite(
        record=rec, index=0, op=op, table=T, key=(("id", 1),), rid=("public", "t", 1),
        key_display=(("id", 1),), values={"id": 1, **values}, check=tuple(values),
        before=before, on_conflict=tuple(values) if op == "upsert" else (),
    )  # fmt: skip


def enc(image: Mapping[str, str]) -> dict[str, bytes]:
    """An image as canonical encodings (the test's stand-in: the text's bytes)."""
    return {c: v.encode() for c, v in image.items()}


def observe(w: RowWrite, row: Mapping[str, str] | None) -> Observation:
    """What a target holding ``row`` (None: absent) answers to :func:`probe_for` ``(w)``."""
    probe = probe_for(w)
    return Observation(row is not None, enc(row or {}), tuple(enc(i) for i in probe.images))


# ---------------------------------------------------------------------- the decision table

#: (op, before-image known) -> verdict for a target row that is
#: (absent, holding the post-image, holding the before-image, holding something else).
#: "-" marks a state that cannot be told apart without a before-image. A delete has no
#: post-image: its row "holding the post-image" means present with the written values,
#: which for a delete is any present row (so the column reads as for "something else").
TABLE: dict[tuple[str, bool], tuple[str, str, str, str]] = {
    ("insert", False): ("lost", "durable", "-", "conflict"),
    ("insert", True): ("lost", "durable", "conflict", "conflict"),
    ("upsert", False): ("lost", "durable", "-", "lost"),
    ("upsert", True): ("lost", "durable", "lost", "conflict"),
    ("update", False): ("conflict", "durable", "-", "lost"),
    ("update", True): ("conflict", "durable", "lost", "conflict"),
    ("delete", False): ("durable", "lost", "-", "lost"),
    ("delete", True): ("durable", "conflict", "lost", "conflict"),
}
STATES = ("absent", "post", "before", "other")
ROW = {"absent": None, "post": {"a": "2"}, "before": {"a": "1"}, "other": {"a": "3"}}

CASES = [
    (op, known, state)
    for op, known, state in itertools.product(OPS, (False, True), STATES)
    if known or state != "before"
]


@pytest.mark.parametrize(("op", "known", "state"), CASES)
def test_judge_decision_table(op: Op, known: bool, state: str) -> None:
    w = write(op, {"a": "2"}, {"a": "1"} if known else None)
    verdict, reason, differs = judge(w, observe(w, ROW[state]))
    assert verdict == TABLE[(op, known)][STATES.index(state)], reason
    assert reason
    if verdict == "durable":
        assert differs == ()
    elif state != "absent" and op != "delete":
        assert differs == ("a",)  # the post-image's column that the row does not hold


def test_the_table_covers_every_case() -> None:
    assert len(CASES) == 4 * (4 + 3)
    assert {v for row in TABLE.values() for v in row} == {"durable", "lost", "conflict", "-"}


def test_a_before_image_equal_to_the_post_image_is_durable() -> None:
    """A no-op update (post = before): the row holding it is durable, not lost."""
    for op in ("update", "upsert"):
        w = write(op, {"a": "2"}, {"a": "2"})
        assert judge(w, observe(w, {"a": "2"}))[0] == "durable"


def test_an_upsert_that_does_nothing_is_durable_when_the_row_exists() -> None:
    """ON CONFLICT DO NOTHING judges no columns: any present row holds its (empty)
    post-image."""
    w = write("upsert", {})
    assert judge(w, observe(w, {"a": "7"}))[0] == "durable"
    assert judge(w, observe(w, None))[0] == "lost"


def test_a_delete_conflict_names_the_columns_that_left_the_before_image() -> None:
    w = write("delete", before={"a": "1", "b": "1"})
    verdict, _, differs = judge(w, observe(w, {"a": "1", "b": "5"}))
    assert (verdict, differs) == ("conflict", ("b",))


# ---------------------------------------------------------------------- in doubt


@pytest.mark.parametrize(
    ("op", "state", "covered"), list(itertools.product(OPS, STATES, (False, True)))
)
def test_judge_in_doubt(op: Op, state: str, covered: bool) -> None:
    w = write(op, {"a": "2"}, {"a": "1"})
    applied, reason = judge_in_doubt(w, observe(w, ROW[state]), covered=covered)
    shows = state == "absent" if op == "delete" else state == "post"
    expected = True if shows else (None if covered else False)
    assert applied is expected, reason
    assert reason.startswith("never settled")


# ---------------------------------------------------------------------- chains


def chain_of(*writes: RowWrite) -> list[ChainState]:
    return [ChainState.of(w) for w in writes]


def rejudge(chain: list[ChainState], row: Mapping[str, str] | None, verdict: str) -> str:
    last = write(chain[-1].op, dict(chain[-1].post) or None, chain[-1].before)  # type: ignore[arg-type]
    probe = chain_probe(last, chain)
    obs = Observation(row is not None, enc(row or {}), tuple(enc(i) for i in probe.images))
    return judge_chain(chain, obs, verdict, "as judged")[0]  # type: ignore[arg-type]


HISTORY = chain_of(
    write("insert", {"a": "1"}, seq=1),
    write("update", {"a": "2"}, seq=2),
    write("update", {"a": "3"}, {"a": "2"}, seq=3),
)


@pytest.mark.parametrize(
    ("row", "verdict", "expected"),
    [
        (None, "conflict", "lost"),  # created by the chain, absent: nothing arrived
        ({"a": "1"}, "lost", "lost"),  # the state after the insert
        ({"a": "1"}, "conflict", "lost"),
        ({"a": "2"}, "conflict", "lost"),  # the state before the last write
        ({"a": "9"}, "conflict", "conflict"),  # no state the journal knows
        ({"a": "9"}, "lost", "lost"),
        ({"a": "1"}, "durable", "durable"),  # only lost/conflict are re-judged
        ({"a": "1"}, "superseded", "superseded"),
    ],
)
def test_judge_chain(row: Mapping[str, str] | None, verdict: str, expected: str) -> None:
    assert rejudge(HISTORY, row, verdict) == expected


def test_a_chain_not_created_in_the_window_stays_a_conflict_when_absent() -> None:
    chain = chain_of(write("update", {"a": "1"}, seq=1), write("update", {"a": "2"}, seq=2))
    assert rejudge(chain, None, "conflict") == "conflict"


def test_a_delete_in_the_chain_is_a_state_the_row_passed_through() -> None:
    chain = chain_of(
        write("update", {"a": "1"}, seq=1),
        write("delete", seq=2),
        write("insert", {"a": "5"}, seq=3),
    )
    assert rejudge(chain, None, "lost") == "lost"  # absent: the state after the delete
    assert rejudge(chain, {"a": "7"}, "conflict") == "conflict"


# ---------------------------------------------------------------------- any images

VALUES = st.sampled_from(["1", "2", "3"])
IMAGES = st.dictionaries(st.sampled_from(["a", "b", "c"]), VALUES, max_size=3)


@settings(max_examples=300, deadline=None)
@given(
    op=st.sampled_from(OPS),
    post=IMAGES.filter(bool),
    before=st.none() | IMAGES,
    row=st.none() | st.fixed_dictionaries({"a": VALUES, "b": VALUES, "c": VALUES}),
)
def test_judge_agrees_with_the_table_for_any_images(
    op: Op, post: dict[str, str], before: dict[str, str] | None, row: dict[str, str] | None
) -> None:
    """Multi-column images: the verdict is the table's for the state the row is in."""
    w = write(op, post, before)

    def holds(image: Mapping[str, str]) -> bool:
        return row is not None and all(row[c] == v for c, v in image.items())

    if row is None:
        state = "absent"
    elif op != "delete" and holds(post):
        state = "post"
    elif before is not None and holds(before):
        state = "before"
    else:
        state = "other"
    verdict, _, differs = judge(w, observe(w, row))
    assert verdict == TABLE[(op, before is not None)][STATES.index(state)]
    if verdict != "durable" and row is not None:
        image = (before or {}) if op == "delete" else post
        assert set(differs) == {c for c, v in image.items() if row[c] != v}


# ---------------------------------------------------------------------- purity


def test_importing_the_judge_imports_no_database_driver() -> None:
    code = (
        "import sys, replverify.reconcile.judge, replverify.reconcile.ledger\n"
        "print(sorted({'asyncpg', 'sqlglot', 'asyncio', 'socket'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
