"""docs/tour.md runs as written: its commands, in order, in one shell, with the output shown.

The ``sh`` blocks and the ``$ `` lines of the ``console`` blocks become one bash script,
run on a fresh pair of local clusters. Every ``sh`` block must succeed, every console
command must end with the ``[exit N]`` the tour shows, and every line of output the tour
shows must be printed - with what differs from run to run masked on both sides (ports,
temporary directories, timestamps, LSNs, txids, numbers). A few lines whose wording
depends on timing are listed in :data:`TIMING_DEPENDENT` and not compared.

After a change of wording, ``python tests/test_tour.py --update`` runs the tour the same
way and writes what it printed into the page's output blocks (and its journal block),
with the ports and the directory name of the run replaced by those the page already
shows; the prose is left alone and needs reading afterwards.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from replverify.testing.clusters import (
    ENV_TMPDIR,
    cluster_tmp_root,
    find_binaries,
    stop_clusters_under,
)

TOUR = Path(__file__).resolve().parent.parent / "docs" / "tour.md"

#: Lines of shown output that depend on timing (which lag method applied, whether
#: PostgreSQL still shows a replay_lag), matched after masking.
TIMING_DEPENDENT = [
    re.compile(p)
    for p in (
        r"^lag at (start|end): ",
        r"^  sender ",
        r"^TS +N s +N bytes +\S+",  # one lag sample
    )
]

MASKS = [
    (re.compile(p), r)
    for p, r in (
        (r"\S*/replverify-[a-z0-9_]{8}\b", "DIR"),  # a temporary directory
        (r"replverify-[a-z0-9_]{8}-", "CLUSTER-"),  # a cluster_name
        (r"\b[0-9a-f]{8}-(?=\d)", "TXID-"),
        (r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(\+00(:00)?)?", "TS"),
        (r"\b[0-9A-F]+/[0-9A-F]+\b", "LSN"),
        (r"\d[\d,]*(\.\d+)?", "N"),
    )
]


def mask(line: str) -> str:
    for pattern, replacement in MASKS:
        line = pattern.sub(replacement, line)
    return line.rstrip()


@dataclasses.dataclass
class Step:
    kind: str  # "sh" or "console"
    text: str  # the shell text to run
    shown: list[str]  # console: the output the tour shows


#: A block of the tour that runs: its kind and its body.
BLOCK = re.compile(r"^```(sh|console)\n(.*?)^```$", re.S | re.M)
#: The tour's journal block, which must be the ``writes.jsonl`` that app.py wrote.
JOURNAL_BLOCK = re.compile(r"^```jsonl\n(.*?)^```$", re.S | re.M)


def tour_steps(markdown: str) -> list[Step]:
    steps: list[Step] = []
    for kind, body in BLOCK.findall(markdown):
        if kind == "sh":
            steps.append(Step("sh", body, []))
            continue
        for line in body.splitlines():
            if line.startswith("$ "):
                steps.append(Step("console", line[2:], []))
            else:
                assert steps and steps[-1].kind == "console", f"output before a command: {line}"
                steps[-1].shown.append(line)
    return steps


def script(steps: list[Step]) -> str:
    parts = []
    for n, step in enumerate(steps):
        parts.append(f"printf '\\n@@step {n}\\n'")
        if step.kind == "sh":  # a set-up step: any failing command ends the tour
            parts.append(f"set -e\n{step.text}set +e")
        else:
            parts.append(step.text)
    return "\n".join(parts) + "\n"


def check_console(step: Step, got: list[str]) -> list[str]:
    """What is wrong with the output ``got`` of a console step, against what it shows."""
    problems = []
    for line in step.shown:
        if re.fullmatch(r"\[exit \d+\]", line) and line not in got:
            problems.append(f"shown {line}, got {[g for g in got if g.startswith('[exit')]}")
    got_masked = {mask(g) for g in got}
    for line in step.shown:
        shown = mask(line)
        if any(p.search(shown) for p in TIMING_DEPENDENT):
            continue
        if shown and shown not in got_masked:
            problems.append(f"shown but not printed: {line}")
    shown_masked = {mask(s) for s in step.shown}
    for line in got:  # no note or verdict goes unshown
        if re.match(r"(note|[A-Z][A-Z ]+): ", line) and mask(line) not in shown_masked:
            problems.append(f"printed but not shown: {line}")
    return [f"$ {step.text}\n  {p}" for p in problems]


def test_the_tour_is_parsed_into_its_steps():
    steps = tour_steps(TOUR.read_text(encoding="utf-8"))
    kinds = [s.kind for s in steps]
    assert kinds[0] == "sh" and "cat > pair.py" in steps[0].text
    assert kinds.count("console") >= 15 and kinds.count("sh") >= 8
    assert "rm -rf" in steps[-1].text  # the tour cleans up after itself
    assert "..." not in steps[0].text
    text = "\n".join(s.text for s in steps)
    exported = set(re.findall(r'^ +"([A-Z_]+)": ', steps[0].text, re.M))  # by pair.py
    exported |= set(re.findall(r"\b([A-Z_]+)=", text))
    used = set(re.findall(r"\$\{?([A-Z_]+)\b", text))
    used |= set(re.findall(r'os\.environ\["([A-Z_]+)"\]', text))
    assert {"PRIMARY", "PRIMARY_DATADIR", "PG_CTL"} <= used
    assert used <= exported, f"never set: {sorted(used - exported)}"


@dataclasses.dataclass
class TourRun:
    steps: list[Step]
    returncode: int
    stdout: str
    stderr: str
    outputs: dict[int, list[str]]  # step number -> the lines it printed
    journal: str  # the writes.jsonl that app.py wrote ("" if none)
    leftovers: list[Path]  # what the tour left in its clusters' directory

    @property
    def last(self) -> int:
        return max(self.outputs, default=0)

    @property
    def completed(self) -> bool:
        return self.returncode == 0 and self.last == len(self.steps) - 1

    def stopped(self) -> str:
        return (
            f"the tour stopped in step {self.last}: {self.steps[self.last].text[:300]}\n"
            f"exit {self.returncode}\n--- stderr\n{self.stderr[-3000:]}"
        )


def run_tour(tour: str, workdir: Path) -> TourRun:
    """Run the tour's steps as one bash script in ``workdir``, on clusters of its own."""
    steps = tour_steps(tour)
    root = Path(tempfile.mkdtemp(prefix="tour-", dir=cluster_tmp_root()))
    root.chmod(0o755)  # the postgres user reaches the data directories
    bin_dir = str(Path(sys.executable).parent)  # replverify and python of this venv
    env = {**os.environ, ENV_TMPDIR: str(root), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    (workdir / "tour.sh").write_text(script(steps), encoding="utf-8")
    try:
        proc = subprocess.run(
            ["bash", "tour.sh"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=540,
            stdin=subprocess.DEVNULL,
        )
        leftovers = list(root.iterdir())
    finally:
        stop_clusters_under(root)
        shutil.rmtree(root, ignore_errors=True)
    outputs = {
        int(n): out.strip("\n").splitlines()
        for n, out in re.findall(r"^@@step (\d+)\n(.*?)(?=^@@step |\Z)", proc.stdout, re.S | re.M)
    }
    journal_file = workdir / "writes.jsonl"
    journal = journal_file.read_text(encoding="utf-8") if journal_file.exists() else ""
    return TourRun(steps, proc.returncode, proc.stdout, proc.stderr, outputs, journal, leftovers)


def tour_problems(tour: str, run: TourRun) -> list[str]:
    """Where the output of a completed ``run`` differs from what ``tour`` shows."""
    problems = [
        problem
        for n, step in enumerate(tour_steps(tour))
        if step.kind == "console"
        for problem in check_console(step, run.outputs.get(n, []))
    ]
    # the journal the tour shows is the one app.py wrote
    (journal,) = JOURNAL_BLOCK.findall(tour)
    if list(map(mask, journal.splitlines())) != list(map(mask, run.journal.splitlines())):
        problems.append(f"writes.jsonl is not the tour's:\n{run.journal}")
    return problems


def test_the_tour_runs_as_written(tmp_path):
    tour = TOUR.read_text(encoding="utf-8")
    run = run_tour(tour, tmp_path)
    assert run.completed, run.stopped()
    problems = tour_problems(tour, run)
    assert not problems, "\n".join(problems) + "\n--- output\n" + run.stdout[-6000:]
    assert not run.leftovers, "the tour left its clusters behind"


# --------------------------------------------------------------------------- --update


#: The run's date and versions in the page's opening paragraph.
CAPTURED = re.compile(
    r"on(\s+)\d{4}-\d\d-\d\d(\s+)with(\s+)replverify(\s+)\S+(\s+)and(\s+)PostgreSQL(\s+)[\d.]+"
)


def _identities(lines: list[str]) -> dict[str, str]:
    """The ports and the directory of a run, from the set-up's ``export`` lines."""
    exported = dict(re.findall(r"^export ([A-Z_]+)=(.*)$", "\n".join(lines), re.M))
    found = {}
    for name in ("PRIMARY", "STANDBY"):
        port = re.search(r"@127\.0\.0\.1:(\d+)/", exported.get(name, ""))
        if port:
            found[name] = f"127.0.0.1:{port.group(1)}"
    directory = exported.get("CLUSTERS_DIR", "").strip("'")
    if directory:
        found["CLUSTERS_DIR"] = directory
        found["cluster name"] = Path(directory).name
    return found


def normaliser(run: TourRun) -> Callable[[str], str]:
    """Replaces the run's ports and directory by those the page already shows.

    Both come from the set-up step (the one that shows ``export PRIMARY=...``), so the
    page keeps one pair of ports and one directory name from run to run.
    """
    setups = [
        n for n, step in enumerate(run.steps) if any("export PRIMARY=" in s for s in step.shown)
    ]
    if not setups:
        return lambda text: text
    shown = _identities(run.steps[setups[0]].shown)
    got = _identities(run.outputs.get(setups[0], []))
    mapping = {got[k]: shown[k] for k in shown.keys() & got.keys() if got[k] != shown[k]}
    if not mapping:
        return lambda text: text
    # one pass, longest first: a directory goes before its name, and a port of the run
    # that is the page's other port is not replaced twice
    pattern = re.compile(
        "|".join(
            re.escape(k) + (r"(?!\d)" if k[-1].isdigit() else "")
            for k in sorted(mapping, key=len, reverse=True)
        )
    )
    return lambda text: pattern.sub(lambda m: mapping[m.group(0)], text)


def updated_tour(tour: str, run: TourRun) -> str:
    """``tour`` with every output block holding what ``run`` printed."""
    normal = normaliser(run)
    n = 0

    def block(match: re.Match[str]) -> str:
        nonlocal n
        if match.group(1) == "sh":
            n += 1
            return match.group(0)
        lines = []
        for step in tour_steps(match.group(0)):
            lines.append(f"$ {step.text}")
            for line in run.outputs.get(n, []):
                line = normal(line).rstrip()
                if line.startswith("$ ") or line.startswith("```"):
                    raise ValueError(f"output that would read as markdown or a command: {line}")
                lines.append(line)
            n += 1
        return "```console\n" + "".join(f"{line}\n" for line in lines) + "```"

    tour = BLOCK.sub(block, tour)
    journal = "".join(f"{normal(line).rstrip()}\n" for line in run.journal.splitlines())
    tour = JOURNAL_BLOCK.sub(lambda m: f"```jsonl\n{journal}```", tour, count=1)
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    version = importlib.metadata.version("replverify")
    postgres = find_binaries().version.removeprefix("PostgreSQL ")
    words = (today, "with", "replverify", version, "and", "PostgreSQL", postgres)
    return CAPTURED.sub(
        lambda m: (
            "on" + "".join(space + word for space, word in zip(m.groups(), words, strict=True))
        ),
        tour,
        count=1,
    )


def changed_exits(run: TourRun) -> list[str]:
    """Console commands whose ``[exit N]`` is not the one the page shows."""
    changed = []
    for n, step in enumerate(run.steps):
        shown = [s for s in step.shown if re.fullmatch(r"\[exit \d+\]", s)]
        got = [g for g in run.outputs.get(n, []) if re.fullmatch(r"\[exit \d+\]", g)]
        if step.kind == "console" and shown != got:
            changed.append(f"$ {step.text}\n  shown {shown}, got {got}")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tests/test_tour.py",
        description="Run docs/tour.md as its test does and write what it printed into it.",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        required=True,
        help="rewrite the output blocks of docs/tour.md (the prose stays)",
    )
    parser.add_argument(
        "--accept-exits",
        action="store_true",
        help="write the page even where a command's exit status changed",
    )
    args = parser.parse_args(argv)
    tour = TOUR.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="tour-update-") as workdir:
        run = run_tour(tour, Path(workdir))
    if not run.completed:
        print(run.stopped(), file=sys.stderr)
        return 1
    if run.leftovers:
        print("the tour left its clusters behind: not written", file=sys.stderr)
        return 1
    changed = changed_exits(run)
    if changed and not args.accept_exits:
        print(
            "exit statuses differ from the page (not written; --accept-exits writes them):",
            *changed,
            sep="\n",
            file=sys.stderr,
        )
        return 1
    try:
        new = updated_tour(tour, run)
    except ValueError as exc:
        print(f"not written: {exc}", file=sys.stderr)
        return 1
    if new == tour:
        print(f"{TOUR}: unchanged")
        return 0
    TOUR.write_text(new, encoding="utf-8")
    remaining = tour_problems(new, run)
    print(
        f"{TOUR}: rewritten ({len(tour_problems(tour, run))} differences before, "
        f"{len(remaining)} after); read the prose around what changed: git diff -- {TOUR}"
    )
    for problem in remaining:
        print(problem, file=sys.stderr)
    return 1 if remaining else 0


# --------------------------------------------------------------------------- --update, pure

_PAGE = """# Tour

Prose before, captured on 2026-01-01 with replverify 0.0.1 and
PostgreSQL 9.6 somewhere.

```console
$ python pair.py > tour.env; echo "[exit $?]"; cat tour.env
[exit 0]
export PRIMARY=postgresql://postgres@127.0.0.1:36025/shop
export STANDBY=postgresql://postgres@127.0.0.1:42595/shop
export CLUSTERS_DIR=/dev/shm/replverify-3_xshpel
```

```sh
. ./tour.env
```

Prose between.

```console
$ replverify diff "$PRIMARY" "$STANDBY"; echo "[exit $?]"
old wording
[exit 0]
$ cat replay.sql
-- old script
```

```jsonl
{"old": 1}
```
"""


def _run(outputs: dict[int, list[str]], journal: str = "") -> TourRun:
    return TourRun(tour_steps(_PAGE), 0, "", "", outputs, journal, [])


_OUTPUTS = {
    0: [
        "[exit 0]",
        "export PRIMARY=postgresql://postgres@127.0.0.1:42595/shop",  # the page's other port
        "export STANDBY=postgresql://postgres@127.0.0.1:51000/shop",
        "export CLUSTERS_DIR=/tmp/x/replverify-abcd1234",
    ],
    1: [],
    2: [
        "source  postgresql://postgres@127.0.0.1:42595/shop",
        "target  postgresql://postgres@127.0.0.1:51000/shop   ",
        "",
        "'replverify-abcd1234-pair1' in /tmp/x/replverify-abcd1234/p",
        "note: new wording",
        "[exit 1]",
    ],
    3: ["-- new script", "SET LOCAL TimeZone = 'UTC';"],
}


def test_update_writes_the_output_and_keeps_the_prose_and_the_commands():
    new = updated_tour(_PAGE, _run(_OUTPUTS, '{"new": 1}\n'))
    assert "Prose before, captured on " in new and "Prose between." in new
    assert "```sh\n. ./tour.env\n```" in new
    assert tour_steps(new) == [
        dataclasses.replace(step, shown=shown)
        for step, shown in zip(
            tour_steps(_PAGE),
            [
                [
                    "[exit 0]",
                    "export PRIMARY=postgresql://postgres@127.0.0.1:36025/shop",
                    "export STANDBY=postgresql://postgres@127.0.0.1:42595/shop",
                    "export CLUSTERS_DIR=/dev/shm/replverify-3_xshpel",
                ],
                [],
                [
                    "source  postgresql://postgres@127.0.0.1:36025/shop",
                    "target  postgresql://postgres@127.0.0.1:42595/shop",
                    "",
                    "'replverify-3_xshpel-pair1' in /dev/shm/replverify-3_xshpel/p",
                    "note: new wording",
                    "[exit 1]",
                ],
                ["-- new script", "SET LOCAL TimeZone = 'UTC';"],
            ],
            strict=True,
        )
    ]
    assert '```jsonl\n{"new": 1}\n```' in new
    version = importlib.metadata.version("replverify")
    assert re.search(
        rf"captured on \d{{4}}-\d\d-\d\d with replverify {re.escape(version)} and\n"
        rf"PostgreSQL \d+\.\d+ somewhere",
        new,
    )
    assert updated_tour(new, _run(_OUTPUTS, '{"new": 1}\n')).count("```") == new.count("```")


def test_update_compares_clean_against_the_run_it_came_from():
    run = _run(_OUTPUTS, '{"new": 1}\n')
    assert tour_problems(_PAGE, run)
    assert tour_problems(updated_tour(_PAGE, run), run) == []


def test_update_reports_changed_exit_statuses():
    (changed,) = changed_exits(_run(_OUTPUTS))
    assert changed.startswith('$ replverify diff "$PRIMARY"')
    assert "shown ['[exit 0]'], got ['[exit 1]']" in changed


def test_update_refuses_output_that_would_read_as_a_command():
    outputs = {**_OUTPUTS, 3: ["$ rm -rf /"]}
    with pytest.raises(ValueError, match="would read as markdown or a command"):
        updated_tour(_PAGE, _run(outputs))


if __name__ == "__main__":
    sys.exit(main())
