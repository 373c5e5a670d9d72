"""The architecture's rules, checked on the code itself (grimp reads every import statement,
those inside functions included):

* ``api/`` never imports ``workers/`` (it enqueues by task name); the core (``inspectq/``)
  imports neither, nor the model code or the commands; no library imports the commands;
  the services never import torch;
* no import cycles anywhere;
* settings are read from the environment only by the entry points, and passed down;
* no network client is built at import time (so none crosses Celery's or gunicorn's fork);
* queue messages carry a job id and nothing else.
"""

from __future__ import annotations

import ast
import base64
import json
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import grimp
import pytest
import redis

from inspectq.config import Settings
from inspectq.queue import enqueue_inspection, make_celery

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("inspectq", "inspectq_cli", "api", "workers", "triton_models", "devstack")
SERVICES = ("inspectq", "api", "workers")

#: (importer, imported, why): no chain of imports may lead from the one to the other.
FORBIDDEN = [
    ("api", "workers", "the API enqueues by task name and never imports worker code"),
    ("inspectq", "api", "the core imports neither the API nor the workers"),
    ("inspectq", "workers", "the core imports neither the API nor the workers"),
    ("inspectq", "triton_models", "the core does not depend on the model tooling"),
    *[(library, "inspectq_cli", "commands call libraries, never the other way round")
      for library in ("inspectq", "api", "workers", "triton_models")],
    *[(service, "torch", "torch stays out of the services (a 6 GB dependency)")
      for service in SERVICES],
]

#: The only places that build Settings from the environment: the processes' entry points.
SETTINGS_ENTRY_POINTS = {"api/app.py", "api/gunicorn.conf.py", "workers/main.py",
                         "inspectq_cli/settings.py", "devstack/__main__.py"}
#: Calls that open (or set up) a network client; never at a module's top level.
CLIENT_FACTORIES = {"connect_redis", "Redis", "from_url", "client", "resource", "ObjectStore",
                    "InferenceServerClient", "build_services", "connect", "JobStore"}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, include_external_packages=True)


def _sources(*packages: str) -> list[Path]:
    return sorted(path for package in packages for path in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize(("importer", "imported", "why"), FORBIDDEN,
                         ids=[f"{a}-not-{b}" for a, b, _ in FORBIDDEN])
def test_forbidden_imports(graph: grimp.ImportGraph, importer: str, imported: str,
                           why: str) -> None:
    if imported not in graph.modules:
        return  # nothing imports it at all
    chain = graph.find_shortest_chain(importer, imported, as_packages=True)
    assert chain is None, (
        f"{importer} must not import {imported} ({why}), but: {' -> '.join(chain)}")


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    ours = {module for module in graph.modules if module.split(".")[0] in PACKAGES}
    imports = {module: graph.find_modules_directly_imported_by(module) & ours
               for module in ours}
    try:
        TopologicalSorter(imports).prepare()
    except CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(reversed(error.args[1]))}")


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def test_settings_come_from_the_environment_only_at_entry_points() -> None:
    offenders = []
    for path in _sources("inspectq", "inspectq_cli", "api", "workers"):
        relative = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(), relative)
        for node in ast.walk(tree):
            reads_env = (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")
                         and relative != "inspectq/config.py")
            builds = (isinstance(node, ast.Call) and _name(node) == "Settings"
                      and not node.args and not node.keywords
                      and relative not in SETTINGS_ENTRY_POINTS)
            if reads_env or builds:
                offenders.append(f"{relative}:{node.lineno}")
    assert not offenders, (
        "settings are read from the environment only by entry points and passed down; "
        f"found: {offenders}")


def test_no_network_client_is_built_at_import_time() -> None:
    offenders = []
    for path in _sources("inspectq", "inspectq_cli", "api", "workers"):
        relative = path.relative_to(ROOT).as_posix()
        for statement in ast.parse(path.read_text(), relative).body:
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            offenders += [f"{relative}:{call.lineno} {_name(call)}()"
                          for call in _calls(statement) if _name(call) in CLIENT_FACTORIES]
    assert not offenders, (
        f"clients are built in the process that uses them, after any fork: {offenders}")


def test_only_the_core_queue_module_sends_messages() -> None:
    senders = [f"{path.relative_to(ROOT)}:{call.lineno}"
               for path in _sources("inspectq", "inspectq_cli", "api", "workers")
               for call in _calls(ast.parse(path.read_text()))
               if _name(call) in ("send_task", "apply_async", "delay")]
    assert [s.split(":")[0] for s in senders] == ["inspectq/queue.py"], senders


def test_a_queue_message_carries_the_job_id_and_nothing_else() -> None:
    """Enqueue through the real broker and read the message back off Redis."""
    settings = Settings(redis_url="redis://127.0.0.1:6379/14")
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    try:
        enqueue_inspection(make_celery(settings), "j_AAAAAAAAAAAAAAAAAAAAAA")
        [raw] = client.lrange("inspectq", 0, -1)
        envelope = json.loads(raw)
        assert envelope["content-type"] == "application/json"
        assert envelope["headers"]["task"] == "inspectq.inspect"
        args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
        assert args == ["j_AAAAAAAAAAAAAAAAAAAAAA"] and kwargs == {}
        assert len(raw) < 2048  # an id and Celery's envelope: never image bytes
    finally:
        client.flushdb()
