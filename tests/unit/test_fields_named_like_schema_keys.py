"""Fields named like a core schema's keys ("type", "serialization") are fields like any other."""

# No `from __future__ import annotations`: the test defines its classes in functions.
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel, FutureDatetime
from typing_extensions import TypedDict

from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageValidationError
from pydantic_toast._schema_walk import schema_nodes


def test_a_field_named_type_saves_and_loads(memory_url: str) -> None:
    """A model, a nested model or a TypedDict with a field named "type" saved with a
    TypeError (its fields mapping was taken for a schema node); now it round-trips."""

    class Kind(TypedDict):
        type: str

    class Inner(BaseModel):
        type: str

    class Event(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=memory_url)
        type: str
        kind: Kind
        inner: Inner
        at: datetime

    event = Event(type="a", kind={"type": "b"}, inner=Inner(type="c"), at=datetime(2024, 1, 1))
    reference = event.model_dump()
    assert Event.model_validate(reference).model_dump(mode="json") == event.model_dump(mode="json")


def test_a_field_named_like_a_schema_key_keeps_its_checks(memory_url: str) -> None:
    """An Any field named "serialization" or "type" is checked as any other: a tuple in it
    is refused before anything is written."""

    class Odd(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=memory_url)
        serialization: dict[str, Any]
        type: Any = None

    for given in ({"serialization": {"a": (1,)}}, {"serialization": {}, "type": (1,)}):
        with pytest.raises(StorageValidationError, match="tuple inside a value of type Any"):
            Odd(**given).model_dump()


def test_the_walk_passes_through_a_fields_mapping() -> None:
    """The mapping of field names to fields is not yielded as a node: every node's type is a
    str or absent."""

    class Named(BaseModel):
        type: int
        schema_: str

    nodes = list(schema_nodes(Named.__pydantic_core_schema__))
    assert all(isinstance(node.get("type", ""), str) for node in nodes)
    assert sum(node.get("type") == "model-field" for node in nodes) == 2


def test_a_field_named_like_a_time_constraint_key_loads(memory_url: str) -> None:
    """A field named "now_op" beside a FutureDatetime was left out of the load schema (time
    constraints are dropped for loads), so it loaded silently missing; now it comes back."""

    class Due(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=memory_url)
        now_op: str
        due: FutureDatetime

    due = Due(now_op="x", due=datetime.now(UTC) + timedelta(days=1))
    assert Due.model_validate(due.model_dump()).now_op == "x"
