"""``replverify files``: directory tree comparison (no database)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from replverify.cli.main import main
from replverify.errors import UsageError
from replverify.ops.files import compare_trees, file_digest, walk


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


BASE = {
    "a.txt": b"alpha",
    "docs/readme.md": b"# hi\n",
    "docs/deep/blob.bin": bytes(range(256)) * 5000,
    "same-size.txt": b"12345",
    "x/y/z.txt": b"z",
}


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    a = _tree(tmp_path / "a", BASE)
    b = _tree(tmp_path / "b", BASE)
    return a, b


def test_identical(trees: tuple[Path, Path]) -> None:
    report = compare_trees(*trees, block_size=4096)
    assert report.status == "identical" and report.complete
    assert report.files_a == report.files_b == 5 and report.compared == 5
    assert report.bytes_read == 2 * sum(len(v) for v in BASE.values())


def test_planted_differences(trees: tuple[Path, Path]) -> None:
    a, b = trees
    (b / "a.txt").unlink()  # missing
    (b / "new.txt").write_bytes(b"new")  # extra
    (b / "docs" / "readme.md").write_bytes(b"# hello, longer\n")  # size differs
    (b / "same-size.txt").write_bytes(b"54321")  # same size, other content
    big = bytearray(BASE["docs/deep/blob.bin"])
    big[-1] ^= 1  # one bit in the last block
    (b / "docs" / "deep" / "blob.bin").write_bytes(bytes(big))
    (b / "x" / "y" / "z.txt").unlink()
    (b / "x" / "y").rmdir()
    (b / "x" / "y").write_bytes(b"now a file")  # a directory became a file
    (a / "only-a").mkdir()
    (a / "only-a" / "f").write_bytes(b"f")
    report = compare_trees(a, b, block_size=4096)
    found = {(d.kind, d.path): d.reason for d in report.differences}
    assert found == {
        ("missing", "a.txt"): "",
        ("extra", "new.txt"): "",
        ("changed", "docs/readme.md"): "size: 5 vs 16 bytes",
        ("changed", "same-size.txt"): "content",
        ("changed", "docs/deep/blob.bin"): "content",
        ("changed", "x/y"): "type: dir vs file",
        ("missing", "x/y/z.txt"): "",
        ("missing", "only-a"): "directory",
        ("missing", "only-a/f"): "",
    }
    assert report.status == "different" and report.complete
    assert report.hashed == 2  # the size check spared the others


def test_symlinks_are_compared_not_followed(trees: tuple[Path, Path]) -> None:
    a, b = trees
    os.symlink("a.txt", a / "link")
    os.symlink("same-size.txt", b / "link")
    os.symlink("/nonexistent/target", a / "dangling")
    os.symlink("/nonexistent/target", b / "dangling")
    os.symlink(".", a / "loop")  # would recurse forever if followed
    os.symlink(".", b / "loop")
    report = compare_trees(a, b)
    assert [(d.kind, d.path, d.reason) for d in report.differences] == [
        ("changed", "link", "symlink target: a.txt vs same-size.txt")
    ]
    assert report.symlinks == 6


def test_unreadable_file_is_reported_not_raised(
    trees: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import replverify.ops.files as files

    real = files.file_digest

    def digest(path: str, block_size: int = files.BLOCK_SIZE) -> tuple[str, int]:
        if str(path).endswith("a.txt"):
            raise PermissionError(13, "Permission denied")
        return real(path, block_size)

    monkeypatch.setattr(files, "file_digest", digest)
    report = compare_trees(*trees)
    assert [(d.kind, d.path, d.reason) for d in report.differences] == [
        ("unreadable", "a.txt", "Permission denied")
    ]
    assert not report.complete


def test_unreadable_directory_listing(
    trees: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.listdir

    def listdir(path: str) -> list[str]:
        if str(path).endswith("deep"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "listdir", listdir)
    report = compare_trees(*trees)
    assert [(d.kind, d.path, d.side) for d in report.differences] == [
        ("unreadable", "docs/deep", "both")
    ]
    assert not report.complete


def test_walk_order_and_digest(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t", {"a/x": b"1", "a.b": b"2", "a-c": b"3"})
    assert [e.path for e in walk(root)] == ["a", "a/x", "a-c", "a.b"]
    assert file_digest(root / "a.b") == file_digest(root / "a.b", block_size=1)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        compare_trees(tmp_path / "nope", tmp_path)


def test_cli_exit_codes_and_json(trees: tuple[Path, Path]) -> None:
    a, b = trees
    runner = CliRunner()
    result = runner.invoke(main, ["files", str(a), str(b)])
    assert result.exit_code == 0, result.output
    (b / "extra.txt").write_bytes(b"!")
    result = runner.invoke(main, ["files", str(a), str(b), "--format", "json"])
    assert result.exit_code == 1
    doc = json.loads(result.output)
    assert doc["schema"] == "replverify.files/1" and doc["status"] == "different"
    assert doc["differences"] == [
        {"kind": "extra", "path": "extra.txt", "reason": "", "side": "", "method": "listing"}
    ]
    result = runner.invoke(main, ["files", str(a), str(b), "--format", "markdown"])
    assert result.exit_code == 1 and "extra.txt" in result.output
    result = runner.invoke(main, ["files", str(a / "missing"), str(b)])
    assert result.exit_code == 2


def test_file_urls_progress_and_every_format(trees: tuple[Path, Path]) -> None:
    a, b = trees
    runner = CliRunner()
    result = runner.invoke(main, ["files", f"file://{a}", f"file://{b}", "--progress"])
    assert result.exit_code == 0, result.output
    assert "objects" in result.output  # the progress line (stderr)
    (b / "a.txt").write_bytes(b"ALPHA")
    for fmt in ("text", "markdown", "html", "json"):
        result = runner.invoke(main, ["files", f"file://{a}", str(b), "--format", fmt])
        assert result.exit_code == 1 and "a.txt" in result.output, (fmt, result.output)
    assert json.loads(result.output)["differences"][0]["method"] == "content"
    result = runner.invoke(main, ["files", "file://elsewhere/x", str(b)])
    assert result.exit_code == 2 and "names a path on this machine" in result.output


def test_state_resumes_a_tree_comparison(trees: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = trees
    (b / "same-size.txt").write_bytes(b"54321")
    state = tmp_path / "tree.state"
    runner = CliRunner()
    args = ["files", str(a), str(b), "--state", str(state), "--format", "json"]
    first, again = runner.invoke(main, args), runner.invoke(main, args)
    assert first.exit_code == again.exit_code == 1
    d1, d2 = json.loads(first.output), json.loads(again.output)
    assert d1["differences"] == d2["differences"] and d1["summary"]["bytes_read"] > 0
    assert d2["summary"]["bytes_read"] == 0 and d2["resumed_after"] == "x/y/z.txt"


def test_profiles_shared_keys_do_not_reach_files(trees: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = trees
    conf = tmp_path / "replverify.toml"
    # A shared rpo (meant for lag/health) would make a local comparison fail: not taken.
    conf.write_text(
        f'[profiles.p]\nsource = "postgresql://db1/x"\nrpo = 30\n'
        f'[profiles.p.files]\ndir_a = "{a}"\ndir_b = "{b}"\n'
    )
    result = CliRunner().invoke(main, ["--config", str(conf), "--profile", "p", "files"])
    assert result.exit_code == 0, result.output
    conf.write_text(f'[profiles.p]\ndir_a = "{a}"\n')
    result = CliRunner().invoke(main, ["--config", str(conf), "--profile", "p", "files"])
    assert result.exit_code == 2 and "set it in [profiles.p.files]" in result.output
