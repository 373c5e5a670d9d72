"""API keys: bearer auth on /v1, hashed keys per tenant, the `inspectq keys` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.apikeys import hash_key
from inspectq.callbacks import SigningSecrets
from tests.api.conftest import AUTH, DEV_KEY, image_bytes, services_of, submit


def keys_cli(keys_file: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("inspectq")), "keys", *args, "--file", keys_file],
        capture_output=True, text=True, check=False, timeout=60,
    )


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, "invalid_request"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "invalid_request"),
        ({"Authorization": "Bearer "}, "invalid_request"),
        ({"Authorization": "Bearer not-a-key"}, "invalid_token"),
        ({"Authorization": f"Bearer {DEV_KEY}x"}, "invalid_token"),
    ],
)
def test_missing_or_bad_key_is_401(client: FlaskClient, headers: dict, error: str) -> None:
    for response in (
        client.get("/v1/jobs/j_AAAAAAAAAAAAAAAAAAAAAA", headers=headers),
        client.post("/v1/jobs", data=image_bytes(), headers={**headers,
                                                             "Content-Type": "image/png"}),
    ):
        assert response.status_code == 401
        assert response.json["error"]["code"] == "unauthorized"
        assert f'error="{error}"' in response.headers["WWW-Authenticate"]
        assert response.headers["WWW-Authenticate"].startswith("Bearer ")
        assert "not-a-key" not in response.get_data(as_text=True)


def test_health_and_metrics_need_no_key(client: FlaskClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_empty_bootstrap_key_disables_it(make_app) -> None:
    client = make_app(api_key="").test_client()
    assert client.get("/v1/jobs/j_AAAAAAAAAAAAAAAAAAAAAA", headers=AUTH).status_code == 401
    assert client.get("/v1/jobs/j_AAAAAAAAAAAAAAAAAAAAAA",
                      headers={"Authorization": "Bearer "}).status_code == 401


def test_keys_command_add_list_revoke(app: Flask, client: FlaskClient) -> None:
    keys_file = services_of(app).settings.api_keys_file
    added = keys_cli(keys_file, "add", "--tenant", "acme")
    assert added.returncode == 0, added.stderr
    key_id, tenant, plain = added.stdout.strip().split("\t")
    assert tenant == "acme" and plain.startswith("iq_") and len(plain) > 40
    secret = added.stderr.rsplit(": ", 1)[1].strip()  # the tenant's first key: its secret
    assert secret.startswith("whsec_") and SigningSecrets(
        services_of(app).settings).of("acme") == secret
    again = keys_cli(keys_file, "add", "--tenant", "acme")
    assert "signing secret" not in again.stderr  # shown once, kept
    assert keys_cli(keys_file, "revoke", again.stdout.split("\t")[0]).returncode == 0

    stored = Path(keys_file).read_text()
    assert plain not in stored and hash_key(plain) in stored
    assert Path(keys_file).stat().st_mode & 0o077 == 0
    listed = keys_cli(keys_file, "list")
    assert key_id in listed.stdout and plain not in listed.stdout

    acme = {"Authorization": f"Bearer {plain}"}
    response = submit(client, image_bytes(), headers=acme)
    assert response.status_code == 202
    job_id = response.json["id"]
    assert services_of(app).jobs.get(job_id).tenant == "acme"
    assert client.get(f"/v1/jobs/{job_id}", headers=acme).status_code == 200
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH).status_code == 404

    # Revoking takes effect on the running app (the file is re-read when it changes).
    assert keys_cli(keys_file, "revoke", key_id).returncode == 0
    assert client.get(f"/v1/jobs/{job_id}", headers=acme).status_code == 401
    assert keys_cli(keys_file, "revoke", key_id).returncode == 1
    assert json.loads(Path(keys_file).read_text()) == {
        "keys": [], "signing_secrets": {"acme": secret}}


def test_keys_command_refuses_a_bad_tenant(tmp_path: Path) -> None:
    result = keys_cli(str(tmp_path / "k.json"), "add", "--tenant", "../acme")
    assert result.returncode != 0
    assert not (tmp_path / "k.json").exists()
