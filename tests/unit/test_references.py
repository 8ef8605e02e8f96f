"""One reference shape: every public function that returns a reference returns the same dict."""

from __future__ import annotations

import asyncio
import copy
import json
import pickle
from uuid import UUID, uuid4

import pytest

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    ExternalReference,
    InvalidReferenceError,
    StorageValidationError,
)


def make_model(url: str) -> type[ExternalBaseModel]:
    class Ticket(ExternalBaseModel):
        title: str
        model_config = ExternalConfigDict(storage=url)

    return Ticket


def check_reference(reference: object, class_name: str) -> None:
    assert type(reference) is ExternalReference
    assert isinstance(reference, dict)
    plain = {"class_name": class_name, "id": reference["id"]}
    assert reference == plain
    assert plain == reference
    assert dict(reference) == plain
    assert type(dict(reference)) is dict
    assert list(reference) == ["class_name", "id"]
    assert json.loads(json.dumps(reference)) == plain
    assert reference.class_name == class_name
    assert isinstance(reference.uuid, UUID)
    assert str(reference.uuid) == reference["id"]


@pytest.mark.usefixtures("blocking_calls_allowed")
async def test_asave_returns_what_model_dump_returns(memory_url: str) -> None:
    """asave(), model_dump(), dump() and adump() all return the same ExternalReference dict."""
    ticket = make_model(memory_url)(title="t")
    saved = await ticket.asave()
    check_reference(saved, "Ticket")
    for reference in (
        ticket.model_dump(),
        ticket.model_dump(mode="json"),
        pydantic_toast.dump(ticket),
        await pydantic_toast.adump(ticket, mode="json"),
    ):
        check_reference(reference, "Ticket")
        assert reference == saved
    assert json.loads(ticket.model_dump_json()) == saved


@pytest.mark.usefixtures("blocking_calls_allowed")
async def test_reference_feeds_every_loading_function(memory_url: str) -> None:
    """The returned reference, its id string and its UUID load the model back."""
    model = make_model(memory_url)
    ticket = model(title="t")
    reference = await ticket.asave()
    assert await model.aload(reference) == ticket
    assert await model.aload(reference["id"]) == ticket
    assert await model.aload(reference.uuid) == ticket
    assert model.model_validate(reference) == ticket
    assert model.model_validate(dict(reference)) == ticket
    assert model.model_validate_json(json.dumps(reference)) == ticket


def test_reference_construction_normalises_and_checks_the_id() -> None:
    """ExternalReference takes a UUID or its string (any case); a non-UUID string is refused."""
    id = uuid4()
    assert ExternalReference("Ticket", id) == {"class_name": "Ticket", "id": str(id)}
    assert ExternalReference("Ticket", str(id).upper())["id"] == str(id)
    with pytest.raises(StorageValidationError, match="not a UUID"):
        ExternalReference("Ticket", "not-a-uuid")


def test_reference_copies_pickles_and_has_a_helpful_repr() -> None:
    """copy, deepcopy and pickle keep the type and the keys; repr names the type."""
    reference = ExternalReference("Ticket", uuid4())
    for other in (
        copy.copy(reference),
        copy.deepcopy(reference),
        pickle.loads(pickle.dumps(reference)),
    ):
        assert type(other) is ExternalReference
        assert other == reference
        assert other.uuid == reference.uuid
    assert repr(reference) == f"ExternalReference({dict(reference)!r})"


def test_reference_has_no_ambiguous_id_attribute() -> None:
    """ref["id"] is the string and ref.uuid the UUID; there is no third spelling."""
    reference = ExternalReference("Ticket", uuid4())
    with pytest.raises(AttributeError):
        reference.id  # type: ignore[attr-defined]  # noqa: B018


def test_a_malformed_reference_is_still_a_storage_validation_error(memory_url: str) -> None:
    """A reference-shaped dict whose id is not a UUID raises StorageValidationError."""
    model = make_model(memory_url)
    with pytest.raises(StorageValidationError, match="is not a UUID"):
        model.model_validate({"class_name": "Ticket", "id": "nope"})


async def test_a_bad_reference_error_names_the_call_made(memory_url: str) -> None:
    """delete(), adelete() and aload() each name themselves when given no reference at all
    (delete() used to say "Ticket.aload() takes a reference", a function not called)."""
    model = make_model(memory_url)
    calls = {
        r"pydantic_toast\.adelete\(\)": lambda bad: pydantic_toast.adelete(model, bad),
        r"\S*Ticket\.aload\(\)": model.aload,
    }
    for bad, kind in [(None, ", not None"), (12, ", not int"), ({"class_name": "Ticket"}, "")]:
        for call, function in calls.items():
            with pytest.raises(
                InvalidReferenceError, match=rf"^{call} takes a reference .*saved instance{kind}$"
            ):
                await function(bad)
        with pytest.raises(InvalidReferenceError, match=r"^pydantic_toast\.delete\(\) takes"):
            await asyncio.to_thread(pydantic_toast.delete, model, bad)


async def test_a_saved_instance_stands_for_its_reference(memory_url: str) -> None:
    """aload(), adelete() and delete() take a saved instance itself, as code holding a loaded
    model writes it (external_id is typed UUID | None, so passing it failed mypy --strict)."""
    model = make_model(memory_url)
    ticket = model(title="t")
    await ticket.asave()
    assert await model.aload(ticket) == ticket
    await pydantic_toast.adelete(model, ticket)
    assert await pydantic_toast.acount(model) == 0
    other = model(title="u")
    await other.asave()
    await asyncio.to_thread(pydantic_toast.delete, model, other)
    assert await pydantic_toast.acount(model) == 0


async def test_an_unsaved_instance_is_refused_naming_the_fix(memory_url: str) -> None:
    """An instance never dumped names no record: the error says so and what to do."""
    model = make_model(memory_url)
    with pytest.raises(
        InvalidReferenceError,
        match=r"^pydantic_toast\.adelete\(\) was given a \S*Ticket that was never saved.*save it",
    ):
        await pydantic_toast.adelete(model, model(title="t"))
    with pytest.raises(InvalidReferenceError, match=r"Ticket\.aload\(\) was given a \S*Ticket"):
        await model.aload(model(title="t"))


async def test_a_saved_reference_whose_id_was_replaced_loads_the_new_id(memory_url: str) -> None:
    """A reference keeps the id it was made with only for its own text: once ``ref["id"]`` is
    replaced (by another object, even an equal one), the new text is what loads."""
    model = make_model(memory_url)
    first = await model(title="first").asave()
    second = await model(title="second").asave()
    first["id"] = second["id"]
    assert (await model.aload(first)).title == "second"  # type: ignore[attr-defined]
    again = await model(title="again").asave()
    again["id"] = again["id"].upper().lower()  # the same text, another str object
    assert (await model.aload(again)).title == "again"  # type: ignore[attr-defined]
    gone = await model(title="gone").asave()
    gone["id"] = str(uuid4())
    with pytest.raises(pydantic_toast.RecordNotFoundError):
        await model.aload(gone)


async def test_copied_pickled_and_rebuilt_references_load_their_record(memory_url: str) -> None:
    """Copies, pickles and a reference rebuilt without ``__init__`` load the same record, and
    compare and serialize as the plain dict they are."""
    model = make_model(memory_url)
    reference = await model(title="kept").asave()
    rebuilt = ExternalReference.__new__(ExternalReference)
    dict.update(rebuilt, reference)
    made = ExternalReference(reference["class_name"], UUID(reference["id"]))
    for other in (
        copy.copy(reference),
        copy.deepcopy(reference),
        pickle.loads(pickle.dumps(reference)),
        rebuilt,
        made,
    ):
        check_reference(other, reference["class_name"])
        assert other == reference
        assert (await model.aload(other)).title == "kept"  # type: ignore[attr-defined]


async def test_a_loaded_instance_dumps_its_id_as_str_spells_it(memory_url: str) -> None:
    """Loaded by a library reference, a plain dict or an upper-case id, an unchanged instance
    dumps the canonical id text, the same as the save returned."""
    model = make_model(memory_url)
    reference = await model(title="t").asave()
    upper = {"class_name": reference["class_name"], "id": reference["id"].upper()}
    for asked in (reference, dict(reference), upper, reference["id"].upper()):
        loaded = await model.aload(asked)  # type: ignore[arg-type]
        assert await loaded.asave() == reference
        assert loaded.model_dump()["id"] == reference["id"]
