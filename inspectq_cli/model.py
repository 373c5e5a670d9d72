"""``inspectq model``: bring your own model, choose or roll back the served version."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

import click

from triton_models import byom, card
from triton_models.repository import CPU_REPOSITORY, GPU_REPOSITORY, MODEL_NAME, Repositories
from triton_models.verify import ModelFileError


@contextmanager
def _refusals() -> Iterator[None]:
    """A refused file or version ends the command with status 1 and the reason."""
    try:
        yield
    except (ModelFileError, byom.ContractError, FileNotFoundError, ValueError) as error:
        raise click.ClickException(f"refused: {error}") from error


@click.group()
@click.option("--gpu-repository", type=click.Path(file_okay=False, path_type=Path),
              default=GPU_REPOSITORY, show_default=True,
              help="Triton repository of the GPU deployment (libtorch backend).")
@click.option("--cpu-repository", type=click.Path(file_okay=False, path_type=Path),
              default=CPU_REPOSITORY, show_default=True,
              help="Triton repository of the CPU deployment (Python backend).")
@click.pass_context
def model(ctx: click.Context, gpu_repository: Path, cpu_repository: Path) -> None:
    """Install a TorchScript model as the next version of both Triton repositories, choose
    or roll back the served version, verify every version. The contract is
    docs/model-contract.md.

    `install` and `evaluate` run the model, so they need torch: run them from the model
    environment (`.venv-model/bin/inspectq`, made by `make venv`). `list`, `select` and
    `verify` run anywhere.

    \b
    Examples:
      .venv-model/bin/inspectq model install my_model.pt --classes scratch,pit --select
      inspectq model select 1       # serve version 1 (also: roll back)
      inspectq model list
    """
    ctx.obj = Repositories(gpu_repository, cpu_repository)


@model.command()
@click.argument("model_file", type=click.Path(path_type=Path))
@click.option("--classes", default=None,
              help="Comma-separated defect classes by class_map value 1.. "
                   "(default: those of the served version).")
@click.option("--sha256", default=None, help="Refuse unless the file has this digest.")
@click.option("--card", "card_file", type=click.Path(exists=True, path_type=Path),
              default=None, help="JSON of your metrics and notes to merge into the model card.")
@click.option("--select", is_flag=True, help="Also serve the new version.")
@click.pass_obj
def install(repos: Repositories, model_file: Path, classes: str | None, sha256: str | None,
            card_file: Path | None, select: bool) -> None:
    """Check MODEL_FILE (TorchScript) against the contract and add it as version N.
    Needs torch (the model environment).

    \b
    Example:
      .venv-model/bin/inspectq model install my_model.pt --classes scratch,pit --select
    """
    _need_torch("install")
    with _refusals():
        extra = json.loads(card_file.read_text()) if card_file else None
        names = classes.split(",") if classes else None
        version = byom.install(repos, model_file, names, sha256, extra, select)
        served = repos.served_version()
    click.echo(f"installed {model_file} as {MODEL_NAME} version {version} "
               f"({repos.model_file(version)}); serving version {served}")
    if served != version:
        click.echo(f"serve it with: inspectq model select {version}")


def _need_torch(command: str) -> None:
    if find_spec("torch") is None:
        raise click.ClickException(
            f"`model {command}` runs the model and needs torch: use the model environment, "
            f"e.g. .venv-model/bin/inspectq model {command} ...")


@model.command()
@click.argument("model_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--pass-threshold", type=float, default=None,
              help="PASS below this (default: the service's, 0.40).")
@click.option("--reject-threshold", type=float, default=None,
              help="REJECT above this (default: the service's, 0.65).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def evaluate(model_file: Path, data: Path, pass_threshold: float | None,
             reject_threshold: float | None, as_json: bool) -> None:
    """Score every image of DATA exactly as the service would (decode, native-scale 256 px
    tiles, max over tiles, quality and out-of-domain rules) with MODEL_FILE (TorchScript)
    and print the image AUROC, the recall of defective images at REJECT, the false alarms
    (good images not PASSed), the misses (defective PASSed), the share sent to REVIEW and
    the share out of domain. DATA: an MVTec-layout folder, a folder of good/ and
    <defect class>/ subfolders, or a file of `PATH LABEL` lines (LABEL good or a class).
    Needs torch.

    \b
    Example:
      .venv-model/bin/inspectq model evaluate model.pt my_parts/
    """
    _need_torch("evaluate")
    from triton_models import evaluate as scoring

    with _refusals():
        figures = scoring.evaluate(
            model_file, data,
            scoring.PASS_BELOW if pass_threshold is None else pass_threshold,
            scoring.REJECT_ABOVE if reject_threshold is None else reject_threshold)
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    for key, value in figures.items():
        click.echo(f"{key.replace('_', ' '):<30} {value}")


@model.command()
@click.argument("version", type=int)
@click.pass_obj
def select(repos: Repositories, version: int) -> None:
    """Serve VERSION (choose a new one or roll back); restart Triton or load the model to
    apply.

    \b
    Example:
      inspectq model select 1
    """
    with _refusals():
        byom.select(repos, version)
    click.echo(f"{MODEL_NAME}: serving version {version} in {repos.gpu_model} and "
               f"{repos.cpu_model}; restart Triton (or load the model) to apply")


@model.command()
@click.pass_obj
def verify(repos: Repositories) -> None:
    """Check every version's file against its card and both configs.

    \b
    Example:
      inspectq model verify
    """
    with _refusals():
        click.echo("\n".join(byom.verify(repos)))


@model.command("list")
@click.pass_obj
def list_versions(repos: Repositories) -> None:
    """List the installed versions; * marks the served one.

    \b
    Example:
      inspectq model list
    """
    with _refusals():
        served = repos.served_version()
        for version in repos.versions():
            info = card.read(repos.model_file(version).parent)
            mark = "*" if version == served else " "
            click.echo(f"{mark} {version}  {info['sha256'][:16]}  "
                       f"{info.get('architecture', 'user model')}  "
                       f"mean_dice={info.get('metrics', {}).get('mean_dice', '-')}")
