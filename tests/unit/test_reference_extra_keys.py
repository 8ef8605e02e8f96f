"""A reference with keys added is refused as a bad reference, never validated as the model's data.

Validated as data, ``{"class_name", "id", "signature"}`` (or any other key added) made a blank
new record of the defaults, saved at the next dump, where the caller meant the referenced one.
"""

from __future__ import annotations

import json
import secrets
from typing import Annotated, Any, Literal
from uuid import uuid4

import pytest
from pydantic import BaseModel, Discriminator, Field, Tag, TypeAdapter, ValidationError

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    ExternalReference,
    InvalidReferenceError,
    SigningKeys,
    sign_reference,
    verify_reference,
)


class Models:
    """A model with defaults (so that any mapping validates as its data), and its holders."""

    def __init__(self, url: str) -> None:
        class Pref(ExternalBaseModel):
            theme: str = "light"
            model_config = ExternalConfigDict(storage=url)

        class Other(ExternalBaseModel):
            size: int = 0
            model_config = ExternalConfigDict(storage=url)

        class Holder(ExternalBaseModel):
            pref: Pref
            prefs: list[Pref] = []
            either: Other | Pref | None = None
            model_config = ExternalConfigDict(storage=url)

        class Loose(ExternalBaseModel):
            a: int = 0
            model_config = ExternalConfigDict(storage=url, extra="allow")

        self.Pref, self.Other, self.Holder, self.Loose = Pref, Other, Holder, Loose


@pytest.fixture
def models(memory_url: str) -> Models:
    return Models(memory_url)


@pytest.fixture
def reference(models: Models) -> ExternalReference:
    return pydantic_toast.dump(models.Pref(theme="dark"))


def refused(call: Any, *args: Any) -> str:
    with pytest.raises(InvalidReferenceError) as raised:
        call(*args)
    assert raised.value.class_name == "Pref"
    return str(raised.value)


def test_a_reference_with_a_key_added_is_refused_naming_the_key(
    models: Models, reference: ExternalReference
) -> None:
    """model_validate() refuses it naming the key (never its value) and the fix; nothing is
    written."""
    message = refused(models.Pref.model_validate, {**reference, "theme": "secret-value"})
    assert "unexpected keys 'theme'" in message
    assert "exactly as it was issued" in message
    assert "secret-value" not in message
    assert pydantic_toast.count(models.Pref) == 1


def test_a_signed_reference_is_refused_pointing_at_verify_reference(
    models: Models, reference: ExternalReference
) -> None:
    """An unverified signed reference is refused with the call that checks it, not taken for
    data (it was Pref(theme='light'), a new record at its next dump)."""
    signed = sign_reference(reference, SigningKeys(secrets.token_bytes(32)))
    message = refused(models.Pref.model_validate, dict(signed))
    assert "verify_reference(value, keys)" in message
    assert signed["signature"] not in message


@pytest.mark.parametrize(
    "added",
    [
        {"type": "pref"},
        {"signature": "abc", "v": 1},
        {"theme": "dark", "expires_at": None},
    ],
)
def test_every_entry_point_refuses_a_reference_with_keys_added(
    models: Models, reference: ExternalReference, added: dict[str, Any]
) -> None:
    """Top level, nested, in lists and unions, through TypeAdapter, validate() and JSON."""
    bad = {**reference, **added}
    good = dict(reference)
    calls: list[tuple[Any, Any]] = [
        (models.Pref.model_validate, bad),
        (models.Pref.model_validate_json, json.dumps(bad)),
        (models.Holder.model_validate, {"pref": bad}),
        (models.Holder.model_validate, {"pref": good, "prefs": [good, bad]}),
        (models.Holder.model_validate, {"pref": good, "either": bad}),
        (TypeAdapter(list[models.Pref]).validate_python, [good, bad]),  # type: ignore[name-defined]
        (TypeAdapter(dict[str, models.Pref]).validate_python, {"a": bad}),  # type: ignore[name-defined]
        (lambda value: pydantic_toast.validate(list[models.Pref], value), [good, bad]),  # type: ignore[name-defined]
        (lambda value: pydantic_toast.validate(models.Holder, value), {"pref": bad}),
    ]
    for call, value in calls:
        message = refused(call, value)
        assert "Pref reference" in message
    assert pydantic_toast.count(models.Pref) == 1
    assert pydantic_toast.count(models.Holder) == 0


async def test_avalidate_refuses_a_reference_with_keys_added(
    models: Models, reference: ExternalReference
) -> None:
    """The async tree validation refuses it the same way."""
    with pytest.raises(InvalidReferenceError, match="unexpected keys 'extra'"):
        await pydantic_toast.avalidate(list[models.Pref], [reference, {**reference, "extra": 1}])  # type: ignore[name-defined]


def test_the_exact_reference_still_loads_everywhere(
    models: Models, reference: ExternalReference
) -> None:
    """The two-key reference (the success path) is unchanged, and data without class_name is
    still data."""
    assert models.Pref.model_validate(dict(reference)).theme == "dark"
    holder = models.Holder.model_validate({"pref": reference, "either": dict(reference)})
    assert holder.pref.theme == "dark"
    assert isinstance(holder.either, models.Pref)
    assert models.Pref.model_validate({"theme": "blue"}).theme == "blue"
    assert models.Pref.model_validate({"id": reference["id"], "theme": "blue"}).theme == "blue"


def test_many_or_long_key_names_are_shortened(models: Models, reference: ExternalReference) -> None:
    """At most five key names are quoted, each cut short (a client chooses them)."""
    added = {f"k{index}": index for index in range(8)} | {"x" * 500: 1}
    message = refused(models.Pref.model_validate, {**reference, **added})
    assert "'k0', 'k1', 'k2', 'k3', 'k4' and 4 more" in message
    assert "x" * 100 not in message


def test_an_extra_allow_model_refuses_such_data_but_reads_what_it_stored(
    models: Models,
) -> None:
    """Under extra='allow' too, new input with both keys is refused; records already stored
    with such extra keys (set as attributes) still load (stored data never goes through this
    check)."""
    with pytest.raises(InvalidReferenceError, match="unexpected keys 'a'"):
        models.Loose.model_validate({"a": 1, "class_name": "Pref", "id": str(uuid4())})
    loose = models.Loose(a=1)
    loose.class_name = "Pref"
    loose.id = str(uuid4())
    loaded = models.Loose.model_validate(pydantic_toast.dump(loose))
    assert loaded.__pydantic_extra__ == {"class_name": "Pref", "id": loose.id}


def test_verify_reference_names_the_keys_added(reference: ExternalReference) -> None:
    """verify_reference() says which keys are unexpected instead of calling it unsigned."""
    keys = SigningKeys(secrets.token_bytes(32))
    signed = sign_reference(reference, keys)
    with pytest.raises(InvalidReferenceError, match="unexpected keys 'v'") as raised:
        verify_reference({**signed, "v": "secret-value"}, keys)
    assert "secret-value" not in str(raised.value)
    assert verify_reference(dict(signed), keys) == reference


class PlainHolder(BaseModel):
    """A plain model's dict field: a mapping with both keys nested in data stays data."""

    extra: dict[str, Any]


def test_a_mapping_with_both_keys_inside_data_is_still_data(memory_url: str) -> None:
    """Only where a model's own validation starts is such a mapping refused: in a dict field,
    or a plain model, it is data as before."""

    class Box(ExternalBaseModel):
        plain: PlainHolder
        free: dict[str, Any]
        model_config = ExternalConfigDict(storage=memory_url)

    value = {"class_name": "Pref", "id": "not-a-uuid", "theme": "x"}
    box = Box(plain=PlainHolder(extra=value), free=value)
    assert Box.model_validate(pydantic_toast.dump(box)) == box


def test_a_discriminated_union_refuses_a_reference_with_keys_added(memory_url: str) -> None:
    """With the tag added, the union routes it to its member, which refuses it (it made a new
    record); without the tag, the member its class names refuses it the same way (it was
    Pydantic's missing tag), and a callable discriminator's too."""

    class Tea(ExternalBaseModel):
        kind: Literal["tea"] = "tea"
        model_config = ExternalConfigDict(storage=memory_url)

    class Cake(ExternalBaseModel):
        kind: Literal["cake"] = "cake"
        model_config = ExternalConfigDict(storage=memory_url)

    class Order(BaseModel):
        item: Annotated[Tea | Cake, Field(discriminator="kind")]

    reference = pydantic_toast.dump(Tea())
    assert isinstance(Order.model_validate({"item": reference}).item, Tea)
    with pytest.raises(InvalidReferenceError, match="unexpected keys 'kind'"):
        Order.model_validate({"item": {**reference, "kind": "tea"}})
    with pytest.raises(InvalidReferenceError, match="the Tea reference has unexpected keys 'v'"):
        Order.model_validate({"item": {**reference, "v": 1}})
    signed = {**reference, "signature": "a" * 43}
    with pytest.raises(InvalidReferenceError, match="verify_reference"):
        Order.model_validate({"item": signed})
    tagged = TypeAdapter(
        Annotated[
            Annotated[Cake, Tag("c")] | Annotated[Tea, Tag("t")],
            Discriminator(lambda value: value.get("kind", "")[:1]),
        ]
    )
    with pytest.raises(InvalidReferenceError, match="the Tea reference has unexpected keys 'v'"):
        tagged.validate_python({**reference, "v": 1})
    with pytest.raises(InvalidReferenceError, match="the Zed reference has unexpected keys"):
        Order.model_validate({"item": {**reference, "class_name": "Zed", "v": 1}})
    with pytest.raises(ValidationError, match="none of this union's external models"):
        Order.model_validate({"item": {**signed, "class_name": "Zed"}})
    assert pydantic_toast.count(Tea) == 1
    assert pydantic_toast.count(Cake) == 0
