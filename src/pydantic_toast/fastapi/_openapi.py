"""OpenAPI for client generators: the two shapes an external model accepts, as named schemas.

Pydantic documents an external model in a request as ``anyOf: [<its data>, <its reference>]``,
both inline; a generator then names them ``OrderInput1`` and ``OrderInput2``. Here each becomes
a component of its own, ``OrderData`` (the name ``Expanded[Order]`` uses for the same data) and
``OrderReference``, and the union refers to them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["name_reference_shapes"]

_REF = "#/components/schemas/"


def name_reference_shapes(openapi: dict[str, Any]) -> dict[str, Any]:
    """Give the inline data and reference shapes of external models names, in place."""
    schemas: dict[str, Any] = openapi.setdefault("components", {}).setdefault("schemas", {})
    for name in list(schemas):
        _name_shapes(schemas, schemas[name])
    for path_item in openapi.get("paths", {}).values():
        _name_shapes(schemas, path_item)
    return openapi


def _name_shapes(schemas: dict[str, Any], node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _name_shapes(schemas, item)
        return
    if not isinstance(node, dict):
        return
    union = node.get("anyOf")
    if isinstance(union, list) and len(union) == 2:
        class_name = _reference_class(union[1])
        if class_name is not None and isinstance(union[0], dict) and "$ref" not in union[0]:
            node["anyOf"] = [
                _component(schemas, f"{class_name}Data", union[0]),
                _component(schemas, f"{class_name}Reference", union[1]),
            ]
    for value in node.values():
        if isinstance(value, dict | list):
            _name_shapes(schemas, value)


def _reference_class(schema: Any) -> str | None:
    """The class name when ``schema`` is a reference's JSON schema (signed or not)."""
    if not isinstance(schema, dict) or schema.get("additionalProperties") is not False:
        return None
    properties = schema.get("properties")
    if not isinstance(properties, dict) or set(schema.get("required", ())) < {"class_name", "id"}:
        return None
    const = (properties.get("class_name") or {}).get("const")
    return const if isinstance(const, str) and const.isidentifier() else None


def _component(schemas: dict[str, Any], name: str, schema: dict[str, Any]) -> dict[str, str]:
    """A ``$ref`` to ``schema`` as the component ``name`` (``name-Input`` if that one differs)."""
    for candidate in (name, f"{name}-Input"):
        existing = schemas.setdefault(candidate, schema)
        if existing == schema:
            return {"$ref": f"{_REF}{candidate}"}
    raise AssertionError(f"two different schemas for {name}-Input")  # pragma: no cover
