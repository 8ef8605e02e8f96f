"""The walk over core schema nodes: each node once, definitions followed on request, pruning."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import BaseModel, Tag, TypeAdapter

from pydantic_toast._schema_walk import schema_nodes


def ref(name: str) -> dict[str, Any]:
    return {"type": "definition-ref", "schema_ref": name}


def types(nodes: Iterable[dict[str, Any]]) -> list[str]:
    """The sorted ``type`` of the nodes that have one (metadata dicts have none)."""
    return sorted(node["type"] for node in nodes if "type" in node)


class Tree(BaseModel):
    label: str
    children: list[Tree] = []


def test_cycle_through_definitions_ends() -> None:
    """Two definitions that refer to each other are walked once each."""
    a: dict[str, Any] = {
        "type": "model",
        "ref": "a",
        "schema": {"type": "list", "items_schema": ref("b")},
    }
    b: dict[str, Any] = {"type": "model", "ref": "b", "schema": ref("a")}
    definitions = {"a": a, "b": b}

    nodes = list(schema_nodes(ref("a"), definitions=definitions))

    assert sum(node is a for node in nodes) == 1
    assert sum(node is b for node in nodes) == 1
    assert types(nodes) == ["definition-ref"] * 3 + ["list", "model", "model"]


def test_recursive_model_schema_ends() -> None:
    """A recursive model's own core schema, followed through its definitions, ends."""
    schema = Tree.__pydantic_core_schema__
    holders = [node for node in schema_nodes(schema) if node.get("type") == "definitions"]
    definitions = {d["ref"]: d for holder in holders for d in holder["definitions"]}
    assert definitions  # the field refers back to the model's own definition

    models = [
        node for node in schema_nodes(schema, definitions=definitions) if node.get("cls") is Tree
    ]

    assert len(models) == 1


def test_dict_that_holds_itself_ends() -> None:
    """A dict reachable from itself is yielded once."""
    node: dict[str, Any] = {"type": "any"}
    node["metadata"] = {"loop": [node]}

    assert [n["type"] for n in schema_nodes(node) if "type" in n] == ["any"]


def test_shared_node_yielded_once() -> None:
    """A dict held in two places is yielded the first time only."""
    shared = {"type": "int"}
    schema = {"type": "tuple", "items_schema": [shared, shared, {"type": "str"}]}

    assert types(schema_nodes(schema)) == ["int", "str", "tuple"]


def test_definition_refs_left_without_definitions() -> None:
    """Without definitions a definition-ref is a node like any other, and its target unseen."""
    schema = {"type": "list", "items_schema": ref("target")}

    assert types(schema_nodes(schema)) == ["definition-ref", "list"]


def test_definition_refs_followed_with_definitions() -> None:
    """With definitions, the named definition is walked; an unknown name leads nowhere."""
    target = {"type": "model", "ref": "target", "schema": {"type": "str"}}
    schema = {"type": "list", "items_schema": [ref("target"), ref("missing")]}

    nodes = list(schema_nodes(schema, definitions={"target": target}))

    assert any(node is target for node in nodes)
    assert types(nodes) == ["definition-ref", "definition-ref", "list", "model", "str"]


def test_definition_ref_keeps_its_own_values() -> None:
    """A followed definition-ref's serialization schema is walked as well as its target."""
    node = ref("target")
    node["serialization"] = {"type": "function-plain", "return_schema": {"type": "any"}}

    walked = types(schema_nodes(node, definitions={"target": {"type": "int"}}))

    assert walked == ["any", "definition-ref", "function-plain", "int"]


def test_descend_prunes_below_a_node() -> None:
    """A node whose descend answer is False is yielded, but nothing below it is."""
    schema = {
        "type": "tuple",
        "items_schema": [
            {"type": "model", "schema": {"type": "int"}},
            {"type": "list", "items_schema": {"type": "str"}},
        ],
    }

    walked = types(schema_nodes(schema, descend=lambda node: node["type"] != "model"))

    assert walked == ["list", "model", "str", "tuple"]


def test_pruned_definition_ref_is_not_followed() -> None:
    """Pruning a definition-ref leaves its definition unwalked."""
    walked = schema_nodes(
        {"type": "list", "items_schema": ref("target")},
        definitions={"target": {"type": "int"}},
        descend=lambda node: node["type"] != "definition-ref",
    )

    assert types(walked) == ["definition-ref", "list"]


def test_labelled_union_choices_walked() -> None:
    """A union's ``(schema, label)`` choices, tuples, are walked as lists are."""
    schema = TypeAdapter(Annotated[int, Tag("number")] | Annotated[str, Tag("text")]).core_schema
    assert isinstance(schema["choices"][0], tuple)  # type: ignore[typeddict-item]

    assert types(schema_nodes(schema)) == ["int", "str", "union"]


def test_walk_is_lazy() -> None:
    """Taking the first node visits nothing below it."""
    asked: list[dict[str, Any]] = []
    schema = {"type": "list", "items_schema": {"type": "int"}}

    first = next(schema_nodes(schema, descend=lambda node: asked.append(node) is None))

    assert first is schema
    assert asked == []
