"""FastAPI: a reference sent back with a key added is a 422, never a new record, on every backend.

No ``from __future__ import annotations`` here: FastAPI resolves route annotations at runtime.
"""

import secrets
from typing import Any
from uuid import uuid4

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, Ref, SigningKeys
from pydantic_toast.fastapi import install
from tests.integration.conftest import BACKENDS


def make_app(url: str, keys: SigningKeys | None) -> tuple[FastAPI, type[ExternalBaseModel]]:
    """An app saving preferences: taken by reference (``Ref``) or as full data."""

    class Pref(ExternalBaseModel):
        theme: str = "light"
        model_config = ExternalConfigDict(storage=url, external_name=f"Pref_{uuid4().hex[:8]}")

    class Settings(BaseModel):
        pref: Ref[Pref]  # type: ignore[valid-type]

    app = FastAPI()
    install(app, signing=keys)

    @app.post("/prefs", status_code=201)
    async def create(pref: Pref) -> Pref:  # type: ignore[valid-type]
        return pref

    @app.post("/settings")
    async def save(body: Settings) -> dict[str, Any]:
        await body.pref.asave()
        return {"theme": body.pref.theme}

    @app.post("/settings-list")
    async def save_all(prefs: list[Ref[Pref]]) -> int:  # type: ignore[valid-type]
        for pref in prefs:
            await pref.asave()
        return len(prefs)

    return app, Pref


def refused_without_a_write(
    client: TestClient, model: type[ExternalBaseModel], path: str, body: Any, key: str
) -> None:
    """``body`` gets a 422 naming ``key`` (not its value) at the reference; nothing is written."""
    before = client.portal.call(pydantic_toast.acount, model)  # type: ignore[union-attr]
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["type"] == "external_reference_invalid"
    assert f"unexpected keys '{key}'" in problem["msg"]
    assert "exactly as it was issued" in problem["msg"]
    assert "secret-value" not in problem["msg"]
    assert client.portal.call(pydantic_toast.acount, model) == before  # type: ignore[union-attr]


@pytest.mark.parametrize("storage_url", BACKENDS, indirect=True)
def test_a_signed_reference_with_a_key_added_is_a_422_without_a_write(storage_url: str) -> None:
    """With signing on: a signed reference plus one key, in a body field, a list or the full
    data route, is refused (it was a 200 with a blank new record)."""
    app, model = make_app(storage_url, SigningKeys(secrets.token_bytes(32)))
    with TestClient(app) as client:
        signed = client.post("/prefs", json={"theme": "dark"}).json()
        assert set(signed) == {"class_name", "id", "signature"}
        assert client.post("/settings", json={"pref": signed}).json() == {"theme": "dark"}
        added = {**signed, "v": "secret-value"}
        refused_without_a_write(client, model, "/settings", {"pref": added}, "v")
        refused_without_a_write(client, model, "/settings-list", [signed, added], "v")
        refused_without_a_write(client, model, "/prefs", added, "v")
        as_data = {**signed, "theme": "secret-value"}
        refused_without_a_write(client, model, "/settings", {"pref": as_data}, "theme")
        assert client.portal.call(pydantic_toast.acount, model) == 1  # type: ignore[union-attr]


@pytest.mark.parametrize("storage_url", BACKENDS, indirect=True)
def test_a_reference_with_a_key_added_is_a_422_without_signing(storage_url: str) -> None:
    """Without signing: a plain reference plus one key, or a signed one (its signature is an
    unexpected key here), is refused, not saved as a new record of the defaults."""
    app, model = make_app(storage_url, None)
    with TestClient(app) as client:
        reference = client.post("/prefs", json={"theme": "dark"}).json()
        assert set(reference) == {"class_name", "id"}
        assert client.post("/settings", json={"pref": reference}).json() == {"theme": "dark"}
        added = {**reference, "theme": "secret-value"}
        refused_without_a_write(client, model, "/settings", {"pref": added}, "theme")
        signed = {**reference, "signature": "secret-value"}
        refused_without_a_write(client, model, "/settings", {"pref": signed}, "signature")
        refused_without_a_write(client, model, "/prefs", signed, "signature")
        assert client.portal.call(pydantic_toast.acount, model) == 1  # type: ignore[union-attr]
