"""Behaviour every backend claims: run on memory, SQLite, PostgreSQL and Redis alike."""

from __future__ import annotations

import asyncio
import hashlib
import math
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID, uuid4

import pytest
from pydantic import BaseModel

import pydantic_toast
from pydantic_toast import (
    ConcurrencyError,
    ExternalBaseModel,
    ExternalConfigDict,
    RecordNotFoundError,
    StorageValidationError,
)
from pydantic_toast._url import StorageURL


def name_of(model: type[ExternalBaseModel]) -> str:
    """The stored class name (unique per test: the PostgreSQL database is shared)."""
    settings = model.__toast_settings__
    assert settings is not None
    return settings.external_name


def models(url: str) -> tuple[type[ExternalBaseModel], type[ExternalBaseModel]]:
    tag = hashlib.sha1(url.encode()).hexdigest()[:8]

    class Order(ExternalBaseModel):
        product: str
        quantity: int
        price: float = 1.5
        placed_at: datetime = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
        model_config = ExternalConfigDict(storage=url, external_name=f"Order_{tag}")

    class Basket(ExternalBaseModel):
        orders: list[Order]
        note: str = ""
        model_config = ExternalConfigDict(storage=url, external_name=f"Basket_{tag}")

    return Order, Basket


def records(url: str, *keys: tuple[str, object]) -> list[pydantic_toast.StoredRecord | None]:
    async def read() -> list[pydantic_toast.StoredRecord | None]:
        backend = await pydantic_toast.current_storage().connected(StorageURL.parse(url))
        try:
            return await backend.load_records(list(keys))  # type: ignore[arg-type]
        finally:
            await pydantic_toast.aclose_storage()

    return asyncio.run(read())


def test_round_trip_sync(storage_url: str) -> None:
    """Dump stores, validate loads every field back exactly."""
    order_cls, _ = models(storage_url)
    order = order_cls(product="tea", quantity=2, price=0.1)
    reference = order.model_dump()
    assert set(reference) == {"class_name", "id"}
    assert order_cls.model_validate(reference) == order
    assert order_cls.model_validate_json(order.model_dump_json()) == order


async def test_round_trip_async(storage_url: str) -> None:
    """asave/aload round-trip on the caller's loop."""
    order_cls, basket_cls = models(storage_url)
    basket = basket_cls(orders=[order_cls(product=f"p{i}", quantity=i) for i in range(4)])
    reference = await basket.asave()
    assert await basket_cls.aload(reference) == basket


def test_update_keeps_id_and_created_at_and_moves_updated_at(storage_url: str) -> None:
    """Dumping again overwrites the record under the same id; created_at stays put."""
    order_cls, _ = models(storage_url)
    order = order_cls(product="tea", quantity=1)
    reference = order.model_dump()
    key = (name_of(order_cls), order.external_id)
    (first,) = records(storage_url, key)
    order.quantity = 5  # type: ignore[attr-defined]
    assert order.model_dump() == reference
    (second,) = records(storage_url, key)
    assert first is not None
    assert second is not None
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at
    assert second.created_at.tzinfo is not None
    assert second.created_at.microsecond == first.created_at.microsecond
    assert order_cls.model_validate(reference).quantity == 5  # type: ignore[attr-defined]


def test_created_at_survives_a_fresh_writer(storage_url: str) -> None:
    """Another instance writing the same id (e.g. another process) keeps created_at."""
    order_cls, _ = models(storage_url)
    order = order_cls(product="tea", quantity=1)
    reference = order.model_dump()
    (first,) = records(storage_url, (name_of(order_cls), order.external_id))
    impostor = order_cls(product="tea", quantity=9)
    object.__setattr__(impostor, "_toast_identity", None)
    loaded = order_cls.model_validate(reference)
    object.__setattr__(
        loaded,
        "_toast_identity",
        type(loaded._toast_identity)(loaded.external_id, datetime.now(UTC)),  # type: ignore[attr-defined]
    )
    pydantic_toast.dump(loaded, force=True)  # it never saw the record: last write wins
    (second,) = records(storage_url, (name_of(order_cls), order.external_id))
    assert first is not None
    assert second is not None
    assert second.created_at == first.created_at


def test_missing_record(storage_url: str) -> None:
    """An unknown id raises RecordNotFoundError on every backend."""
    order_cls, _ = models(storage_url)
    with pytest.raises(RecordNotFoundError):
        order_cls.model_validate({"class_name": name_of(order_cls), "id": "0" * 32})


async def test_a_batch_of_ids_in_other_spellings_loads_each_record(storage_url: str) -> None:
    """Ids written upper case, in braces or without hyphens (each once) load their records."""
    order_cls, _ = models(storage_url)
    try:
        saved = await pydantic_toast.adump(
            [order_cls(product=f"p{n}", quantity=n) for n in range(4)]
        )
        texts = [saved[0]["id"].upper(), f"{{{saved[1]['id']}}}", saved[2]["id"].replace("-", "")]
        spelled = [{**reference, "id": text} for reference, text in zip(saved, texts, strict=False)]
        quantity = {reference["id"]: n for n, reference in enumerate(saved)}
        for batch in (spelled, [*spelled, saved[3]], [saved[3], *saved[:3]]):
            loaded = await pydantic_toast.avalidate(list[order_cls], batch)  # type: ignore[valid-type]
            canonical = [str(UUID(reference["id"])) for reference in batch]
            assert [str(m.external_id) for m in loaded] == canonical
            assert [m.quantity for m in loaded] == [quantity[id] for id in canonical]  # type: ignore[attr-defined]
    finally:
        await pydantic_toast.aclose_storage()


def test_nested_tree_round_trips_through_plain_models(storage_url: str) -> None:
    """A plain model holding external ones round-trips, batched and unbatched."""
    order_cls, basket_cls = models(storage_url)

    class Checkout(BaseModel):
        basket: basket_cls  # type: ignore[valid-type]
        extras: dict[str, order_cls]  # type: ignore[valid-type]

    checkout = Checkout(
        basket=basket_cls(orders=[order_cls(product="a", quantity=1)]),
        extras={"gift": order_cls(product="b", quantity=2)},
    )
    assert Checkout.model_validate(checkout.model_dump()) == checkout
    assert pydantic_toast.validate(Checkout, pydantic_toast.dump(checkout)) == checkout


def test_classes_on_one_url_stay_separate(storage_url: str) -> None:
    """Two classes on the same storage never see each other's records."""
    order_cls, basket_cls = models(storage_url)
    order = order_cls(product="tea", quantity=1)
    reference = order.model_dump()
    with pytest.raises(StorageValidationError):
        basket_cls.model_validate(reference)
    with pytest.raises(RecordNotFoundError):
        basket_cls.model_validate({"class_name": name_of(basket_cls), "id": reference["id"]})


async def test_hundred_concurrent_async_operations(storage_url: str) -> None:
    """100 concurrent saves then loads all succeed on one pool."""
    order_cls, _ = models(storage_url)
    orders = [order_cls(product=f"p{i}", quantity=i) for i in range(100)]
    references = await asyncio.gather(*(order.asave() for order in orders))
    loaded = await asyncio.gather(*(order_cls.aload(ref) for ref in references))
    assert loaded == orders


def test_values_come_back_exactly_or_are_refused(storage_url: str) -> None:
    """NaN, infinity and NUL characters are stored losslessly or refused, never changed."""
    order_cls, _ = models(storage_url)
    kind = pydantic_toast.current_storage().registry.class_for(storage_url.split("://")[0]).__name__
    for risky in (
        order_cls(product="nan", quantity=1, price=math.nan),
        order_cls(product="inf", quantity=1, price=-math.inf),
        order_cls(product="nul\x00inside", quantity=1),
    ):
        if kind == "PostgreSQLBackend":  # jsonb cannot hold these: refused, nothing written
            with pytest.raises(StorageValidationError, match="nothing was written") as info:
                risky.model_dump()
            assert "nul\x00" not in str(info.value)
            with pytest.raises(RecordNotFoundError):
                order_cls.model_validate(
                    {"class_name": name_of(order_cls), "id": str(risky.external_id)}
                )
            continue
        loaded = order_cls.model_validate(risky.model_dump())
        assert loaded.product == risky.product  # type: ignore[attr-defined]
        price = loaded.price  # type: ignore[attr-defined]
        if math.isnan(risky.price):  # type: ignore[attr-defined]
            assert math.isnan(price)
        else:
            assert price == risky.price  # type: ignore[attr-defined]


def test_bytes_holding_nul_round_trip_as_base64(storage_url: str) -> None:
    """A bytes field holding NUL (JSON text: \\u0000) round-trips where the store takes it; on
    PostgreSQL it is refused with the base64 setting named, which then round-trips."""
    kind = pydantic_toast.current_storage().registry.class_for(storage_url.split("://")[0]).__name__
    suffix = uuid4().hex[:8]
    plain = type(
        "Blob",
        (ExternalBaseModel,),
        {
            "__annotations__": {"payload": bytes},
            "model_config": ExternalConfigDict(storage=storage_url, external_name=f"B{suffix}"),
        },
    )
    base64 = type(
        "Blob64",
        (ExternalBaseModel,),
        {
            "__annotations__": {"payload": bytes},
            "model_config": ExternalConfigDict(
                storage=storage_url,
                external_name=f"B64{suffix}",
                ser_json_bytes="base64",
                val_json_bytes="base64",
            ),
        },
    )
    value = b"head\x00tail"  # UTF-8: the plain field writes it as text, NUL as \\u0000
    if kind == "PostgreSQLBackend":
        with pytest.raises(StorageValidationError, match="ser_json_bytes='base64'"):
            plain(payload=value).model_dump()
    else:
        assert plain.model_validate(plain(payload=value).model_dump()).payload == value
    binary = b"\x00\xff\x00"
    assert base64.model_validate(base64(payload=binary).model_dump()).payload == binary


def test_an_extra_envelope_key_is_refused_whatever_the_key_order(storage_url: str) -> None:
    """An extra field "$toast" (the key of the library's envelopes) after fields of six
    characters or more: PostgreSQL's jsonb stores shorter keys first, so the record started
    with it and loaded as the envelope it carried (here: another user, an admin). Refused
    before anything is written, on every backend."""
    import base64
    import json

    class Profile(ExternalBaseModel):
        model_config = ExternalConfigDict(
            storage=storage_url, extra="allow", external_name=f"Profile_{uuid4().hex[:8]}"
        )
        username: str
        is_admin: bool = False

    forged = json.dumps({"username": "mallory", "is_admin": True}).encode()
    envelope = {
        "codecs": [],
        "size": len(forged),
        "sha256": hashlib.sha256(forged).hexdigest(),
        "payload": base64.b64encode(forged).decode(),
    }
    for value in (envelope, "text"):
        body = {"username": "alice", "is_admin": False, "$toast": value}
        with pytest.raises(StorageValidationError, match=r"'\$toast'.*nothing was written"):
            Profile.model_validate(body).model_dump()
    assert pydantic_toast.count(Profile) == 0


class Animal(BaseModel):
    name: str


class Dog(Animal):
    bark: str


class Holder(BaseModel):
    pet: Animal


def test_a_subclass_in_a_plain_field_of_its_base_class_is_refused_unwritten(
    storage_url: str,
) -> None:
    """A plain Dog where a plain Animal is declared, directly or in a plain model at any depth,
    was written as an Animal and came back as one, its own fields gone: refused before
    anything is written; declared as a union naming Dog, it comes back a Dog."""
    tag = uuid4().hex[:8]

    class Direct(ExternalBaseModel):
        pet: Animal
        model_config = ExternalConfigDict(storage=storage_url, external_name=f"Direct_{tag}")

    class Nested(ExternalBaseModel):
        holders: list[Holder]
        model_config = ExternalConfigDict(storage=storage_url, external_name=f"Nested_{tag}")

    class Either(ExternalBaseModel):
        holder: Holder
        pet: Animal | Dog
        model_config = ExternalConfigDict(storage=storage_url, external_name=f"Either_{tag}")

    rex = Dog(name="rex", bark="woof")
    for model, field in (
        (Direct(pet=rex), "pet"),
        (Nested(holders=[Holder(pet=Animal(name="a")), Holder(pet=rex)]), "holders"),
        (Either(holder=Holder(pet=rex), pet=rex), "holder"),
    ):
        with pytest.raises(StorageValidationError, match=r"holds a Dog where Animal") as refused:
            model.model_dump()
        assert "nothing was written" in str(refused.value)
        assert refused.value.field == field
    assert [pydantic_toast.count(cls) for cls in (Direct, Nested, Either)] == [0, 0, 0]
    either = Either(holder=Holder(pet=Animal(name="a")), pet=rex)
    loaded = Either.model_validate(either.model_dump())
    assert loaded == either
    assert type(loaded.pet) is Dog


class _Inner(BaseModel):
    anything: Any = None


def test_a_refused_subclass_is_blamed_on_the_field_that_holds_it(storage_url: str) -> None:
    """A Photo refused because a field declares Media, its base class, is blamed on the field
    it sits in (at any depth, among fields of one type), with that field's type; one in an Any
    field, while another field declares Media, is refused as an Any value, naming the Any field;
    nothing is written either way."""
    tag = uuid4().hex[:8]

    class Media(ExternalBaseModel):
        __abstract__ = True
        model_config = ExternalConfigDict(storage=storage_url)

    class Photo(Media):
        px: int
        model_config = ExternalConfigDict(storage=storage_url, external_name=f"Photo_{tag}")

    class Frame(ExternalBaseModel):
        width: int = 1
        model_config = ExternalConfigDict(storage=storage_url, external_name=f"Frame_{tag}")

    class Album(ExternalBaseModel):
        cover: Media | None = None
        back: Media | None = None
        framed: Frame | Media | None = None
        pages: list[Media] = []
        captions: dict[str, Media | None] = {}
        inner: _Inner = _Inner()
        anything: Any = None
        model_config = ExternalConfigDict(storage=storage_url, external_name=f"Album_{tag}")

    photo = Photo(px=2)
    in_any = ("Photo inside a value of type Any",)
    in_back = ("in field 'back' (declared as ", "Media | None), where ")
    for album, field, says in (
        (Album(anything=photo), "anything", in_any),
        (Album(anything=[1, photo]), "anything", in_any),
        (Album(anything={"private": photo}), "anything", in_any),
        (Album(inner=_Inner(anything=photo)), "inner", in_any),
        (Album(back=photo), "back", in_back),
        (Album(pages=[photo]), "pages.0", ("in field 'pages' (declared as list[", "]) at pages.0")),
        (Album(captions={"private": photo}), "captions.<key>", (" at captions.<key>, where",)),
        (Album(anything=photo, back=photo), "back", in_back),
        (Album(framed=photo), "framed", ("field 'framed' (declared as ", "Media | None), where")),
    ):
        with pytest.raises(StorageValidationError) as refused:
            album.model_dump()
        message = str(refused.value)
        assert refused.value.field == field, message
        assert all(part in message for part in says), message
        assert "nothing was written" in message
        assert "'cover'" not in message
        assert "private" not in message
    assert [pydantic_toast.count(cls) for cls in (Album, Photo, Frame)] == [0, 0, 0]


def test_two_writers_of_the_same_data_in_the_same_microsecond_conflict(
    storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers read revision 1 and write the same data with the same updated_at (two
    processes incrementing a counter, or a frozen clock): the second gets ConcurrencyError,
    never a success that lost the first's increment (Redis took it for its own write)."""
    import pydantic_toast._saving as saving

    order_cls, _ = models(storage_url)
    reference = order_cls(product="counter", quantity=0).model_dump()
    first, second = order_cls.model_validate(reference), order_cls.model_validate(reference)
    first.quantity += 1  # type: ignore[attr-defined]
    second.quantity += 1  # type: ignore[attr-defined]
    instant = datetime(2026, 12, 4, 9, 0, 0, 123456, tzinfo=UTC)

    class Frozen(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Frozen:  # type: ignore[override]
            return cast("Frozen", instant)

    monkeypatch.setattr(saving, "datetime", Frozen)
    first.model_dump()
    with pytest.raises(ConcurrencyError) as info:
        second.model_dump()
    assert (info.value.expected, info.value.current) == (1, 2)
    monkeypatch.undo()
    stored = order_cls.model_validate(reference)
    assert (stored.quantity, stored.external_revision) == (1, 2)  # type: ignore[attr-defined]


def test_big_and_wide_models(storage_url: str) -> None:
    """A 100-field model and a ~100 KB payload round-trip."""
    namespace: dict[str, object] = {f"f{i}": i for i in range(100)}
    namespace["__annotations__"] = {f"f{i}": int for i in range(100)} | {"blob": str}
    namespace["blob"] = "x" * 100_000
    namespace["model_config"] = ExternalConfigDict(storage=storage_url)
    wide = type("Wide", (ExternalBaseModel,), namespace)
    item = wide(f3=333)
    loaded = wide.model_validate(item.model_dump())
    assert loaded == item
    assert loaded.f3 == 333  # type: ignore[attr-defined]


async def test_records_of_several_megabytes_round_trip_and_check_revisions(
    storage_url: str,
) -> None:
    """A 3 MB record (written in pieces where the backend does) comes back exactly, a stale
    writer is refused, and a batch mixes large and small records."""
    # Multi-byte characters put piece boundaries inside UTF-8 sequences; a float in exponent
    # form and -0.0 are numbers PostgreSQL's jsonb would rewrite (their exact text is kept).
    body = "".join(f'ligne {i} ∑ €{i % 97}é\\ "quoted"\n' for i in range(100_000))
    assert len(body.encode()) > 3_000_000
    namespace: dict[str, object] = {
        "__annotations__": {"body": str, "extra": dict[str, float]},
        "model_config": ExternalConfigDict(storage=storage_url),
    }
    large = type("Large", (ExternalBaseModel,), namespace)
    item = large(body=body, extra={"big": 1e16, "negative_zero": -0.0})
    reference = await item.asave()
    loaded = await large.aload(reference)
    assert loaded == item
    assert math.copysign(1.0, loaded.extra["negative_zero"]) == -1.0  # type: ignore[attr-defined]
    stale = await large.aload(reference)
    item.body = body[::-1]  # type: ignore[attr-defined]
    await item.asave()
    assert (await large.aload(reference)).body == body[::-1]  # type: ignore[attr-defined]
    stale.body = "lost"  # type: ignore[attr-defined]
    with pytest.raises(pydantic_toast.ConcurrencyError):
        await stale.asave()
    assert (await large.aload(reference)).body == body[::-1]  # type: ignore[attr-defined]
    small, other = large(body="small", extra={}), large(body=body[:2_000_000] + "!", extra={})
    references = await pydantic_toast.adump([small, other])
    assert [await large.aload(r) for r in references] == [small, other]


def test_delete_reports_missing_records(storage_url: str) -> None:
    """delete removes a record; deleting it again raises RecordNotFoundError."""
    order_cls, _ = models(storage_url)
    reference = order_cls(product="gone", quantity=1).model_dump()
    pydantic_toast.delete(order_cls, reference)
    with pytest.raises(RecordNotFoundError):
        order_cls.model_validate(reference)
    with pytest.raises(RecordNotFoundError):
        pydantic_toast.delete(order_cls, reference["id"])


@pytest.mark.usefixtures("blocking_calls_allowed")
async def test_pages_are_newest_first_stable_and_counted(storage_url: str) -> None:
    """Keyset pages list newest first; new records do not shift later pages; count agrees."""
    order_cls, basket_cls = models(storage_url)
    created = []
    for i in range(7):
        order = order_cls(product=f"p{i}", quantity=i)
        await order.asave()
        created.append(order)
    await basket_cls(orders=[]).asave()  # another class on the same storage is not counted
    assert await pydantic_toast.acount(order_cls) == 7
    first = await pydantic_toast.apage(order_cls, limit=3)
    assert [o.quantity for o in first.items] == [6, 5, 4]  # type: ignore[attr-defined]
    await order_cls(product="newer", quantity=99).asave()
    second = await pydantic_toast.apage(order_cls, limit=3, after=first.next_after)
    assert [o.quantity for o in second.items] == [3, 2, 1]  # type: ignore[attr-defined]
    third = await pydantic_toast.apage(order_cls, limit=3, after=second.next_after)
    assert [o.quantity for o in third.items] == [0]  # type: ignore[attr-defined]
    assert third.next_after is None
    await pydantic_toast.adelete(order_cls, created[0].external_id)  # type: ignore[arg-type]
    assert await pydantic_toast.acount(order_cls) == 7
    everything = pydantic_toast.page(order_cls, limit=100)
    assert everything.items[0].quantity == 99  # type: ignore[attr-defined]
    assert len(everything.items) == pydantic_toast.count(order_cls) == 7
