"""The CI recipes in docs/ci stay consistent with themselves and with the repository.

Docker is not needed (nor used): the Compose file and the workflow are parsed and
cross-checked, the shell scripts are syntax-checked with ``bash -n``, and run-checks.sh
is run only as far as its argument checks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CI = ROOT / "docs" / "ci"
COMPOSE_FILE = CI / "docker-compose.yml"
WORKFLOW_FILE = CI / "github-actions.yml"
SCRIPTS = [
    CI / "primary-init" / "01-replication.sh",
    CI / "replica-entrypoint.sh",
    CI / "run-checks.sh",
]

#: a libpq URL with a password: scheme://user:password@...
URL_WITH_PASSWORD = re.compile(r"postgres(?:ql)?://[^/@\s:]*:[^/@\s]*@", re.I)
#: a key=value DSN with a password
KV_WITH_PASSWORD = re.compile(r"(?:^|\s)password\s*=", re.I)


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = _load(COMPOSE_FILE)
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    doc = _load(WORKFLOW_FILE)
    assert isinstance(doc, dict)
    return doc


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def _bind_sources(service: dict[str, Any]) -> list[str]:
    sources = []
    for volume in service.get("volumes", []):
        source = volume.get("source", "") if isinstance(volume, dict) else volume.split(":")[0]
        if source.startswith((".", "/")):
            sources.append(source)
    return sources


# --------------------------------------------------------------------------- compose


def test_compose_has_the_three_services(compose):
    services = compose["services"]
    assert {"primary", "replica", "replverify"} <= set(services)
    assert services["primary"]["image"] == "postgres:15"
    assert services["replica"]["image"] == "postgres:15"


def test_every_mounted_or_built_file_exists(compose):
    for name, service in compose["services"].items():
        for source in _bind_sources(service):
            if source.rstrip("/").endswith("reports"):
                continue  # written by run-checks.sh at run time
            assert (CI / source).resolve().exists(), f"{name} mounts missing {source}"
        build = service.get("build")
        if build is not None:
            context = (CI / (build if isinstance(build, str) else build["context"])).resolve()
            assert context == ROOT, f"{name} builds from {context}, not the repository"
            dockerfile = context / (build.get("dockerfile", "Dockerfile"))
            assert dockerfile.is_file(), f"{name}: no {dockerfile}"
            assert (context / "pyproject.toml").is_file()
            assert "pip install" in dockerfile.read_text(encoding="utf-8")
            assert dockerfile.with_name(dockerfile.name + ".dockerignore").is_file()


def test_init_scripts_are_mounted_where_the_image_runs_them(compose):
    primary = compose["services"]["primary"]
    targets = {v.split(":")[1] for v in primary["volumes"] if isinstance(v, str)}
    assert "/docker-entrypoint-initdb.d" in targets
    init = sorted(p.name for p in (CI / "primary-init").iterdir())
    assert init == ["01-replication.sh", "02-sample.sql"]


def test_primary_is_configured_for_streaming_replication(compose):
    command = " ".join(compose["services"]["primary"]["command"])
    assert command.startswith("postgres ")
    for setting in ("wal_level=replica", "max_wal_senders=", "max_replication_slots="):
        assert setting in command


def test_replica_is_cloned_with_pg_basebackup(compose):
    replica = compose["services"]["replica"]
    entrypoint = " ".join(replica["entrypoint"])
    assert "replica-entrypoint.sh" in entrypoint
    script = (CI / "replica-entrypoint.sh").read_text(encoding="utf-8")
    for flag in ("pg_basebackup", "--write-recovery-conf", "--wal-method=stream", "--slot="):
        assert flag in script
    assert "pg_isready" in script
    assert "gosu postgres" in script
    assert 'exec docker-entrypoint.sh "$@"' in script
    assert replica["command"][0] == "postgres"
    # the slot the primary creates is the one the replica streams from
    primary_env = _environment(compose["services"]["primary"])
    replica_env = _environment(replica)
    assert primary_env["REPLICATION_SLOT"] == replica_env["REPLICATION_SLOT"]
    assert primary_env["REPLICATION_USER"] == replica_env["REPLICATION_USER"]
    init = (CI / "primary-init" / "01-replication.sh").read_text(encoding="utf-8")
    assert "pg_create_physical_replication_slot" in init
    assert "host replication" in init


def test_healthchecks_and_dependencies(compose):
    services = compose["services"]
    for name in ("primary", "replica"):
        test = services[name]["healthcheck"]["test"]
        assert test and test[0] in ("CMD", "CMD-SHELL"), name
    assert "127.0.0.1" in services["primary"]["healthcheck"]["test"]  # TCP: not the init server
    assert "pg_is_in_recovery()" in " ".join(services["replica"]["healthcheck"]["test"])
    assert _depends_on(services["replica"]) == {"primary": "service_healthy"}
    assert _depends_on(services["replverify"]) == {
        "primary": "service_healthy",
        "replica": "service_healthy",
    }


def test_passwords_come_from_the_environment(compose):
    for name, service in compose["services"].items():
        for key, value in _environment(service).items():
            if "PASSWORD" in key:
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", value), f"{name} {key}={value!r}"


def test_no_password_in_any_dsn():
    for path in (COMPOSE_FILE, WORKFLOW_FILE, *SCRIPTS, CI / "README.md"):
        for s in _strings(_load(path)) if path.suffix == ".yml" else [path.read_text()]:
            assert not URL_WITH_PASSWORD.search(s), f"{path.name}: {s!r}"
            for dsn in re.findall(r"(?:host|dbname|user)=\S+(?:\s+\w+=\S+)*", s):
                assert not KV_WITH_PASSWORD.search(dsn), f"{path.name}: {dsn!r}"


def test_replverify_service_runs_the_checks(compose):
    service = compose["services"]["replverify"]
    assert service["profiles"] == ["check"]  # not started by "up --wait"
    env = _environment(service)
    assert env["SOURCE"].startswith("postgresql://") and "@primary:" in env["SOURCE"]
    assert env["TARGET"].startswith("postgresql://") and "@replica:" in env["TARGET"]
    assert "PGPASSWORD" in env
    assert "run-checks.sh" in " ".join(service["command"])
    checks = (CI / "run-checks.sh").read_text(encoding="utf-8")
    for command in ("check health health", "check lag lag", "check diff diff", "--rpo"):
        assert command in checks


# --------------------------------------------------------------------------- workflow


def test_workflow_is_well_formed(workflow):
    assert workflow.get("name")
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare on: as True
    assert triggers, "no triggers"
    jobs = workflow["jobs"]
    assert set(jobs) == {"compose", "service-containers"}
    for job_id, job in jobs.items():
        assert job["runs-on"] == "ubuntu-latest", job_id
        assert isinstance(job.get("timeout-minutes"), int), job_id
        steps = job["steps"]
        assert steps and steps[0]["uses"] == "actions/checkout@v4"
        for step in steps:
            assert ("uses" in step) != ("run" in step), f"{job_id}: {step}"
            if "run" in step:
                assert step.get("name"), f"{job_id}: unnamed run step"


def test_workflow_uses_current_action_versions(workflow):
    used = {s["uses"] for job in workflow["jobs"].values() for s in job["steps"] if "uses" in s}
    allowed = {"actions/checkout@v4", "actions/setup-python@v5", "actions/upload-artifact@v4"}
    assert used <= allowed, used - allowed
    assert "actions/upload-artifact@v4" in used


def test_workflow_runs_the_compose_stack(workflow):
    job = workflow["jobs"]["compose"]
    compose_file = ROOT / job["env"]["COMPOSE_FILE"]
    assert compose_file == COMPOSE_FILE
    runs = "\n".join(s.get("run", "") for s in job["steps"])
    assert "docker compose up --wait" in runs
    assert "docker compose run --rm replverify" in runs
    assert "down --volumes" in runs
    uploads = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert uploads and uploads[0]["with"]["path"].rstrip("/") == "docs/ci/reports"
    assert uploads[0].get("if") == "always()"


def test_workflow_service_container_job(workflow):
    job = workflow["jobs"]["service-containers"]
    assert set(job["services"]) == {"source", "target"}
    for service in job["services"].values():
        assert service["image"] == "postgres:15"
        assert "--health-cmd" in service["options"]
    runs = "\n".join(s.get("run", "") for s in job["steps"])
    assert "replverify diff" in runs
    assert "PGPASSWORD" in job["env"]


def test_every_repository_path_in_the_workflow_exists():
    text = WORKFLOW_FILE.read_text(encoding="utf-8")
    paths = set(re.findall(r"docs/ci/[\w./-]*[\w]", text))
    assert paths
    for path in paths:
        if path.startswith("docs/ci/reports"):
            continue  # written at run time
        assert (ROOT / path).exists(), path


# --------------------------------------------------------------------------- scripts


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_workflow_run_blocks_parse(workflow):
    for job_id, job in workflow["jobs"].items():
        for step in job["steps"]:
            if "run" in step:
                script = re.sub(r"\$\{\{[^}]*\}\}", "X", step["run"])
                result = subprocess.run(
                    ["bash", "-n"], input=script, capture_output=True, text=True
                )
                assert result.returncode == 0, f"{job_id} / {step['name']}: {result.stderr}"


def test_run_checks_refuses_a_password_in_a_dsn(tmp_path):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "SOURCE": "postgresql://app:secret@db1:5432/shop",
        "TARGET": "postgresql://app@db2:5432/shop",
        "REPORTS": str(tmp_path / "reports"),
    }
    bash = shutil.which("bash") or "bash"
    result = subprocess.run(
        [bash, str(CI / "run-checks.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "PGPASSWORD" in result.stderr
    assert "secret" not in result.stdout + result.stderr
    assert not (tmp_path / "reports").exists()  # refused before anything ran
