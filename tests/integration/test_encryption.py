"""Encrypted records (AES-GCM after zstd, key id recorded) and key rotation, on every backend."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

import pydantic_toast
from pydantic_toast import (
    EncryptionKeyError,
    EncryptionKeys,
    ExternalBaseModel,
    ExternalConfigDict,
    StoredRecord,
)
from pydantic_toast._offload import payload_class
from pydantic_toast._url import StorageURL
from tests.integration.test_compression import note_model, overwrite, stored
from tests.integration.test_offload import report_model

BIG = "a secret memo, repeated so that it compresses well. " * 2000  # ~100 KB
SECRET = "a secret memo"
K1, K2 = os.urandom(32), os.urandom(32)


def codecs_of(record: StoredRecord) -> tuple[list[str], str | None]:
    envelope = json.loads(record.data)["$toast"]
    return envelope["codecs"], envelope.get("key")


def test_settings_change_and_key_rotation_keep_every_record_readable(storage_url: str) -> None:
    """plain -> zstd -> zstd+AES-GCM (k1) -> rotated to k2: old records load; reencrypt moves
    them all to k2, after which k1 can go."""
    plain = note_model(storage_url)
    r_plain = plain(title="plain", body=BIG).model_dump()

    zipped = note_model(storage_url, compression="zstd")
    r_zipped = zipped(title="zipped", body=BIG).model_dump()

    k1 = EncryptionKeys({"k1": K1}, current="k1")
    sealed = note_model(storage_url, compression="zstd", encryption=k1)
    r_k1 = sealed(title="k1", body=BIG).model_dump()
    r_small = sealed(title="small", body="short").model_dump()
    raw = stored(storage_url, r_k1["class_name"], r_k1["id"])
    assert codecs_of(raw) == (["zstd", "aes-gcm"], "k1")
    assert SECRET.encode() not in raw.data
    small = stored(storage_url, r_small["class_name"], r_small["id"])
    assert codecs_of(small) == (["aes-gcm"], "k1")  # below compress_above: encrypted only
    assert b"short" not in small.data

    rotated = note_model(
        storage_url,
        compression="zstd",
        encryption=EncryptionKeys({"k1": K1, "k2": K2}, current="k2"),
    )
    r_k2 = rotated(title="k2", body=BIG).model_dump()
    assert codecs_of(stored(storage_url, r_k2["class_name"], r_k2["id"]))[1] == "k2"
    for reference, title in [
        (r_plain, "plain"),
        (r_zipped, "zipped"),
        (r_k1, "k1"),
        (r_small, "small"),
        (r_k2, "k2"),
    ]:
        loaded = rotated.model_validate(reference)
        assert loaded.title == title  # type: ignore[attr-defined]

    only_k2 = note_model(
        storage_url, compression="zstd", encryption=EncryptionKeys({"k2": K2}, current="k2")
    )
    with pytest.raises(EncryptionKeyError, match="key id 'k1'") as caught:
        only_k2.model_validate(r_k1)
    assert caught.value.key_id == "k1"
    assert SECRET not in str(caught.value)

    rotated = note_model(
        storage_url,
        compression="zstd",
        encryption=EncryptionKeys({"k1": K1, "k2": K2}, current="k2"),
    )
    report = pydantic_toast.reencrypt(rotated, batch_size=2)
    assert (report.checked, report.rewritten, report.changed) == (5, 4, 0)
    assert report.key_id == "k2"
    assert report.next_after is None
    for reference in (r_plain, r_zipped, r_k1, r_small):
        assert codecs_of(stored(storage_url, reference["class_name"], reference["id"]))[1] == "k2"
    before = stored(storage_url, r_k1["class_name"], r_k1["id"])
    only_k2 = note_model(
        storage_url, compression="zstd", encryption=EncryptionKeys({"k2": K2}, current="k2")
    )
    for reference in (r_plain, r_zipped, r_k1, r_small, r_k2):
        assert only_k2.model_validate(reference).body in (BIG, "short")  # type: ignore[attr-defined]
    assert before.created_at == stored(storage_url, r_k1["class_name"], r_k1["id"]).created_at
    assert pydantic_toast.reencrypt(only_k2).rewritten == 0  # nothing left to do


def test_wrong_or_missing_key_is_a_clear_error(storage_url: str) -> None:
    """The same id under another key, or a model without keys: errors name the id, not data."""
    sealed = note_model(storage_url, encryption=EncryptionKeys({"k1": K1}, current="k1"))
    reference = sealed(title=SECRET, body=BIG).model_dump()
    impostor = note_model(storage_url, encryption=EncryptionKeys({"k1": K2}, current="k1"))
    with pytest.raises(EncryptionKeyError, match="fails AES-GCM authentication with key id 'k1'"):
        impostor.model_validate(reference)
    bare = note_model(storage_url)
    with pytest.raises(EncryptionKeyError, match="has no encryption keys") as caught:
        bare.model_validate(reference)
    assert SECRET not in str(caught.value)
    assert K1.hex() not in str(caught.value)
    sealed = note_model(storage_url, encryption=EncryptionKeys({"k1": K1}, current="k1"))
    assert sealed.model_validate(reference).title == SECRET  # type: ignore[attr-defined]


def test_ciphertext_moved_to_another_record_fails(storage_url: str) -> None:
    """The class name and id are the associated data: a payload copied elsewhere is refused."""
    sealed = note_model(storage_url, encryption=EncryptionKeys({"k1": K1}, current="k1"))
    first = sealed(title="first").model_dump()
    second = sealed(title="second").model_dump()
    stolen = stored(storage_url, first["class_name"], first["id"])
    target = stored(storage_url, second["class_name"], second["id"])
    overwrite(storage_url, StoredRecord(**{**_fields(target), "data": stolen.data}))
    with pytest.raises(EncryptionKeyError, match="fails AES-GCM authentication"):
        sealed.model_validate(second)


def _fields(record: StoredRecord) -> dict[str, Any]:
    return {
        "class_name": record.class_name,
        "id": record.id,
        "data": record.data,
        "schema_version": record.schema_version,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


async def _payload(offload: str, class_name: str, id: UUID) -> StoredRecord | None:
    backend = await pydantic_toast.current_storage().connected(StorageURL.parse(offload))
    (record,) = await backend.load_records([(class_name, id)])
    return record  # type: ignore[no-any-return]


def test_offloaded_payloads_are_encrypted_and_reencrypted(storage_url: str, s3_url: str) -> None:
    """Offloading runs after the codecs: the object in S3 is the encrypted envelope, and the
    pointer names its key; a re-encryption uploads a new one and deletes the old, and a run
    with nothing to rewrite downloads no payload (it reads the key from the pointer)."""
    big = "out of line and secret. " * 20_000  # ~480 KB: offloaded (no compression here)
    sealed = report_model(storage_url, s3_url, encryption=EncryptionKeys({"k1": K1}, current="k1"))
    reference = sealed(title="t", body=big).model_dump()
    pointer = json.loads(stored(storage_url, reference["class_name"], reference["id"]).data)
    target = pointer["$toast"]["offloaded"]
    assert target["class_name"] == payload_class(reference["class_name"])
    assert target["key"] == "k1"
    old_id = UUID(target["id"])
    payload = asyncio.run(_payload_closing(s3_url, target["class_name"], old_id))
    assert payload is not None
    assert codecs_of(payload) == (["aes-gcm"], "k1")
    assert b"out of line and secret" not in payload.data

    rotated = report_model(
        storage_url, s3_url, encryption=EncryptionKeys({"k1": K1, "k2": K2}, current="k2")
    )
    assert pydantic_toast.reencrypt(rotated).rewritten == 1
    pointer = json.loads(stored(storage_url, reference["class_name"], reference["id"]).data)
    new_id = UUID(pointer["$toast"]["offloaded"]["id"])
    assert new_id != old_id
    assert asyncio.run(_payload_closing(s3_url, target["class_name"], old_id)) is None
    moved = asyncio.run(_payload_closing(s3_url, target["class_name"], new_id))
    assert moved is not None
    assert codecs_of(moved)[1] == "k2"
    assert pointer["$toast"]["offloaded"]["key"] == "k2"
    assert rotated.model_validate(reference).body == big  # type: ignore[attr-defined]
    asyncio.run(_delete_payload_closing(s3_url, target["class_name"], new_id))
    report = pydantic_toast.reencrypt(rotated)  # would fail on the missing payload if fetched
    assert (report.checked, report.rewritten) == (1, 0)


def test_pointers_without_their_payloads_key_are_read_to_learn_it(
    storage_url: str, s3_url: str
) -> None:
    """A pointer written before pointers named their payload's key: a re-encryption downloads
    the payload to learn it, and rewrites it only when it is not the current key."""
    big = "out of line and secret. " * 20_000
    sealed = report_model(storage_url, s3_url, encryption=EncryptionKeys({"k1": K1}, current="k1"))
    reference = sealed(title="t", body=big).model_dump()
    record = stored(storage_url, reference["class_name"], reference["id"])
    envelope = json.loads(record.data)
    del envelope["$toast"]["offloaded"]["key"]
    data = json.dumps(envelope, separators=(",", ":")).encode()
    overwrite(storage_url, dataclasses.replace(record, data=data))
    assert pydantic_toast.reencrypt(sealed).rewritten == 0  # read: already under k1
    rotated = report_model(
        storage_url, s3_url, encryption=EncryptionKeys({"k1": K1, "k2": K2}, current="k2")
    )
    assert pydantic_toast.reencrypt(rotated).rewritten == 1
    pointer = json.loads(stored(storage_url, reference["class_name"], reference["id"]).data)
    assert pointer["$toast"]["offloaded"]["key"] == "k2"
    assert rotated.model_validate(reference).body == big  # type: ignore[attr-defined]


async def _delete_payload_closing(offload: str, class_name: str, id: UUID) -> None:
    try:
        backend = await pydantic_toast.current_storage().connected(StorageURL.parse(offload))
        assert await backend.delete(id, class_name)
    finally:
        await pydantic_toast.aclose_storage()


async def _payload_closing(offload: str, class_name: str, id: UUID) -> StoredRecord | None:
    try:
        return await _payload(offload, class_name, id)
    finally:
        await pydantic_toast.aclose_storage()


def test_bad_encryption_settings_are_refused_without_showing_a_key(memory_url: str) -> None:
    from pydantic_toast import StorageConfigurationError

    secret = b"s" * 31
    with pytest.raises(StorageConfigurationError, match="must be 32 bytes") as caught:
        EncryptionKeys({"k1": secret}, current="k1")
    assert "sss" not in str(caught.value)
    with pytest.raises(StorageConfigurationError, match="not one of the key ids"):
        EncryptionKeys({"k1": K1}, current="k2")
    with pytest.raises(StorageConfigurationError, match="key id"):
        EncryptionKeys({"k 1": K1}, current="k 1")
    with pytest.raises(StorageConfigurationError, match="encryption must be an EncryptionKeys"):

        class Note(ExternalBaseModel):
            text: str
            model_config = ExternalConfigDict(storage=memory_url, encryption=K1)  # type: ignore[typeddict-item]

    assert K1.hex() not in repr(EncryptionKeys({"k1": K1}, current="k1"))
    assert repr(EncryptionKeys({"k1": K1}, current="k1")) == (
        "EncryptionKeys(ids=['k1'], current='k1')"
    )


@pytest.mark.postgresql
def test_the_reencrypt_command_rotates_resumes_and_reports_errors(
    postgres_database_url: str, tmp_path: Path
) -> None:
    """``pydantic-toast reencrypt`` rewrites a class's records under the current key of the
    model its --module defines, page by page with progress and a resume cursor on stderr;
    --after resumes past the pages done; a record whose key the model lacks fails in one line
    that names the key id and writes nothing of its page; the URL's password is masked."""
    scheme, rest = postgres_database_url.split("://", 1)
    userinfo, host = rest.split("@", 1)
    user, _, password = userinfo.partition(":")
    # Under trust auth any password does, one that cannot show up by chance; a throwaway
    # server has its own, which may be a common word ("postgres", its user's name too): then
    # the check is that it never shows in the URL's place.
    leaked = f":{password}@" if password else "hunter2secret"
    url = f"{scheme}://{user}:{password or leaked}@{host}"
    name = f"Memo{uuid4().hex[:8]}"
    (tmp_path / "vault_models.py").write_text(
        textwrap.dedent(
            f"""
            import os
            from pydantic_toast import EncryptionKeys, ExternalBaseModel, ExternalConfigDict

            KEYS = dict(pair.split("=") for pair in os.environ["VAULT_KEYS"].split(","))

            class Memo(ExternalBaseModel):
                text: str
                model_config = ExternalConfigDict(
                    storage="{url}",
                    external_name="{name}",
                    encryption=EncryptionKeys(
                        {{k: bytes.fromhex(v) for k, v in KEYS.items()}},
                        current=os.environ["VAULT_CURRENT"],
                    ),
                )
            """
        )
    )
    secrets = {key: os.urandom(32).hex() for key in ("k1", "k2", "k3", "k4")}

    def run(keys: str, current: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "VAULT_KEYS": ",".join(f"{key}={secrets[key]}" for key in keys.split(",")),
            "VAULT_CURRENT": current,
        }
        return subprocess.run(
            [sys.executable, *args], env=env, cwd=tmp_path, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip

    setup = "import vault_models as m\nfor i in range(5): m.Memo(text=f'memo {i}').model_dump()"
    made = run("k1", "k1", "-c", setup)
    assert made.returncode == 0, made.stderr
    cli = ["-m", "pydantic_toast.integrations.cli", "reencrypt", url]
    cli += ["--module", "vault_models", "--class", name, "--batch-size", "2"]

    def keys_stored() -> list[str | None]:
        async def read() -> list[str | None]:
            try:
                backend = await pydantic_toast.current_storage().connected(StorageURL.parse(url))
                records = await backend.list_records(name, limit=10)
                return [codecs_of(record)[1] for record in records]
            finally:
                await pydantic_toast.aclose_storage()

        return asyncio.run(read())

    rotated = run("k1,k2", "k2", *cli)
    assert rotated.returncode == 0, rotated.stderr
    assert "postgres:***@" in rotated.stdout
    assert leaked not in rotated.stdout + rotated.stderr
    assert f"{name}: 5 of 5 records rewritten under key 'k2'" in rotated.stdout
    progress = rotated.stderr.splitlines()
    assert progress[0].startswith("checked 2, rewritten 2, changed meanwhile 0; resume with")
    assert progress[-1] == "checked 5, rewritten 5, changed meanwhile 0"
    assert keys_stored() == ["k2"] * 5
    cursor = progress[0].rsplit("--after ", 1)[1]

    resumed = run("k2,k3", "k3", *cli, "--after", cursor)
    assert resumed.returncode == 0, resumed.stderr
    assert "3 of 3 records rewritten under key 'k3'" in resumed.stdout
    assert sorted(keys_stored(), key=str) == ["k2", "k2", "k3", "k3", "k3"]

    missing = run("k3,k4", "k4", *cli)
    assert missing.returncode == 1
    error = missing.stderr.strip().splitlines()
    assert len(error) == 1, missing.stderr
    assert error[0].startswith("pydantic-toast reencrypt: error:")
    assert "'k2'" in error[0]
    assert leaked not in missing.stderr
    assert sorted(keys_stored(), key=str) == ["k2", "k2", "k3", "k3", "k3"]

    bad = run("k2,k3", "k3", *cli, "--after", "nope")
    assert bad.returncode == 2
    assert "--after 'nope' is not a cursor" in bad.stderr


def test_keys_that_only_decrypt_turn_encryption_off(storage_url: str) -> None:
    """``EncryptionKeys.decrypt_only({...})`` reads records encrypted under its ids and
    writes unencrypted; reencrypt rewrites every encrypted record unencrypted (a second run
    rewrites 0), after which a model with ``encryption=None`` reads them all."""
    sealed = note_model(storage_url, encryption=EncryptionKeys({"k1": K1}, current="k1"))
    r_k1 = sealed(title="k1", body=SECRET).model_dump()
    rotated = note_model(storage_url, encryption=EncryptionKeys({"k1": K1, "k2": K2}, current="k2"))
    r_k2 = rotated(title="k2", body=SECRET).model_dump()
    r_plain = note_model(storage_url)(title="plain", body=SECRET).model_dump()
    before = stored(storage_url, r_k1["class_name"], r_k1["id"])
    assert codecs_of(before) == (["aes-gcm"], "k1")

    opening = note_model(storage_url, encryption=EncryptionKeys.decrypt_only({"k1": K1, "k2": K2}))
    assert opening.model_validate(r_k1).body == SECRET  # type: ignore[attr-defined]
    r_new = opening(title="new", body=SECRET).model_dump()
    assert json.loads(stored(storage_url, r_new["class_name"], r_new["id"]).data) == {
        "title": "new",
        "body": SECRET,
    }

    report = pydantic_toast.reencrypt(opening, batch_size=2)
    assert (report.checked, report.rewritten, report.changed) == (4, 2, 0)
    assert report.key_id is None
    bare = note_model(storage_url)
    for reference, title in [(r_k1, "k1"), (r_k2, "k2"), (r_plain, "plain"), (r_new, "new")]:
        raw = stored(storage_url, reference["class_name"], reference["id"])
        assert json.loads(raw.data) == {"title": title, "body": SECRET}  # plain JSON
        assert bare.model_validate(reference).title == title  # type: ignore[attr-defined]
    after = stored(storage_url, r_k1["class_name"], r_k1["id"])
    assert (after.created_at, after.schema_version) == (before.created_at, before.schema_version)
    assert pydantic_toast.reencrypt(opening).rewritten == 0
    assert pydantic_toast.reencrypt(bare).rewritten == 0  # nothing encrypted is left


def test_compressed_records_stay_compressed_when_decrypted(memory_url: str) -> None:
    """Decrypting keeps the rest of the chain: a large record of a model with compression is
    rewritten as a zstd envelope without key, readable once encryption is dropped."""
    sealed = note_model(
        memory_url, compression="zstd", encryption=EncryptionKeys({"k1": K1}, current="k1")
    )
    reference = sealed(title="big", body=BIG).model_dump()
    opening = note_model(
        memory_url, compression="zstd", encryption=EncryptionKeys.decrypt_only({"k1": K1})
    )
    assert pydantic_toast.reencrypt(opening).rewritten == 1
    assert codecs_of(stored(memory_url, reference["class_name"], reference["id"])) == (
        ["zstd"],
        None,
    )
    zipped = note_model(memory_url, compression="zstd")
    assert zipped.model_validate(reference).body == BIG  # type: ignore[attr-defined]


def test_reencrypt_without_keys_names_the_way_to_decrypt(storage_url: str) -> None:
    """A model with ``encryption=None`` cannot decrypt: reencrypt stops with an error that
    names ``EncryptionKeys.decrypt_only`` as the fix, shows no key or data, and leaves the
    records as they were."""
    sealed = note_model(storage_url, encryption=EncryptionKeys({"k1": K1}, current="k1"))
    reference = sealed(title=SECRET).model_dump()
    before = stored(storage_url, reference["class_name"], reference["id"])
    with pytest.raises(EncryptionKeyError, match="has no encryption keys") as caught:
        pydantic_toast.reencrypt(note_model(storage_url))
    message = str(caught.value)
    assert "EncryptionKeys.decrypt_only" in message
    assert "pydantic_toast.reencrypt" in message
    assert SECRET not in message
    assert K1.hex() not in message
    assert stored(storage_url, reference["class_name"], reference["id"]).data == before.data


def test_keys_that_only_decrypt_are_checked_and_cannot_encrypt() -> None:
    """``EncryptionKeys.decrypt_only`` keys show so in their repr and refuse to
    encrypt. ``current=None`` itself is refused (an unset environment variable,
    ``os.environ.get("KEY_ID")``, must not turn encryption off), as is a ``current`` that is no
    key id, both naming ``decrypt_only`` as the other choice; bytes given where an id goes (a
    key, maybe) are never shown."""
    from pydantic_toast import StorageConfigurationError

    keys = EncryptionKeys.decrypt_only({"k1": K1})
    assert repr(keys) == "EncryptionKeys.decrypt_only(ids=['k1'])"
    with pytest.raises(StorageConfigurationError, match="only decrypts") as caught:
        keys.encrypt(b"data", b"associated")
    assert K1.hex() not in str(caught.value)
    for current in ("k2", None):
        with pytest.raises(StorageConfigurationError, match="decrypt_only"):
            EncryptionKeys({"k1": K1}, current=current)  # type: ignore[arg-type]
    texts = (K1.hex(), base64.b64encode(K1).decode())
    for wrong in ({"k1": K1, "current": K1}, {K1: "k1"}, {texts[0]: "k1"}, {texts[1]: "k1"}):
        with pytest.raises(StorageConfigurationError) as shown:
            EncryptionKeys(wrong, current=K1)  # type: ignore[arg-type]
        assert repr(K1)[:12] not in str(shown.value)
        assert not any(text in str(shown.value) for text in texts)
    for current in texts:
        with pytest.raises(StorageConfigurationError) as shown:
            EncryptionKeys({"k1": K1}, current=current)
        assert not any(text in str(shown.value) for text in texts)


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgresql", marks=pytest.mark.postgresql),
    ]
)
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLite file of this test's own, or the session's PostgreSQL database."""
    if request.param == "sqlite":
        path = tmp_path / "vault.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
    else:
        yield request.getfixturevalue("postgres_database_url")
    pydantic_toast.close_storage()


def test_the_reencrypt_command_turns_encryption_off(sql_url: str, tmp_path: Path) -> None:
    """``pydantic-toast reencrypt`` with a module whose keys only decrypt rewrites
    every record unencrypted and a second run rewrites 0; with ``encryption=None`` it exits 1
    with one line naming the fix and no key; afterwards a model without encryption reads them."""
    name = f"Memo{uuid4().hex[:8]}"
    (tmp_path / "vault_models.py").write_text(
        textwrap.dedent(
            f"""
            import os
            from pydantic_toast import EncryptionKeys, ExternalBaseModel, ExternalConfigDict

            KEYS = dict(pair.split("=") for pair in os.environ["VAULT_KEYS"].split(",") if pair)

            class Memo(ExternalBaseModel):
                text: str
                model_config = ExternalConfigDict(
                    storage="{sql_url}",
                    external_name="{name}",
                    encryption=(
                        EncryptionKeys(
                            {{k: bytes.fromhex(v) for k, v in KEYS.items()}},
                            current=os.environ["VAULT_CURRENT"],
                        ) if os.environ["VAULT_CURRENT"] else EncryptionKeys.decrypt_only(
                            {{k: bytes.fromhex(v) for k, v in KEYS.items()}}
                        )
                    ) if KEYS else None,
                )
            """
        )
    )
    secret = os.urandom(32).hex()

    def run(keys: str, current: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "VAULT_KEYS": f"k1={secret}" if keys else "",
            "VAULT_CURRENT": current,
        }
        return subprocess.run(
            [sys.executable, *args], env=env, cwd=tmp_path, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip

    def stored_data() -> list[bytes]:
        async def read() -> list[bytes]:
            try:
                backend = await pydantic_toast.current_storage().connected(
                    StorageURL.parse(sql_url)
                )
                return [record.data for record in await backend.list_records(name, limit=10)]
            finally:
                await pydantic_toast.aclose_storage()

        return asyncio.run(read())

    setup = (
        "import json, vault_models as m\n"
        "print(json.dumps([m.Memo(text=f'memo {i}').model_dump(mode='json') for i in range(3)]))"
    )
    made = run("k1", "k1", "-c", setup)
    assert made.returncode == 0, made.stderr
    references = made.stdout.strip()
    assert [json.loads(data)["$toast"]["key"] for data in stored_data()] == ["k1"] * 3
    cli = ["-m", "pydantic_toast", "reencrypt", sql_url]
    cli += ["--module", "vault_models", "--class", name, "--batch-size", "2"]

    keyless = run("", "", *cli)
    assert keyless.returncode == 1
    error = keyless.stderr.strip().splitlines()
    assert len(error) == 1, keyless.stderr
    assert "has no encryption keys" in error[0]
    assert "EncryptionKeys.decrypt_only" in error[0]
    assert secret not in keyless.stdout + keyless.stderr
    assert all(b"memo" not in data for data in stored_data())

    decrypted = run("k1", "", *cli)
    assert decrypted.returncode == 0, decrypted.stderr
    assert f"{name}: 3 of 3 records rewritten unencrypted;" in decrypted.stdout
    assert secret not in decrypted.stdout + decrypted.stderr
    assert sorted(json.loads(data)["text"] for data in stored_data()) == [
        "memo 0",
        "memo 1",
        "memo 2",
    ]
    again = run("k1", "", *cli)
    assert again.returncode == 0, again.stderr
    assert f"{name}: 0 of 3 records rewritten unencrypted;" in again.stdout

    read = "import json, sys, vault_models as m\n"
    read += "print(sorted(m.Memo.model_validate(r).text for r in json.loads(sys.argv[1])))"
    plain = run("", "", "-c", read, references)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == "['memo 0', 'memo 1', 'memo 2']"


def test_offloaded_payloads_are_decrypted(storage_url: str, s3_url: str) -> None:
    """Decrypting an offloaded record uploads its payload unencrypted, under a pointer whose
    key is ``None``, so a second run downloads nothing (the old payload is deleted)."""
    big = "out of line and secret. " * 20_000
    sealed = report_model(storage_url, s3_url, encryption=EncryptionKeys({"k1": K1}, current="k1"))
    reference = sealed(title="t", body=big).model_dump()
    opening = report_model(storage_url, s3_url, encryption=EncryptionKeys.decrypt_only({"k1": K1}))
    assert pydantic_toast.reencrypt(opening).rewritten == 1
    pointer = json.loads(stored(storage_url, reference["class_name"], reference["id"]).data)
    target = pointer["$toast"]["offloaded"]
    assert target["key"] is None
    payload = asyncio.run(_payload_closing(s3_url, target["class_name"], UUID(target["id"])))
    assert payload is not None
    assert b"out of line and secret" in payload.data  # plain JSON
    asyncio.run(_delete_payload_closing(s3_url, target["class_name"], UUID(target["id"])))
    report = pydantic_toast.reencrypt(opening)  # would fail on the missing payload if fetched
    assert (report.checked, report.rewritten) == (1, 0)
