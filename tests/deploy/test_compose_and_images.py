"""docker-compose.yml passes compose v2's own validation, its settings are real Settings, and
every command in the manifests, the compose file and the Dockerfiles runs code that exists in
this repository (file, module, function and command-line flag)."""

from __future__ import annotations

import ast
import fnmatch
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from inspectq.config import Settings
from inspectq_cli.main import cli
from tests.deploy.conftest import COMPOSE_FILE, REPO, compose_binary, pod_spec, run

DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))
#: Commands of third-party programs; their code is not ours to check.
EXTERNAL = {"tritonserver", "redis-server", "/usr/bin/weed"}


def compose_config(path: Path, *extra: str) -> tuple[int, str]:
    result = run([compose_binary(), "-f", path, *extra, "config", "-q"])
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"]], ids=["cpu", "gpu"])
def test_compose_file_is_valid(profile: list[str]) -> None:
    rc, output = compose_config(COMPOSE_FILE, *profile)
    assert rc == 0, output


@pytest.mark.parametrize(
    ("good", "bad"),
    [("healthcheck:", "healthchek:"), ("service_completed_successfully", "service_finished")],
)
def test_compose_validation_rejects_a_broken_copy(tmp_path: Path, good: str, bad: str) -> None:
    """Proves the compose check is live (the Go binary, not the always-0 wrapper script)."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace(good, bad))
    rc, output = compose_config(broken)
    assert rc != 0, output


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose model after interpolation, as compose itself resolves it."""
    result = run([compose_binary(), "-f", COMPOSE_FILE, "--profile", "gpu", "config",
                  "--format", "json"])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_env_is_valid_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("api", "worker", "beat", "s3-init"):
        env = compose["services"][name]["environment"]
        unknown = [k for k in env if k.startswith("INSPECTQ_")
                   and k.removeprefix("INSPECTQ_").lower() not in Settings.model_fields]
        assert not unknown, f"{name}: not Settings fields: {unknown}"
    worker_env = compose["services"]["worker"]["environment"]
    for key, value in worker_env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    grace = compose["services"]["worker"]["stop_grace_period"]
    minutes, seconds = re.fullmatch(r"(?:(\d+)m)?(\d+)s", grace).groups()  # type: ignore[union-attr]
    grace_s = int(minutes or 0) * 60 + int(seconds)
    assert grace_s > settings.task_time_limit_s
    assert grace_s > settings.worker_shutdown_grace_s
    assert worker_env["REMAP_SIGTERM"] == "SIGQUIT"


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined, comments dropped."""
    logical = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            pairs.append((instruction.upper(), rest.strip()))
    return pairs


def all_commands(objects: list[dict[str, Any]], compose: dict[str, Any]) -> list[list[str]]:
    commands = []
    for obj in objects:
        if obj["kind"] in ("Deployment", "CronJob"):
            for container in pod_spec(obj)["containers"]:
                argv = container.get("command", []) + container.get("args", [])
                if argv:
                    commands.append(argv)
    for service in compose["services"].values():
        argv = (service.get("entrypoint") or []) + (service.get("command") or [])
        if argv:
            commands.append(argv)
    for dockerfile in DOCKERFILES:
        commands += [json.loads(args) for kind, args in dockerfile_instructions(dockerfile)
                     if kind == "CMD"]
    return commands


def module_file(module: str) -> Path:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    raise AssertionError(f"module {module} does not exist in the repository")


def flag_after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def check_python_snippet(code: str) -> None:
    """Every name a `python -c` snippet imports exists."""
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module}.{alias.name} is missing"


def check_command(argv: list[str]) -> None:
    program = argv[0]
    if program == "gunicorn":
        config = flag_after(argv, "--config")
        assert (REPO / config).exists(), f"{config} does not exist"
        module, _, factory = argv[-1].partition(":")
        name = factory.removesuffix("()")
        assert f"def {name}(" in module_file(module).read_text(), f"{argv[-1]} is missing"
    elif program == "celery":
        module_file(flag_after(argv, "-A"))
    elif program in ("python", "python3") and argv[1] == "-m":
        module = argv[2]
        module_file(module)
        flags = {a.split("=", 1)[0] for a in argv[3:] if a.startswith("--")}
        if flags:
            help_text = run([sys.executable, "-m", module, "--help"]).stdout
            missing = sorted(f for f in flags if f not in help_text)
            assert not missing, f"`python -m {module}` has no {missing}"
    elif program in ("python", "python3") and argv[1] == "-c":
        check_python_snippet(argv[2])
    elif program == "inspectq":
        shown = CliRunner().invoke(cli, [*argv[1:], "--help"])
        assert shown.exit_code == 0, f"`{' '.join(argv)}` is not a command: {shown.output}"
    else:
        assert program in EXTERNAL, f"unexpected program {program}: teach this test about it"


def test_every_command_runs_code_that_exists(
    objects: list[dict[str, Any]], compose: dict[str, Any]
) -> None:
    problems = []
    commands = all_commands(objects, compose)
    assert len(commands) >= 8, commands
    for argv in commands:
        try:
            check_command(argv)
        except AssertionError as error:
            problems.append(f"{' '.join(argv)}\n    -> {error}")
    assert not problems, "\n".join(problems)


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip().removeprefix("**/") for line in lines
            if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_what_exists_and_is_not_ignored(dockerfile: Path) -> None:
    ignored = dockerignore_patterns()
    for kind, args in dockerfile_instructions(dockerfile):
        if kind != "COPY" or "--from=" in args:
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source}: not in the repo"
            top = source.split("/")[0]
            assert not any(fnmatch.fnmatch(top, p) for p in ignored), (
                f"{dockerfile.name}: COPY {source} is excluded by .dockerignore"
            )


def test_service_image_never_installs_torch() -> None:
    """The API and worker image installs only the api and worker extras."""
    text = (REPO / "docker" / "service.Dockerfile").read_text()
    installs = re.findall(r"pip install[^\n]*", text)
    assert installs and all("[api,worker]" in line for line in installs), installs
    extras = yaml.safe_dump(installs)
    assert "model" not in extras and "torch" not in extras
