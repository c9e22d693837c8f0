"""The documentation cannot drift from the repository and the code.

* every relative link in README.md and docs/ points to a file that exists (and, into a
  Markdown file, to a heading that exists);
* every ``replverify <command>`` in docs/tour.md is a real command, and every command line
  shown there parses with the real CLI's options;
* every journal example (```jsonl blocks) in docs/ passes replverify's own journal reader;
* the Python snippets in docs/ are valid Python and import names that exist.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import click
import pytest

from replverify.cli.main import main
from replverify.journal.format import Marker, WriteRecord
from replverify.journal.reader import JournalReader

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MARKDOWN = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
TOUR = DOCS / "tour.md"
JOURNAL_DOC = DOCS / "journal.md"

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"(?<!!)\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        slug = _slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _links(path: Path) -> list[str]:
    targets = []
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        line = re.sub(r"`[^`]*`", "", line)  # links inside inline code are not links
        targets += LINK.findall(line)
    return targets


# --------------------------------------------------------------------------- links


@pytest.mark.parametrize("doc", MARKDOWN, ids=_rel)
def test_relative_links_resolve(doc):
    for target in _links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        assert dest.exists(), f"{_rel(doc)}: link to missing {target}"
        assert dest == ROOT or ROOT in dest.parents, f"{_rel(doc)}: {target} leaves the repo"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{_rel(doc)}: no heading #{anchor} in {target}"


def test_readme_links_the_documentation():
    links = set(_links(ROOT / "README.md"))
    for target in ("docs/tour.md", "docs/journal.md", "docs/comparison.md"):
        assert target in links
    assert any(t.startswith("docs/ci/") for t in links)


def test_slugs_match_github():
    assert _slug("gate — planned failover") == "gate--planned-failover"
    assert _slug("How a comparison works, and why it is exact") == (
        "how-a-comparison-works-and-why-it-is-exact"
    )
    assert _slug("FailoverPool (Python)") == "failoverpool-python"


# --------------------------------------------------------------------------- the tour


def _tour_command_lines() -> list[list[str]]:
    commands = []
    for line in TOUR.read_text(encoding="utf-8").splitlines():
        if line.startswith("$ replverify "):
            command = line[2:].split("; echo", 1)[0]
            commands.append(shlex.split(command))
    return commands


def test_tour_names_only_real_commands():
    text = TOUR.read_text(encoding="utf-8")
    named = set(re.findall(r"`replverify ([a-z][a-z-]*)", text))
    named |= {argv[1] for argv in _tour_command_lines()}
    assert named, "the tour shows no command"
    assert named <= set(main.commands), f"not commands: {sorted(named - set(main.commands))}"
    # the four jobs are all there
    for command in ("diff", "lag", "reconcile", "gate", "failback", "health"):
        assert command in named


def test_tour_command_lines_parse():
    lines = _tour_command_lines()
    assert len(lines) >= 10
    for argv in lines:
        command = main.commands[argv[1]]
        try:  # parses and converts the options; runs nothing
            command.make_context(argv[1], argv[2:])
        except click.UsageError as e:  # unknown option, missing argument, bad value
            pytest.fail(f"{shlex.join(argv)}: {e.format_message()}")


def test_tour_shows_no_password():
    text = TOUR.read_text(encoding="utf-8")
    assert not re.search(r"postgres(?:ql)?://[^/@\s:]*:[^/@\s]*@", text)


# --------------------------------------------------------------------------- journal


def _jsonl_examples() -> list[tuple[Path, str]]:
    return [
        (doc, block)
        for doc in sorted(DOCS.rglob("*.md"))
        for block in _code_blocks(doc.read_text(encoding="utf-8"), "jsonl")
    ]


def test_journal_doc_has_examples():
    blocks = _code_blocks(JOURNAL_DOC.read_text(encoding="utf-8"), "jsonl")
    assert len(blocks) >= 4


@pytest.mark.parametrize(
    "doc, block", _jsonl_examples(), ids=lambda v: _rel(v) if isinstance(v, Path) else ""
)
def test_journal_examples_pass_the_reader(tmp_path, doc, block):
    path = tmp_path / "writes.jsonl"
    path.write_text(block, encoding="utf-8")
    reader = JournalReader(path)
    records = list(reader)  # raises JournalError naming the line
    assert reader.torn is None
    assert len(records) == len(block.splitlines())


def test_journal_example_covers_the_format(tmp_path):
    """The annotated example shows every kind of record it talks about."""
    text = JOURNAL_DOC.read_text(encoding="utf-8")
    example = text[text.index("## An example") :]
    path = tmp_path / "example.jsonl"
    path.write_text(_code_blocks(example, "jsonl")[0], encoding="utf-8")
    records = list(JournalReader(path))
    writes = [r for r in records if isinstance(r, WriteRecord)]
    markers = [r for r in records if isinstance(r, Marker)]
    assert {w.op for w in writes} >= {"insert", "update", "delete", "upsert"}
    assert {w.state for w in writes} == {"intent", "committed"}
    assert {m.state for m in markers} == {"committed", "aborted"}
    assert any(w.sql for w in writes) and any(w.before for w in writes)
    settled = {m.txid for m in markers} | {w.txid for w in writes if w.state == "committed"}
    assert any(w.txid not in settled for w in writes), "no in-doubt intent in the example"


# --------------------------------------------------------------------------- python


@pytest.mark.parametrize("doc", sorted(DOCS.rglob("*.md")), ids=_rel)
def test_python_snippets_compile_and_import_real_names(doc):
    for block in _code_blocks(doc.read_text(encoding="utf-8"), "python"):
        flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        tree = compile(block, _rel(doc), "exec", flags=flags)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("replverify"):
                module = importlib.import_module(node.module or "")
                for alias in node.names:
                    if not hasattr(module, alias.name):  # a submodule: import it
                        importlib.import_module(f"{node.module}.{alias.name}")
