"""The reader's typed fast path against its checked path (``_record_from``): for every
bad line the tests know, every fixture and doc example, and hypothesis-made valid and
mutated lines and files, both give the same record (same repr, so the same types) or
the same error (message and line). No database needed."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import test_effects
import test_journal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replverify.errors import JournalError
from replverify.journal import format as journal_format
from replverify.journal import reader as journal_reader
from replverify.journal.format import TornTail, _loads
from replverify.journal.reader import JournalReader, _typed_record

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
TS = "2026-11-23T10:00:00.123+00:00"


def _outcome(parse: Callable[[], object]) -> tuple[object, ...]:
    try:
        rec = parse()
    except JournalError as e:
        return ("error", str(e), e.line)
    except Exception as e:  # any other exception must be the same too
        return ("raised", type(e).__name__, str(e))
    return ("record", type(rec).__name__, repr(rec))


def _same(raw: bytes, line: int = 2) -> tuple[object, ...]:
    """Both paths on one line; returns the outcome."""
    reader = JournalReader("j.jsonl")
    fast = _outcome(lambda: reader.parse(line, raw))
    assert fast == _outcome(lambda: reader._checked(line, raw)), raw
    return fast


def _param_cases(fn: Callable[..., object]) -> list[tuple[object, ...]]:
    (mark,) = [m for m in fn.pytestmark if m.name == "parametrize"]  # type: ignore[attr-defined]
    return list(mark.args[1])


# --------------------------------------------------------------------------- known cases


def _known_bad_lines() -> list[bytes]:
    lines = [line.encode("utf-8", "surrogatepass") for line, _ in test_journal.BAD_LINES]
    lines += [json.dumps(test_journal.rec(sql=sql)).encode() for sql, _ in test_journal.BAD_SQL]
    base = {"v": 1, "txid": "t", "seq": 0, "ts": "2026-11-23T10:00:00+00:00"}
    lines += [
        json.dumps({**base, **record}).encode()  # type: ignore[dict-item]
        for record, _ in _param_cases(test_effects.test_bad_effect_records_name_their_line)
    ]
    return lines


@pytest.mark.parametrize("raw", _known_bad_lines())
def test_every_known_bad_line_gives_the_same_error(raw: bytes) -> None:
    for ending in (b"\n", b"", b"\r\n"):
        assert _same(raw + ending)[0] == "error"


def _example_lines() -> list[bytes]:
    out = [p.read_bytes() for p in sorted((ROOT / "fixtures" / "journals").glob("*.jsonl"))]
    blocks = re.findall(r"```jsonl\n(.*?)```", (ROOT / "docs" / "journal.md").read_text(), re.S)
    return [line for text in out + [b.encode() for b in blocks] for line in text.splitlines()]


def test_fixtures_and_doc_examples_give_the_same_records() -> None:
    lines = _example_lines()
    outcomes = [_same(raw + b"\n", n) for n, raw in enumerate(lines, 1)]
    assert sum(o[0] == "record" for o in outcomes) > 40
    valid = [raw for raw, o in zip(lines, outcomes, strict=True) if o[0] == "record"]
    taken = sum(_typed_record(raw, 1) is not None for raw in valid)
    assert taken >= len(valid) - 3, "the typed path should read the ordinary valid line"


# --------------------------------------------------------------------------- generated

_NAMES = st.sampled_from(["id", "status", "amount", "note", "", "a b", "é"])
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
    | st.sampled_from(["12.50", "2026-11-23 10:00:00+00", '{"a": 1}', "\ud800"])
)
_JSONISH = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_NAMES, inner, max_size=3),
    max_leaves=8,
)
_IMAGES = st.dictionaries(_NAMES, _JSONISH, max_size=3)
_KEYS = st.dictionaries(_NAMES, _SCALARS, min_size=1, max_size=2)
_TABLES = st.sampled_from(["orders", "public.orders", '"Sales"."Orders"', "a.b.c", "", "x y"])
_TS = st.sampled_from(
    [TS, "2026-11-23T10:00:00Z", "2026-11-23 10:00:00+01:00", "2026-11-23T10:00:00", "x", ""]
)
_SQL = st.sampled_from(
    [
        "UPDATE orders SET note = 'x' WHERE id = 3",
        "UPDATE orders SET status = 'paid', amount = 12.50 WHERE id = 7 AND note IS NULL",
        "INSERT INTO orders (id, status) VALUES (1, 'new')",
        "INSERT INTO orders (id, note) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET"
        " note = EXCLUDED.note",
        "DELETE FROM orders WHERE id = 9",
        "DROP TABLE orders",
        "UPDATE orders SET amount = amount + 1 WHERE id = 1",
        "",
    ]
)
_STMTS = st.sampled_from(["UPDATE t SET a = a + $1 WHERE id = $2", "  ", "", "DELETE FROM t"])
_COMMON = {
    "v": st.just(1),
    "txid": st.sampled_from(["t-1", 7, 2**70]),
    "seq": st.integers(0, 2**65),
    "ts": _TS,
}
_OPS = st.sampled_from(["insert", "update", "delete", "upsert"])


def _record(kind: str) -> st.SearchStrategy[dict[str, object]]:
    fields: dict[str, st.SearchStrategy[object]] = dict(_COMMON)
    optional: dict[str, st.SearchStrategy[object]] = {"meta": st.none() | _IMAGES}
    if kind == "marker":
        fields["state"] = st.sampled_from(["committed", "aborted"])
        optional["seq"] = st.none() | st.integers(0, 9)
        del fields["seq"]
    elif kind == "write":
        fields |= {"state": st.sampled_from(["intent", "committed"]), "op": _OPS,
                   "table": _TABLES, "key": _KEYS}  # fmt: skip
        optional |= {"values": st.none() | _IMAGES, "before": st.none() | _IMAGES,
                     "of": st.none() | st.integers(0, 9)}  # fmt: skip
    elif kind == "sql":
        fields |= {"state": st.sampled_from(["intent", "committed"]), "sql": _SQL}
        optional |= {"op": st.none() | _OPS, "before": st.none() | _IMAGES, "of": st.none()}
    else:
        fields |= {"state": st.just("intent"), "op": _OPS, "table": _TABLES, "stmt": _STMTS}
        optional["params"] = st.lists(_JSONISH, max_size=3)
    return st.fixed_dictionaries(fields, optional=optional)


_ANY_FIELD = st.sampled_from(
    ["v", "txid", "seq", "ts", "state", "op", "table", "key", "values", "before", "sql",
     "stmt", "params", "meta", "of", "befor", "extra"]
)  # fmt: skip
_ODD_VALUES = st.sampled_from(
    [None, True, False, 0, 1, -1, 1.5, "", "x", [], {}, [1], {"": 1}, {"a": None}, {"a": []}]
)
_TEXT_EDITS = [  # on the serialised line: numbers, escapes, duplicates, whitespace
    (b'"v": 1', b'"v": 1.0'),
    (b'"v": 1', b'"v": true'),
    (b'"seq": ', b'"seq": -'),
    (b": 1", b": 1e0"),
    (b": 7", b": 7.0"),
    (b": 1", b": 1e999999999999999999999"),
    (b'"op"', b'"\\u006fp"'),
    (b'"key"', b'"k\\u0065y"'),
    (b'"state": "', b'"state": "\\u0020'),
    (b"{", b'{"op": null, '),
    (b"{", b'{"op": "delete", '),
    (b"{", b'{"sql": null, '),
    (b"{", b'{"key": {"id": 1}, '),
    (b"}", b', "v": 2}'),
    (b"}", b', "state": "aborted"}'),
    (b'", ', b'",\t'),
    (b"{", b"\xef\xbb\xbf{"),
    (b"}", b"}}"),
    (b"}", b"} {}"),
    (b'"t-1"', b'"t-\xff"'),
    (b"x", b"\\ud800"),
]


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["marker", "write", "write", "sql", "stmt"]))
    obj = draw(_record(kind))
    for _ in range(draw(st.integers(0, 2))):
        field = draw(_ANY_FIELD)
        if draw(st.booleans()):
            obj.pop(field, None)
        else:
            obj[field] = draw(_ODD_VALUES | _JSONISH)
    raw = json.dumps(obj, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    for _ in range(draw(st.integers(0, 2))):
        old, new = draw(st.sampled_from(_TEXT_EDITS))
        if old in raw:
            at = raw.index(old) if draw(st.booleans()) else raw.rindex(old)
            raw = raw[:at] + new + raw[at + len(old) :]
    return raw


@SETTINGS
@given(lines(), st.sampled_from([b"\n", b"\r\n", b""]), st.sampled_from([1, 2, 10**6]))
def test_any_line_gives_the_same_record_or_error(raw: bytes, ending: bytes, line: int) -> None:
    _same(raw + ending, line)


@SETTINGS
@given(st.sampled_from(["marker", "write", "sql", "stmt"]).flatmap(_record))
def test_valid_lines_take_the_typed_path(obj: dict[str, object]) -> None:
    raw = json.dumps(obj).encode("utf-8", "surrogatepass")
    outcome = _same(raw + b"\n")
    plain = json.dumps(obj, ensure_ascii=False)
    keys = obj.get("key")
    ordinary = (
        outcome[0] == "record"
        and "\ud800" not in plain
        and not re.search(r"\d[.eE]", json.dumps(keys))  # keys with decimals: checked path
        and obj.get("op", "") is not None
    )
    if ordinary:
        assert _typed_record(raw, 2) is not None, raw


# --------------------------------------------------------------------------- whole files


def _reference_lines(path: Path, max_line_bytes: int) -> tuple[list[tuple[int, bytes]], object]:
    """The lines as the reader used to read them, one ``readline`` at a time; then the
    torn tail, or the error of an overlong line."""
    out: list[tuple[int, bytes]] = []
    n = 0
    with path.open("rb") as f:
        while raw := f.readline(max_line_bytes + 1):
            n += 1
            if raw[-1:] == b"\n":
                out.append((n, raw))
                continue
            if len(raw) > max_line_bytes:
                return out, ("error", f"{path}:{n}: line longer than {max_line_bytes} bytes", n)
            try:
                _loads(raw)
            except ValueError:
                return out, TornTail(n, len(raw))
            out.append((n, raw))
    return out, None


def _reference(path: Path, max_line_bytes: int) -> tuple[object, ...]:
    """The reader as it was: those lines, each by the checked path."""
    reader = JournalReader(path, max_line_bytes=max_line_bytes)
    raws, end = _reference_lines(path, max_line_bytes)
    out = []
    for n, raw in raws:
        try:
            out.append(repr(reader._checked(n, raw)))
        except JournalError as e:
            return ("error", str(e), e.line, n)
    if isinstance(end, tuple):
        return (*end, end[2])
    last = end.line if end is not None else raws[-1][0] if raws else 0
    return ("ok", out, last, end)


def _read(path: Path, max_line_bytes: int) -> tuple[object, ...]:
    reader = JournalReader(path, max_line_bytes=max_line_bytes)
    try:
        out = [repr(r) for r in reader]
    except JournalError as e:
        return ("error", str(e), e.line, reader.lines)
    return ("ok", out, reader.lines, reader.torn)


_GOOD = st.sampled_from(["marker", "write"]).flatmap(_record).map(lambda o: json.dumps(o).encode())


@SETTINGS
@given(
    st.lists(_GOOD | lines() | st.sampled_from([b"", b"  ", b"\r", b"{"]), max_size=12),
    st.sampled_from([b"", b'{"v": 1, "tx', b"{}", b"   "]),
    st.sampled_from([40, 120, 200, 10**6]),
    st.sampled_from([5, 64, 1 << 16]),
)
def test_any_file_reads_as_line_by_line(
    tmp_path_factory: pytest.TempPathFactory,
    body: list[bytes],
    tail: bytes,
    max_line_bytes: int,
    chunk: int,
) -> None:
    path = tmp_path_factory.mktemp("j") / "j.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in body) + tail)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(journal_reader, "_CHUNK_BYTES", chunk)  # lines across chunk boundaries
        assert _read(path, max_line_bytes) == _reference(path, max_line_bytes)
        reader = JournalReader(path, max_line_bytes=max_line_bytes)
        raws, end = _reference_lines(path, max_line_bytes)
        got: list[tuple[int, bytes]] = []
        try:
            got.extend(reader.raw_lines())
        except JournalError as e:
            assert end == ("error", str(e), e.line)
        else:
            assert reader.torn == (end if isinstance(end, TornTail) else None)
        assert got == raws


def test_the_typed_structs_allow_exactly_the_format_fields() -> None:
    f = journal_format

    def fields(cls: type) -> set[str]:
        return set(cls.__struct_fields__)  # type: ignore[attr-defined]

    assert fields(f._MarkerLine) == f._MARKER_FIELDS
    assert fields(f._WriteLine) | fields(f._SqlLine) == f._WRITE_FIELDS
    assert fields(f._StmtLine) == f._STMT_FIELDS


def _padded(size: int) -> bytes:
    """A valid marker line of exactly ``size`` bytes (without its newline)."""
    raw = json.dumps({"v": 1, "txid": "t", "state": "committed", "ts": TS, "meta": {"p": ""}})
    return raw.replace('"p": ""', '"p": "' + "x" * (size - len(raw)) + '"').encode()


@pytest.mark.parametrize("chunk", [7, 64, 100, 101, 102, 1 << 16])
@pytest.mark.parametrize("delta", [-1, 0, 1, 2])
@pytest.mark.parametrize("newline", [True, False])
def test_line_length_limit_at_every_chunk_boundary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int, delta: int, newline: bool
) -> None:
    limit = 100
    for before in (0, 1, 37, 99):
        path = tmp_path / f"j{before}.jsonl"
        first = _padded(max(before, 80))[:before] + b"\n" if before else b""
        path.write_bytes(first + _padded(limit + delta) + (b"\n" if newline else b""))
        monkeypatch.setattr(journal_reader, "_CHUNK_BYTES", chunk)
        assert _read(path, limit) == _reference(path, limit), (before, chunk, delta)


def test_a_number_no_decimal_holds_is_a_journal_error(tmp_path: Path) -> None:
    """Until now ``1e999999999999999999999`` escaped as decimal.InvalidOperation (an
    internal error) from both decoders; it is a bad line like any other."""
    base = {"v": 1, "txid": "t", "seq": 1, "ts": TS, "state": "committed", "op": "update",
            "table": "orders", "key": {"id": 1}, "values": {"n": 1}}  # fmt: skip
    huge = "1e999999999999999999999"
    text = json.dumps(base)
    for raw in (
        text.replace('"n": 1', f'"n": {huge}'),
        text.replace('"id": 1', f'"id": {huge}'),
        text.replace('"n": 1', f'"n": {huge}, "x": "\\ud800"'),  # the json module's turn
    ):
        path = tmp_path / "j.jsonl"
        path.write_text(json.dumps(base) + "\n" + raw + "\n")
        with pytest.raises(JournalError, match="beyond the range of exact decimals") as e:
            list(JournalReader(path))
        assert e.value.line == 2
        assert _same(raw.encode() + b"\n")[0] == "error"


@pytest.mark.parametrize("where", ["values", "meta", "key"])
@pytest.mark.parametrize("newline", [True, False])
def test_a_line_nested_too_deeply_is_a_journal_error(
    tmp_path: Path, where: str, newline: bool
) -> None:
    """RecursionError from either decoder escaped the reader (an internal error, at a
    depth that depends on the caller's stack: the typed path, a frame shallower, took
    lines the reader refused before); it is a bad line like any other, and a complete
    last line, not a torn one."""
    base = {"v": 1, "txid": "t", "seq": 1, "ts": TS, "state": "committed", "op": "update",
            "table": "orders", "key": {"id": 1}, "values": {"n": 1}}  # fmt: skip
    deep = "[" * 100_000 + "]" * 100_000
    raw = json.dumps({**base, where: {"n": 0}}).replace('{"n": 0}', '{"n": ' + deep + "}")
    path = tmp_path / "j.jsonl"
    path.write_text(json.dumps(base) + "\n" + raw + ("\n" if newline else ""))
    with pytest.raises(JournalError, match="not valid JSON: nested too deeply") as e:
        list(JournalReader(path))
    assert e.value.line == 2
    assert _same(raw.encode() + b"\n") == (
        "error",
        "j.jsonl:2: not valid JSON: nested too deeply",
        2,
    )


def test_what_the_writer_writes_reads_the_same_both_ways(tmp_path: Path) -> None:
    """Round trip: every line :class:`JournalWriter` makes of awkward values (ints beyond
    64 bits, floats, Decimals, NUL, non-BMP, BOM-like text, nested json) gives the same
    record by both paths, the ordinary ones by the typed path."""
    import datetime as dt
    from decimal import Decimal

    from replverify.journal.writer import JournalWriter

    odd: list[object] = [0, -1, 2**63, 2**64, -(2**63) - 1, True, None, 0.1, -0.0, 1e300,
                         Decimal("1.0"), Decimal("-0"), Decimal("1E+2"), "", "\x00", "\U0001f600",
                         "\ufeff", "\u2028", dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
                         [1, "a"], {"x": {"y": [1.5]}}]  # fmt: skip
    path = tmp_path / "w.jsonl"
    with JournalWriter(path, fsync="never") as w:
        for i, v in enumerate(odd):
            w.write("update", '"Sales"."Orders"', {"id": i}, {"a": v, "\x00": v}, {"a": v})
            with w.transaction(txid=2**63 + i) as tx:
                s = tx.intent_statement("update", "t", "UPDATE t SET a = $1", [v])
                tx.effect_rows(s, "update", "t", [({"id": i}, {"a": v})])
                tx.intent("insert", "orders", {"id": str(v)}, {"v": v}, meta={"m": v})
    raws = path.read_bytes().splitlines(keepends=True)
    outcomes = [_same(raw, n) for n, raw in enumerate(raws, 1)]
    assert all(o[0] == "record" for o in outcomes)
    assert sum(_typed_record(raw, 1) is not None for raw in raws) >= len(raws) // 2
