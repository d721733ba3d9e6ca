"""CORS: off unless site.toml lists the origins; a listed origin gets the headers, preflight included."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from appliance.serve.api import ServeSettings, create_app
from appliance.workspace import Workspace, WorkspaceError
from tests.unit.test_serve_api import ScriptedEngine

ORIGIN = "https://app.example.org"
PREFLIGHT = {"origin": ORIGIN, "access-control-request-method": "POST",
             "access-control-request-headers": "authorization,content-type"}


def app_client(tmp_path, site: str | None) -> TestClient:
    ws = Workspace.open(tmp_path / "ws")
    if site is not None:
        (ws.root / "site.toml").write_text(site)
    return TestClient(create_app(ScriptedEngine(), ws, ServeSettings()))


def test_cors_off_by_default(tmp_path):
    with app_client(tmp_path, None) as client:
        assert "access-control-allow-origin" not in client.options("/v1/chat/completions", headers=PREFLIGHT).headers
        answer = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "say: hi"}]},
                             headers={"origin": ORIGIN})
        assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


def test_listed_origins_only(tmp_path):
    with app_client(tmp_path, f'[serve]\ncors_origins = ["{ORIGIN}"]\n') as client:
        preflight = client.options("/v1/chat/completions", headers=PREFLIGHT)
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == ORIGIN
        answer = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "say: hi"}]},
                             headers={"origin": ORIGIN})
        assert answer.headers["access-control-allow-origin"] == ORIGIN
        other = client.options("/v1/chat/completions", headers={**PREFLIGHT, "origin": "https://evil.example"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("value", ['"https://a.example"', '["https://a.example/path"]', '["a.example"]', "[1]"])
def test_bad_origins_are_refused_naming_the_key(tmp_path, value):
    with pytest.raises(WorkspaceError, match="cors_origins"):
        app_client(tmp_path, f"[serve]\ncors_origins = {value}\n")
