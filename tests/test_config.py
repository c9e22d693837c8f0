"""``replverify.toml`` profiles: parsing and checking (no database), the CLI hook, and
one ``diff`` run through a profile against the real clusters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from replverify.cli.config import Value, expand, has_literal_password, load, parse
from replverify.cli.main import config_schema, main, profile_defaults
from replverify.errors import ConfigError

SCHEMA = config_schema(main)
SECRET = "Pw-7kq2-zz"


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, "conf.toml", SCHEMA)
    return str(info.value)


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("replverify: error: "), result.stderr
    return lines[0]


@pytest.fixture
def trees(tmp_path):
    """Two identical directories for ``files``, which needs no database."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f.txt").write_text("x")
    return tmp_path


# ============================================================== keys come from the CLI


def test_keys_are_the_commands_parameters():
    diff = SCHEMA["diff"]
    assert {"source", "target", "tables", "exclude", "chunk_rows", "format", "output"} <= set(diff)
    tables = diff["tables"]
    assert (tables.name, tables.multiple, tables.kind) == ("tables", True, "str")
    assert (diff["format"].name, diff["fence"].kind, diff["source"].name) == (
        "fmt",
        "bool",
        "source",
    )
    assert diff["chunk_rows"].kind == "int" and SCHEMA["lag"]["rpo"].kind == "float"
    assert "digest" in SCHEMA["diff"] and "copy" in SCHEMA["diff"]["digest"].choices
    assert {"journal", "target", "source", "replay_sql"} <= set(SCHEMA["reconcile"])
    assert {"metrics_port", "metrics_addr", "watch"} <= set(SCHEMA["lag"])


def test_shared_keys_apply_to_every_command_and_command_tables_override(tmp_path):
    path = write(
        tmp_path / "c.toml",
        """
        [profiles.prod]
        source = "${SRC}"
        target = "postgresql://app@db2.geo:5432/shop"
        rpo = 30
        tables = ["public.*"]
        exclude = ["public.audit_*"]
        chunk_rows = 20000

        [profiles.prod.diff]
        fence = false

        [profiles.prod.lag]
        rpo = 5
        watch = true

        [profiles.prod.reconcile]
        journal = "/var/log/app/journal.jsonl"
        """.replace("\n        ", "\n"),
    )
    defaults = profile_defaults(main, "prod", str(path))
    diff = defaults["diff"]
    assert diff["tables"] == ("public.*",) and diff["exclude"] == ("public.audit_*",)
    assert (diff["chunk_rows"], diff["fence"]) == (20000, False)
    assert diff["target"] == "postgresql://app@db2.geo:5432/shop"
    # ${SRC} is not expanded yet: click calls the value only when the command line lacks it.
    assert callable(diff["source"]) and str(diff["source"]) == "${SRC}"
    assert (defaults["lag"]["rpo"], defaults["lag"]["watch"]) == (5, True)
    assert defaults["health"]["rpo"] == 30
    assert defaults["reconcile"]["journal"] == "/var/log/app/journal.jsonl"
    assert "rpo" not in defaults["reconcile"] and "files" not in defaults
    assert "fence" not in defaults["gate"]


def test_keys_meaning_different_things_must_name_their_command():
    # diff's --fence fences reads; gate's --fence makes the source read-only (a write).
    message = error_of("[profiles.p]\nfence = true\nreplay_sql = 'r.sql'\n")
    assert "profiles.p.fence: means different things for diff and gate: set it in " in message
    assert "[profiles.p.diff] or [profiles.p.gate]" in message
    assert "profiles.p.replay_sql: means different things for reconcile and failback" in message
    parse("[profiles.p.gate]\nfence = true\n[profiles.p.diff]\nfence = false\n", "c", SCHEMA)


# ============================================================== ${VAR}


def test_environment_variables_are_expanded_when_used():
    env = {"DSN": "postgresql://app@db1/shop", "EMPTY": ""}
    assert expand("${DSN}", env, "w") == "postgresql://app@db1/shop"
    assert expand("a${EMPTY}b $$HOME $x $${DSN}", env, "w") == "ab $$HOME $x ${DSN}"
    value = Value(("${DSN}", "lit"), "conf.toml: profiles.p.tables")
    assert value.resolve(env) == ("postgresql://app@db1/shop", "lit")
    with pytest.raises(ConfigError, match=r"conf.toml: profiles.p.tables: .*NOPE is not set"):
        Value("${NOPE}", "conf.toml: profiles.p.tables").resolve({})
    assert "'${' must start" in error_of('[profiles.p]\ntarget = "${1BAD}"\n')
    assert "'${' must start" in error_of("[profiles.p]\nwhere = \"a = '${x'\"\n")


def test_unset_variable_is_an_error_naming_it_only_when_its_value_is_used(trees, monkeypatch):
    write(
        trees / "replverify.toml",
        '[profiles.p]\nsource = "${RV_UNSET_SRC}"\n[profiles.p.files]\n'
        'dir_a = "${RV_DIR_A}"\ndir_b = "b"\n',
    )
    conf = str(trees / "replverify.toml")
    monkeypatch.chdir(trees)
    line = one_line_error(run("--config", conf, "--profile", "p", "files"))
    assert "RV_DIR_A is not set" in line and "profiles.p.files.dir_a" in line
    assert conf in line
    # Given on the command line, the profile's value (and its variable) is not needed.
    result = run("--config", conf, "--profile", "p", "files", str(trees / "a"))
    assert result.exit_code == 0, result.output
    result = run("--config", conf, "--profile", "p", "files", env={"RV_DIR_A": str(trees / "a")})
    assert result.exit_code == 0, result.output


# ============================================================== passwords


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://app:{SECRET}@db1:5432/shop",
        f"postgres://app:{SECRET}@db1,db2/shop?sslmode=require",
        f"postgresql://app@db1/shop?sslmode=require&password={SECRET}",
        f"host=db1 user=app password={SECRET} dbname=shop",
        f"host=db1 password = '{SECRET} x'",
        "postgresql://app:pre${PW}@db1/shop",
    ],
)
def test_a_password_in_the_file_is_refused_and_never_echoed(dsn, tmp_path):
    assert has_literal_password(dsn)
    text = f'[profiles.prod.lag]\ntarget = """{dsn}"""\n'
    message = error_of(text)
    assert "conf.toml: profiles.prod.lag.target: a password is written" in message
    assert SECRET not in message and "pre" not in message
    conf = write(tmp_path / "c.toml", text)
    line = one_line_error(run("--config", str(conf), "--profile", "prod", "lag"))
    assert "profiles.prod.lag.target" in line and SECRET not in line


@pytest.mark.parametrize(
    "dsn",
    [
        "${PROD_PRIMARY_DSN}",
        "postgresql://app@db1:5432/shop",
        "postgresql://app:${DB_PASSWORD}@db1/shop",
        "postgresql://app:@db1/shop",
        "host=db1 user=app dbname=shop passfile=/etc/pgpass",
        "host=db1 password=${PW}",
        "",
    ],
)
def test_dsns_without_a_written_password_are_fine(dsn):
    assert not has_literal_password(dsn)
    parse(f'[profiles.p]\nsource = """{dsn}"""\n', "conf.toml", SCHEMA)


# ============================================================== mistakes are named


def test_unknown_keys_name_the_file_and_the_key_and_suggest():
    message = error_of(
        "[profiles.prod]\nchunk_row = 5\n[profiles.prod.lag]\nsampels = 3\njournal = 'x'\n"
        "[profiles.other]\ntable = ['x']\n"
    )
    assert message.startswith("conf.toml: ")
    assert (
        "profiles.prod.chunk_row: unknown key" in message and "did you mean chunk_rows" in message
    )
    assert "profiles.prod.lag.sampels: unknown key" in message and "samples" in message
    assert "profiles.prod.lag.journal: unknown key: not an option of lag" in message
    assert "profiles.other.table: unknown key" in message and "did you mean tables" in message
    assert "settings: unknown key" in error_of("[settings]\nx = 1\n")
    assert "must be a table" in error_of("[profiles]\nprod = 1\n")
    assert "profiles.p.diff: must be a table" in error_of("[profiles.p]\ndiff = 1\n")


def test_wrong_types_ranges_and_choices_are_all_reported_at_once():
    message = error_of(
        "[profiles.p]\njobs = 0\ntables = 'orders'\ndigest = 'fast'\nrpo = 'soon'\n"
        "watch = 'yes'\nchunk_rows = 1.5\n"
    )
    assert "profiles.p.jobs: 0 is not in the range x>=1" in message
    assert "profiles.p.tables: must be a list of strings, not a string" in message
    assert "profiles.p.digest: must be one of auto, copy, server, client, not 'fast'" in message
    assert "profiles.p.rpo: must be a number, not a string" in message
    assert "profiles.p.watch: must be true or false, not a string" in message
    assert "profiles.p.chunk_rows: must be an integer, not a number" in message
    assert message.count("profiles.p.rpo") == 1  # rpo of lag and of health: said once
    parse("[profiles.p]\nrpo = 30\ninterval = 2\n", "conf.toml", SCHEMA)  # ints for floats


def test_unknown_profile_lists_the_available_ones(tmp_path):
    conf = write(tmp_path / "c.toml", "[profiles.prod]\nrpo = 1\n[profiles.staging]\nrpo = 9\n")
    with pytest.raises(ConfigError, match=r"no profile 'prd' \(profiles: prod, staging\)"):
        load(conf, SCHEMA).profile("prd")
    line = one_line_error(run("--config", str(conf), "--profile", "prd", "health", "a=b", "c=d"))
    assert str(conf) in line and "prod, staging" in line


def test_bad_toml_gives_the_line(tmp_path):
    conf = write(tmp_path / "c.toml", '[profiles.p]\nrpo = 1\ntarget = "postgresql://x\n')
    line = one_line_error(run("--config", str(conf), "--profile", "p", "files", "a", "b"))
    assert f"{conf}: not valid TOML" in line and "line 3" in line


def test_missing_file_and_config_without_profile(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(run("--profile", "p", "files", "a", "b"))
    assert "no replverify.toml in the current directory" in line and "--config" in line
    line = one_line_error(run("--config", str(tmp_path / "nope.toml"), "--profile", "p", "demo"))
    assert "cannot read configuration file" in line and "nope.toml" in line
    conf = write(tmp_path / "c.toml", "[profiles.a]\n[profiles.b]\n")
    line = one_line_error(run("--config", str(conf), "files", "a", "b"))
    assert "choose a profile with --profile (a, b)" in line


# ============================================================== discovery and precedence


def test_discovered_in_the_current_directory_and_named_by_environment(trees, monkeypatch):
    monkeypatch.chdir(trees)
    write(trees / "replverify.toml", '[profiles.p.files]\ndir_a = "a"\ndir_b = "b"\n')
    result = run("--profile", "p", "files")
    assert result.exit_code == 0, result.output
    assert "identical" in result.output.lower()
    # Without a profile the file is not read at all.
    assert run("files").exit_code == 2 and "Missing argument" in run("files").output
    # $REPLVERIFY_PROFILE and $REPLVERIFY_CONFIG (elsewhere, so not the discovered file).
    other = write(trees / "other.toml", '[profiles.q.files]\ndir_a = "a"\ndir_b = "a"\n')
    result = run("files", env={"REPLVERIFY_PROFILE": "p"})
    assert result.exit_code == 0, result.output
    result = run("files", env={"REPLVERIFY_PROFILE": "q", "REPLVERIFY_CONFIG": str(other)})
    assert result.exit_code == 0, result.output
    # The command line beats the environment.
    result = run("--profile", "p", "files", env={"REPLVERIFY_PROFILE": "q"})
    assert result.exit_code == 0, result.output


def test_version_works_with_any_file_around(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "replverify.toml", "this is = not [toml\n")
    result = run("--version")
    assert result.exit_code == 0 and result.output.startswith("replverify, version ")
    assert run("--profile", "p", "--version").exit_code == 0


def test_help_shows_the_profile_values_as_defaults(tmp_path):
    conf = write(tmp_path / "c.toml", '[profiles.p]\nchunk_rows = 20000\nsource = "${X}"\n')
    result = run("--config", str(conf), "--profile", "p", "diff", "--help")
    assert result.exit_code == 0 and "[default: 20000; x>=1]" in result.output


# ============================================================== against the real clusters


def test_diff_through_a_profile_and_flags_override_it(shop, tmp_path, monkeypatch):
    primary, standby, _ = shop
    monkeypatch.setenv("RV_TEST_PRIMARY_DSN", primary)
    monkeypatch.setenv("RV_TEST_STANDBY_DSN", standby)
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path / "replverify.toml",
        "[profiles.shop]\n"
        'source = "${RV_TEST_PRIMARY_DSN}"\n'
        'target = "${RV_TEST_STANDBY_DSN}"\n'
        'tables = ["public.order*"]\n'
        'exclude = ["public.order_lines"]\n'
        "chunk_rows = 700\n"
        'format = "json"\n'
        "[profiles.broken]\n"
        'source = "${RV_TEST_PRIMARY_DSN}"\n'
        'target = "postgresql://postgres@127.0.0.1:1/nowhere"\n',
    )
    result = run("--profile", "shop", "diff")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["status"] == "consistent"
    assert [t["table"] for t in doc["tables"]] == ["public.orders"]
    assert doc["tables"][0]["chunks"] >= 5000 // 700  # chunk_rows = 700 was used
    # Flags override the profile: tables, format, and the positional DSNs.
    result = run("--profile", "shop", "diff", "-t", "customers", "--format", "text")
    assert result.exit_code == 0, result.output
    assert "public.customers" in result.output and "public.orders " not in result.output
    result = run("--profile", "broken", "diff", primary, standby, "-t", "orders")
    assert result.exit_code == 0, result.output
    line = one_line_error(run("--profile", "broken", "diff", "-t", "orders"))
    assert "127.0.0.1:1" in line
