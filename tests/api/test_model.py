"""GET /v1/model: the served version and its card, and the other installed versions, read
from a real model repository laid out as ``inspectq model`` leaves it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from flask import Flask

from tests.api.conftest import AUTH


def card(version: int, dice: float) -> dict[str, object]:
    return {"name": "inspectq_seg", "sha256": f"{version:02d}" * 32,
            "classes": ["background", "scratch", "pit"],
            "metrics": {"per_class": {"scratch": {"dice": dice, "iou": 0.6, "pixels": 100},
                                      "pit": {"dice": 0.9, "iou": 0.8, "pixels": 50}},
                        "mean_dice": round((dice + 0.9) / 2, 4), "image_auroc": 0.99}}


def repository(root: Path, served: int, cards: dict[int, dict[str, object] | None]) -> Path:
    model = root / "inspectq_seg"
    for version, content in cards.items():
        folder = model / str(version)
        folder.mkdir(parents=True)
        (folder / "model.pt").write_bytes(b"torchscript")
        if content is not None:
            (folder / "model_card.json").write_text(json.dumps(content))
    # The part of the config that names the served version (``inspectq model select``).
    (model / "config.pbtxt").write_text(
        f'name: "inspectq_seg"\nversion_policy: {{ specific: {{ versions: [ {served} ] }} }}\n')
    return root


def test_the_served_version_and_the_others_with_their_cards(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    root = repository(tmp_path, served=2, cards={1: card(1, 0.7), 2: card(2, 0.8), 3: None})
    client = make_app(model_repository=str(root)).test_client()
    response = client.get("/v1/model", headers=AUTH)
    assert response.status_code == 200, response.json
    assert response.json == {"name": "inspectq_seg", "served_version": 2, "versions": [
        {"version": 3, "served": False, "card": None},
        {"version": 2, "served": True, "card": card(2, 0.8)},
        {"version": 1, "served": False, "card": card(1, 0.7)}]}
    assert client.get("/v1/model").status_code == 401


def test_the_shipped_repository_is_the_default(make_app: Callable[..., Flask]) -> None:
    body = make_app().test_client().get("/v1/model", headers=AUTH).json
    served = [v for v in body["versions"] if v["served"]]
    assert [v["version"] for v in served] == [body["served_version"]]
    assert "per_class" in served[0]["card"]["metrics"]


def test_an_unreadable_repository_is_a_503(make_app: Callable[..., Flask],
                                           tmp_path: Path) -> None:
    client = make_app(model_repository=str(tmp_path / "nowhere")).test_client()
    response = client.get("/v1/model", headers=AUTH)
    assert response.status_code == 503
    assert response.json["error"]["code"] == "model_repository_unavailable"
