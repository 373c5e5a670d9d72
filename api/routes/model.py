"""``/v1/model``: the served model version, its model card, and the other installed versions,
read from the Triton model repository (``triton_models.repository``: its config names the
served version, each version folder holds the version's ``model_card.json``). The model is
the deployment's, the same for every tenant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify
from spectree import Response as Responses
from spectree import SpecTree

from api.errors import ApiError
from api.schemas import ErrorOut, ModelOut
from api.services import services
from triton_models import card
from triton_models.repository import MODEL_NAME, Repositories


def _card(folder: Path) -> dict[str, Any] | None:
    try:
        return card.read(folder)
    except (OSError, ValueError):
        return None


def add_model_routes(bp: Blueprint, spec: SpecTree) -> None:
    @bp.get("/model")
    @spec.validate(resp=Responses(HTTP_200=ModelOut, HTTP_401=ErrorOut, HTTP_429=ErrorOut,
                                  HTTP_503=ErrorOut),
                   tags=["model"], security={"bearer": []})
    def get_model() -> Response:
        """The model version Triton serves and its card (held-out metrics per class), and
        every other installed version with its card, newest first. 503
        `model_repository_unavailable` when the repository cannot be read."""
        configured = services().settings.model_repository
        repos = Repositories(gpu=Path(configured)) if configured else Repositories()
        try:
            served = repos.served_version()
        except (OSError, ValueError) as error:
            raise ApiError(503, "model_repository_unavailable",
                           f"The model repository cannot be read: {type(error).__name__}."
                           ) from error
        versions = [{"version": version, "served": version == served,
                     "card": _card(repos.model_file(version).parent)}
                    for version in reversed(repos.versions())]
        return jsonify({"name": MODEL_NAME, "served_version": served, "versions": versions})
