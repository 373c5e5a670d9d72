"""``python -m devstack up|down|status|demo``: run inspectq's local default stack."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click
import redis

from devstack import bench, chaos, large, procs, samples
from devstack.client import InspectqClient
from devstack.stack import ORDER, REPO, StackConfig, down, isolated_config, up
from inspectq.config import Settings


def _config() -> StackConfig:
    return StackConfig(settings=Settings())


@click.group()
def cli() -> None:
    """inspectq's local stack: Redis, SeaweedFS S3, Triton (CPU), a Celery worker, the API."""


@cli.command("up")
def up_command() -> None:
    """Start what is not running and wait until /readyz is green."""
    up(_config())


@cli.command("down")
def down_command() -> None:
    """Stop exactly what `up` started (by PID file)."""
    down(_config())


@cli.command("status")
def status_command() -> None:
    """Show which services this stack started and still runs."""
    config = _config()
    for name in ORDER:
        pid = procs.running_pid(config.dirs, name)
        click.echo(f"  {name:<7} {'running, pid ' + str(pid) if pid else 'not started by us'}")


@cli.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=REPO / "var" / "demo",
              show_default=True, help="Where the overlays are written.")
def demo_command(out: Path) -> None:
    """Start the stack, push sample images with known defects through the public API,
    wait for the results and print them."""
    config = _config()
    up(config)
    client = InspectqClient(config.api_url, config.settings.api_key.get_secret_value())
    out.mkdir(parents=True, exist_ok=True)
    demo_set = samples.samples()
    samples.write(REPO / "var" / "samples", demo_set)
    click.echo(f"\nsubmitting {len(demo_set)} images to {config.api_url}/v1/jobs ...")
    started = time.monotonic()
    submitted = [
        (sample, client.submit(sample.png(), f"{sample.name}.png", line="demo-line"))
        for sample in demo_set
    ]
    rows = []
    for sample, accepted in submitted:
        job = client.wait_done(accepted["id"])
        if job["status"] == "done":
            (out / f"{sample.name}_overlay.png").write_bytes(client.png(job["id"], "overlay"))
        rows.append((sample, job))
    elapsed = time.monotonic() - started

    header = f"{'image':<24}{'size':>10}  {'truth':<8}{'decision':<9}{'score':>6}  defects"
    click.echo("\n" + header + "\n" + "-" * (len(header) + 20))
    for sample, job in rows:
        size = f"{sample.rgb.shape[1]}x{sample.rgb.shape[0]}"
        if job["status"] != "done":
            error = job.get("error", {})
            click.echo(f"{sample.name:<24}{size:>10}  {sample.defect or 'clean':<8}"
                       f"{job['status'].upper():<9}  {error.get('code')}: {error.get('message')}")
            continue
        result = job["result"]
        found = ", ".join(
            f"{d['class']} {d['score']:.2f} @{d['bbox']}" for d in result["defects"][:3]
        ) or "-"
        click.echo(f"{sample.name:<24}{size:>10}  {sample.defect or 'clean':<8}"
                   f"{result['decision']:<9}{result['score']:>6.2f}  {found}")
    click.echo(f"\n{len(rows)} images in {elapsed:.1f}s. Overlays: {out}/")
    _show_the_record(client, "demo-line")
    click.echo(f"Logs: {config.dirs.logs}/   Stop the stack with: make down")


def _show_the_record(client: InspectqClient, line: str) -> None:
    """The line as the results index holds it (the indexer writes within a second)."""
    deadline = time.monotonic() + 10
    while True:
        found = client._send("GET", f"{client.base_url}/v1/lines", timeout=10)
        lines = {entry["name"]: entry for entry in found.json().get("lines", [])
                 } if found.ok else {}
        if line in lines or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if line not in lines:
        click.echo(f"The results index has not listed {line} yet: see var/log/indexer.log")
        return
    entry = lines[line]
    click.echo(f"The record of {line}: {entry['total']} jobs, {entry['PASS']} PASS, "
               f"{entry['REVIEW']} REVIEW, {entry['REJECT']} REJECT, {entry['failed']} failed "
               f"(all runs). List, export, chart:\n"
               f"  curl -H 'Authorization: Bearer {client.api_key}' "
               f"'{client.base_url}/v1/jobs?line={line}&decision=REJECT'\n"
               f"  curl -H 'Authorization: Bearer {client.api_key}' "
               f"'{client.base_url}/v1/exports?line={line}&format=csv'\n"
               f"  curl -H 'Authorization: Bearer {client.api_key}' "
               f"'{client.base_url}/v1/lines/{line}/stats?bucket=minute'")


@cli.command("bench")
@click.option("--images", default=300, show_default=True, help="Images through the API.")
@click.option("--clients", default=8, show_default=True, help="Concurrent API clients.")
@click.option("--triton-clients", default=4, show_default=True,
              help="Concurrent clients of Triton alone.")
def bench_command(images: int, clients: int, triton_clients: int) -> None:
    """Model, Triton and end-to-end throughput, side by side in one run."""
    config = _config()
    up(config)
    pictures = bench.bench_images(images + 16)
    bench.end_to_end(config, pictures[images:], clients)  # warm-up: worker processes, Triton
    click.echo("model in-process and Triton alone (model env) ...")
    model = bench.model_and_triton(config, triton_clients, seconds=15)
    e2e, timings = bench.end_to_end(config, pictures[:images], clients, bench.CpuCensus(config))
    text = bench.report(model, e2e, timings)
    click.echo(text)
    (config.var_dir / "bench.txt").write_text(text + "\n")


@cli.command("chaos")
@click.option("--images", default=2000, show_default=True)
@click.option("--clients", default=8, show_default=True)
@click.option("--deadline", default=900.0, show_default=True,
              help="Seconds to wait for every job after the last upload.")
def chaos_command(images: int, clients: int, deadline: float) -> None:
    """Uploads under faults on a separate stack (its own Redis DB 13, ports and var/chaos)."""
    config = chaos.stack_config(REPO / "var" / "chaos")
    redis.Redis.from_url(config.settings.redis_url).flushdb()
    up(config)
    try:
        text, held = chaos.run(config, images, clients, deadline)
    finally:
        down(config)
    click.echo(text)
    (config.var_dir / "chaos.txt").write_text(text + "\n")
    if not held:
        raise SystemExit(1)


@cli.command("large")
@click.option("--deadline", default=1200.0, show_default=True,
              help="Seconds a job may take to its result before it counts as not done.")
def large_command(deadline: float) -> None:
    """12 MP and 40 MP camera JPEGs, alone and several at once, on a separate stack (its own
    Redis DB 9, ports and var/large) with the default time limits."""
    var_dir = REPO / "var" / "large"
    shutil.rmtree(var_dir, ignore_errors=True)  # no jobs of an earlier run in its S3
    config = isolated_config(var_dir, 9, s3_bucket="large")
    redis.Redis.from_url(config.settings.redis_url).flushdb()
    up(config)
    try:
        text = large.run(config, deadline)
    finally:
        down(config)
    click.echo(text)
    (config.var_dir / "large.txt").write_text(text + "\n")


if __name__ == "__main__":
    cli()
