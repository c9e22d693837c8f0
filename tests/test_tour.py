"""docs/tour.md runs as written: its commands, in order, in one shell, with the output shown.

The ``sh`` blocks and the ``$ `` lines of the ``console`` blocks become one bash script,
run on a fresh pair of local clusters. Every ``sh`` block must succeed, every console
command must end with the ``[exit N]`` the tour shows, and every line of output the tour
shows must be printed - with what differs from run to run masked on both sides (ports,
temporary directories, timestamps, LSNs, txids, numbers). A few lines whose wording
depends on timing are listed in :data:`TIMING_DEPENDENT` and not compared.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from replverify.testing.clusters import ENV_TMPDIR, cluster_tmp_root, stop_clusters_under

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


def tour_steps(markdown: str) -> list[Step]:
    steps: list[Step] = []
    for kind, body in re.findall(r"^```(sh|console)\n(.*?)^```$", markdown, re.S | re.M):
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


def test_the_tour_runs_as_written(tmp_path):
    tour = TOUR.read_text(encoding="utf-8")
    steps = tour_steps(tour)
    root = Path(tempfile.mkdtemp(prefix="tour-", dir=cluster_tmp_root()))
    root.chmod(0o755)  # the postgres user reaches the data directories
    bin_dir = str(Path(sys.executable).parent)  # replverify and python of this venv
    env = {**os.environ, ENV_TMPDIR: str(root), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    (tmp_path / "tour.sh").write_text(script(steps), encoding="utf-8")
    try:
        proc = subprocess.run(
            ["bash", "tour.sh"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=540,
            stdin=subprocess.DEVNULL,
        )
        outputs = {
            int(n): out.strip("\n").splitlines()
            for n, out in re.findall(
                r"^@@step (\d+)\n(.*?)(?=^@@step |\Z)", proc.stdout, re.S | re.M
            )
        }
        last = max(outputs, default=0)
        assert proc.returncode == 0 and last == len(steps) - 1, (
            f"the tour stopped in step {last}: {steps[last].text[:300]}\n"
            f"exit {proc.returncode}\n--- stderr\n{proc.stderr[-3000:]}"
        )
        problems = [
            problem
            for n, step in enumerate(steps)
            if step.kind == "console"
            for problem in check_console(step, outputs[n])
        ]
        # the journal the tour shows is the one app.py wrote
        (journal,) = re.findall(r"^```jsonl\n(.*?)^```$", tour, re.S | re.M)
        written = (tmp_path / "writes.jsonl").read_text(encoding="utf-8")
        if list(map(mask, journal.splitlines())) != list(map(mask, written.splitlines())):
            problems.append(f"writes.jsonl is not the tour's:\n{written}")
        assert not problems, "\n".join(problems) + "\n--- output\n" + proc.stdout[-6000:]
        assert not any(root.iterdir()), "the tour left its clusters behind"
    finally:
        stop_clusters_under(root)
        shutil.rmtree(root, ignore_errors=True)
