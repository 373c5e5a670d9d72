"""``inspectq submit|wait|results|feedback``: the API's client side, on the SDK
(``inspectq_client``).

The server is ``--url``/``--api-key``, else ``INSPECTQ_URL``/``INSPECTQ_API_KEY``, else
``url``/``api_key`` in ``client.toml`` in click's app directory for ``inspectq``
(``~/.config/inspectq/client.toml`` on Linux), else http://127.0.0.1:8080 (there is no
default key).

The SDK, requests and tqdm are imported inside the commands: they come with the ``client``
extra, and the service image (``api,worker`` extras, no ``inspectq_client``) must still run
``inspectq reconcile``, ``deadletter`` and ``keys``.
"""

from __future__ import annotations

import csv
import json
import re
import sys
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from inspectq_client import Client, Job

DEFAULT_URL = "http://127.0.0.1:8080"
#: What ``submit DIR`` picks up (matched case-insensitively).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
DECISIONS = ("PASS", "REVIEW", "REJECT")
NOT_SUBMITTED = "not submitted"
#: ``submit --wait`` waits in steps this long, so that Ctrl-C ends it soon after.
WAIT_STEP_S = 5.0
#: Exit status for a refused key (as for usage errors: the command cannot work as called).
EXIT_AUTH = 2


def config_path() -> Path:
    return Path(click.get_app_dir("inspectq")) / "client.toml"


def _read_config(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise click.ClickException(f"cannot read {path}: {error}") from error


class _ApiFailure(click.ClickException):
    """An API error as the user sees it: "<status> <code>: <message>"."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _failure(error: Exception) -> _ApiFailure:
    from inspectq_client import ApiError

    if isinstance(error, ApiError):
        auth = error.status in (401, 403)
        return _ApiFailure(str(error), EXIT_AUTH if auth else 1)
    return _ApiFailure(f"cannot reach the API: {error}")


@contextmanager
def _reported() -> Iterator[None]:
    """Turn the SDK's errors into a message on stderr and an exit status."""
    import requests

    from inspectq_client import ApiError

    try:
        yield
    except (ApiError, requests.RequestException) as error:
        raise _failure(error) from error


@contextmanager
def _client(url: str | None, api_key: str | None, pool_size: int = 10) -> Iterator[Client]:
    """The SDK client for the resolved server and key (see the module docstring)."""
    try:
        from inspectq_client import Client
    except ImportError as error:
        raise click.ClickException(
            f"the client commands need the client extra (pip install 'inspectq[client]'):"
            f" {error}") from error
    config = {} if url and api_key else _read_config(config_path())
    key = api_key or config.get("api_key")
    if not key:
        raise click.UsageError(f"no API key: pass --api-key, set INSPECTQ_API_KEY, or put"
                               f" api_key in {config_path()}")
    with Client(url or config.get("url") or DEFAULT_URL, key, pool_size=pool_size) as client:
        yield client


def _server_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--api-key", envvar="INSPECTQ_API_KEY", show_envvar=True,
                           help="API key (else the config file's api_key).")(command)
    return click.option("--url", envvar="INSPECTQ_URL", show_envvar=True,
                        help=f"The API's base URL (else the config file's url, else"
                             f" {DEFAULT_URL}).")(command)


# --- submit -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    path: Path
    job_id: str | None
    #: The decision of a done job, else its status, else NOT_SUBMITTED.
    label: str
    replayed: bool = False
    error: str | None = None


def _images(paths: tuple[Path, ...]) -> list[Path]:
    """Files as given, directories searched recursively for IMAGE_SUFFIXES; each once."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(path)
    return list(dict.fromkeys(found))


def _label(job: Job) -> str:
    return job.result.decision if job.result is not None else job.status


def _submit_one(client: Client, path: Path, line: str, camera: str | None,
                wait_s: float | None, stop: threading.Event) -> _Outcome:
    """Submit one image (and wait for it when ``wait_s`` is set, in steps of WAIT_STEP_S
    so that ``stop`` ends the wait soon). A refused key raises: every other image would be
    refused too."""
    import requests

    from inspectq_client import ApiError

    try:
        accepted = client.submit(path, line, camera)
    except (ApiError, requests.RequestException, OSError) as error:  # OSError: unreadable
        if isinstance(error, ApiError) and error.status in (401, 403):
            raise
        return _Outcome(path, None, NOT_SUBMITTED, error=str(error))
    if wait_s is None:
        return _Outcome(path, accepted.id, accepted.status, accepted.replayed)
    deadline = time.monotonic() + wait_s
    try:
        job = client.wait(accepted.id, min(wait_s, WAIT_STEP_S))
        while not (job.terminal or stop.is_set()) and (left := deadline - time.monotonic()) > 0:
            job = client.wait(accepted.id, min(left, WAIT_STEP_S))
    except (ApiError, requests.RequestException) as error:
        return _Outcome(path, accepted.id, accepted.status, accepted.replayed,
                        error=f"accepted, then waiting failed: {error}")
    return _Outcome(path, job.id, _label(job), accepted.replayed)


def _summary(outcomes: list[_Outcome], waited: bool, seconds: float) -> list[str]:
    counts = Counter(outcome.label for outcome in outcomes)
    accepted = len(outcomes) - counts[NOT_SUBMITTED]
    replayed = sum(outcome.replayed for outcome in outcomes)
    head = (f"{len(outcomes)} images in {seconds:.1f} s: {accepted} accepted ({replayed}"
            f" already accepted before), {counts[NOT_SUBMITTED]} not submitted")
    shown = [*DECISIONS, "failed"] if waited else []
    shown += sorted(label for label in counts if label not in shown and label != NOT_SUBMITTED)
    return [head, "  ".join(f"{label}: {counts[label]}" for label in shown)]


@click.command("submit")
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--line", required=True, help="Production line id.")
@click.option("--camera", help="Camera id.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Images in flight at once.")
@click.option("--wait/--no-wait", default=False, show_default=True,
              help="Wait for each image's decision.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0), default=300.0,
              show_default=True, help="With --wait: seconds to wait for each image.")
@_server_options
@click.pass_context
def submit(ctx: click.Context, paths: tuple[Path, ...], line: str, camera: str | None,
           concurrency: int, wait: bool, timeout_s: float, url: str | None,
           api_key: str | None) -> None:
    """Submit image FILEs and every image under DIRs (.png .jpg .jpeg .bmp .tif .tiff).

    Prints "<job id> <decision or status> <file>" per image as it completes (stdout), a
    progress bar and a summary per decision (--wait) or status (stderr). Resumable: each
    image's Idempotency-Key is derived from its bytes, line and camera, so running the same
    command again gets the jobs made the first time instead of new ones. Exit status 1 when
    an image could not be submitted, 2 when the API key is refused.

    \b
    Example:
      inspectq submit var/samples --line press-3 --camera cam-1 --concurrency 8 --wait
    """
    from tqdm import tqdm

    images = _images(paths)
    if not images:
        raise click.UsageError("no images found (.png .jpg .jpeg .bmp .tif .tiff)")
    started = time.monotonic()
    outcomes: list[_Outcome] = []
    with (_client(url, api_key, pool_size=concurrency) as client, _reported(),
          tqdm(total=len(images), unit="image", desc="inspect" if wait else "submit") as bar,
          ThreadPoolExecutor(concurrency) as pool):
        stop = threading.Event()
        futures = [pool.submit(_submit_one, client, path, line, camera,
                               timeout_s if wait else None, stop) for path in images]
        try:
            for future in as_completed(futures):
                outcome = future.result()
                outcomes.append(outcome)
                if outcome.error is not None:
                    bar.write(f"{outcome.path}: {outcome.error}", file=sys.stderr)
                if outcome.job_id is not None:
                    bar.write(f"{outcome.job_id}\t{outcome.label}\t{outcome.path}",
                              file=sys.stdout)
                failed = sum(o.error is not None or o.label == "failed" for o in outcomes)
                bar.set_postfix(done=len(outcomes) - failed, failed=failed, refresh=False)
                bar.update()
        except BaseException:  # a refused key, or Ctrl-C: start nothing more, stop waiting
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    for text in _summary(outcomes, wait, time.monotonic() - started):
        click.echo(text, err=True)
    if any(outcome.label == NOT_SUBMITTED for outcome in outcomes):
        ctx.exit(1)


# --- wait -------------------------------------------------------------------------------


@click.command("wait")
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--timeout", "timeout_s", type=click.FloatRange(0), default=300.0,
              show_default=True, help="Seconds to wait for all of them.")
@click.option("--json", "as_json", is_flag=True, help="Print each job as one JSON line.")
@_server_options
@click.pass_context
def wait(ctx: click.Context, job_ids: tuple[str, ...], timeout_s: float, as_json: bool,
         url: str | None, api_key: str | None) -> None:
    """Wait until each job ID is done or failed (long-polling), and print it:
    "<id> <status> <decision or error code> <score>", or the job's JSON with --json.

    Exit status 0 when every job is done, 1 when one failed or had not ended by the
    timeout.

    \b
    Example:
      inspectq wait j_kLRKovLeGANRo-wi-XvGJA --timeout 60
    """
    deadline = time.monotonic() + timeout_s
    all_done = True
    with _client(url, api_key) as client, _reported():
        for job_id in job_ids:
            job = client.wait(job_id, max(0.0, deadline - time.monotonic()))
            all_done = all_done and job.status == "done"
            if as_json:
                click.echo(json.dumps(job.raw))
            elif job.result is not None:
                click.echo(f"{job.id}\t{job.status}\t{job.result.decision}\t{job.result.score}")
            else:
                click.echo(f"{job.id}\t{job.status}\t{job.error.code if job.error else ''}\t")
    if not all_done:
        ctx.exit(1)


# --- results ----------------------------------------------------------------------------

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class _Moment(click.ParamType):
    """ISO 8601 (naive means UTC), or a time ago: 90s, 15m, 6h, 7d."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        relative = _RELATIVE.match(value)
        if relative is not None:
            amount, unit = relative.groups()
            return datetime.now(UTC) - timedelta(**{_UNITS[unit]: float(amount)})
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is neither ISO 8601 nor a time ago like 15m, 6h, 7d", param,
                      ctx)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


#: The summary fields a CSV row carries, in order (``defects`` as JSON {class: count}).
CSV_COLUMNS = ("id", "created_at", "finished_at", "line", "camera", "batch_id", "status",
               "decision", "score", "defect_count", "defects", "error_code", "model_version",
               "feedback", "feedback_decision")


def _csv_row(summary: dict[str, Any]) -> dict[str, Any]:
    feedback = summary.get("feedback") or {}
    return {**summary, "defects": json.dumps(summary.get("defects") or {}, sort_keys=True),
            "feedback": feedback.get("verdict"), "feedback_decision": feedback.get("decision")}


def _table_row(summary: dict[str, Any]) -> str:
    defects = ",".join(f"{name}:{count}" for name, count in (summary.get("defects") or {}).items())
    decision = summary.get("decision") or summary.get("error_code") or ""
    score = "" if summary.get("score") is None else f"{summary['score']:.3f}"
    verdict = (summary.get("feedback") or {}).get("verdict") or ""
    return (f"{summary['created_at']:<25} {summary['id']:<24} {summary.get('camera') or '':<12}"
            f" {summary['status']:<6} {decision:<8} {score:>5}  {verdict:<8} {defects}")


@click.command("results")
@click.option("--line", required=True, help="Production line id.")
@click.option("--camera", help="Only this camera.")
@click.option("--since", type=_Moment(), help="From this time on (ISO 8601, or 15m, 6h, 7d ago).")
@click.option("--until", type=_Moment(), help="Before this time.")
@click.option("--decision", type=click.Choice(DECISIONS, case_sensitive=False),
              help="Only this decision.")
@click.option("--feedback", type=click.Choice(["none", "any", "confirm", "correct"]),
              help="none: no operator feedback yet; any; or the latest verdict.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "jsonl"]),
              default="table", show_default=True)
@click.option("--limit", type=click.IntRange(0), default=50, show_default=True,
              help="At most this many jobs (0: all).")
@_server_options
def results(line: str, camera: str | None, since: datetime | None, until: datetime | None,
            decision: str | None, feedback: str | None, fmt: str, limit: int,
            url: str | None, api_key: str | None) -> None:
    """List a line's ended jobs, newest first: a table, CSV (the summary's fields, a header
    row first) or JSON lines (each summary as the API gives it).

    \b
    Examples:
      inspectq results --line press-3 --since 6h --decision REVIEW --feedback none
      inspectq results --line press-3 --since 2026-11-24 --format csv --limit 0 > jobs.csv
    """
    filters = {"line": line, "camera": camera, "since": since, "until": until,
               "decision": decision, "feedback": feedback}
    with _client(url, api_key) as client, _reported():
        found = client.results(limit=limit or None,
                               **{k: v for k, v in filters.items() if v is not None})
        if fmt == "csv":
            writer = csv.DictWriter(sys.stdout, CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(_csv_row(summary) for summary in found)
        elif fmt == "jsonl":
            for summary in found:
                click.echo(json.dumps(summary))
        else:
            click.echo(f"{'CREATED':<25} {'ID':<24} {'CAMERA':<12} {'STATUS':<6} "
                       f"{'DECISION':<8} {'SCORE':>5}  {'FEEDBACK':<8} DEFECTS")
            for summary in found:
                click.echo(_table_row(summary))


# --- feedback ---------------------------------------------------------------------------


class _Box(click.ParamType):
    """x0,y0,x1,y1 in image pixels (x1, y1 exclusive)."""

    name = "x0,y0,x1,y1"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        try:
            box = [int(part) for part in value.split(",")]
        except ValueError:
            box = []
        if len(box) != 4:
            self.fail(f"{value!r} is not four integers x0,y0,x1,y1", param, ctx)
        return box


@click.command("feedback")
@click.argument("job_id")
@click.option("--confirm", "verdict", flag_value="confirm", help="The decision was right.")
@click.option("--correct", "verdict", flag_value="correct", help="It was wrong.")
@click.option("--decision", type=click.Choice(DECISIONS, case_sensitive=False),
              help="With --correct: the right decision.")
@click.option("--class", "classes", multiple=True,
              help="With --correct: a defect's class; repeat, one per --bbox.")
@click.option("--bbox", "boxes", multiple=True, type=_Box(),
              help="That defect's box, x0,y0,x1,y1.")
@click.option("--note", help="Free text for the record.")
@click.option("--by", help="Who gives the feedback.")
@_server_options
def feedback(job_id: str, verdict: str | None, decision: str | None, classes: tuple[str, ...],
             boxes: tuple[list[int], ...], note: str | None, by: str | None,
             url: str | None, api_key: str | None) -> None:
    """Confirm or correct the decision of the done job JOB_ID.

    \b
    Examples:
      inspectq feedback j_kLRKovLeGANRo-wi-XvGJA --confirm --by anna
      inspectq feedback j_kLRKovLeGANRo-wi-XvGJA --correct --decision REJECT \\
          --class scratch --bbox 10,20,60,44 --note "missed at the edge"
    """
    if verdict is None:
        raise click.UsageError("say --confirm or --correct")
    if len(classes) != len(boxes):
        raise click.UsageError("give one --bbox for each --class")
    defects = [{"class": name, "bbox": box} for name, box in zip(classes, boxes, strict=True)]
    with _client(url, api_key) as client, _reported():
        client.feedback(job_id, verdict, decision=decision,
                        defects=defects or None, note=note, by=by)
    click.echo(f"{job_id}\t{verdict}")
