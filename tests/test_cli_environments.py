"""The one `inspectq` command in environments that lack some dependencies: the model
environment has no Flask or requests, a client-only install has no numpy or Flask. Each
command imports only what it needs, and a command that cannot run says which environment
it needs."""

from __future__ import annotations

import subprocess
import sys

#: Runs the CLI with the named top-level packages made unimportable, as in a smaller venv.
RUNNER = """
import sys
blocked = set(sys.argv[1].split(","))
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
from inspectq_cli.main import cli
cli(sys.argv[2:], prog_name="inspectq")
"""


def run_cli(blocked: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RUNNER, blocked, *args],
                          capture_output=True, text=True, timeout=60)


def test_model_commands_run_without_the_service_packages() -> None:
    done = run_cli("flask,requests,gunicorn", "model", "list")
    assert done.returncode == 0, done.stderr
    assert "*" in done.stdout  # the served version is starred


def test_a_command_missing_its_packages_names_the_environment() -> None:
    done = run_cli("requests", "index", "run")
    assert done.returncode == 1
    assert "`inspectq index` needs the Python package 'requests'" in done.stderr
    assert ".venv" in done.stderr


def test_help_lists_every_command_even_when_some_cannot_load() -> None:
    done = run_cli("requests,flask", "--help")
    assert done.returncode == 0, done.stderr
    assert "index       (not available in this environment)" in done.stdout
    assert "submit" in done.stdout and "model" in done.stdout
