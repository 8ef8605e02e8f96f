"""OpenAPI for client generators: an external model's data and reference shapes, named.

Generated inside :func:`~pydantic_toast._boundary.requests_schemas`, a request body documents
what it takes: an external model there is its data only, and a ``Ref``/``AcceptReference``
field is ``anyOf: [<its data>, <its reference>]``. Here the data shapes, which FastAPI names
``Order-Input`` (or ``Order``), become ``OrderData`` (the name ``Expanded[Order]`` uses for the
same data), and every reference shape, inline or FastAPI's ``Order-Output``, becomes
``OrderReference``; so a generator gives ``customer: CustomerData | CustomerReference``.
"""

from __future__ import annotations

from typing import Any

from pydantic_toast._boundary import DATA_KEY

__all__ = ["name_reference_shapes"]

_REF = "#/components/schemas/"


def name_reference_shapes(openapi: dict[str, Any]) -> dict[str, Any]:
    """Name the data and reference shapes of external models, in place."""
    schemas: dict[str, Any] = openapi.setdefault("components", {}).setdefault("schemas", {})
    plan: dict[str, str] = {}
    for name, schema in schemas.items():
        marker = schema.pop(DATA_KEY, None) if isinstance(schema, dict) else None
        if isinstance(marker, list):
            plan[name] = f"{marker[0]}Data"
        elif (class_name := _reference_class(schema)) is not None:
            plan[name] = f"{class_name}Reference"
    plan = _final_names(schemas, {old: new for old, new in plan.items() if old != new})
    named: dict[str, Any] = {}
    for name, schema in schemas.items():
        named.setdefault(plan.get(name, name), _renamed(schema, plan))
    schemas.clear()
    schemas.update(named)
    for name in list(schemas):
        if _reference_class(schemas[name]) is None:
            schemas[name] = _components_of_references(schemas, schemas[name])
    openapi["paths"] = _components_of_references(schemas, _renamed(openapi.get("paths", {}), plan))
    return openapi


def _final_names(schemas: dict[str, Any], plan: dict[str, str]) -> dict[str, str]:
    """``plan`` with a suffix where its name is taken by a different schema.

    Schemas are compared with the planned names in their ``$ref`` s, so that the input data of
    ``Order`` merges with the ``OrderData`` of ``Expanded[Order]`` when they are the same.
    """
    for _ in range(len(plan) + 1):
        taken = {
            name: _renamed(schema, plan) for name, schema in schemas.items() if name not in plan
        }
        changed = False
        for old, new in plan.items():
            body = _renamed(schemas[old], plan)
            base = new.removesuffix("-Input")
            for candidate in (base, f"{base}-Input", f"{base}-2"):
                if taken.setdefault(candidate, body) == body:
                    break
            if candidate != new:
                plan[old], changed = candidate, True
                break
        if not changed:
            return plan
    return plan  # pragma: no cover - each round settles one name


def _renamed(node: Any, plan: dict[str, str]) -> Any:
    """``node`` with its ``$ref`` s (and discriminator mappings) following ``plan``."""
    if isinstance(node, list):
        return [_renamed(item, plan) for item in node]
    if isinstance(node, str) and node.startswith(_REF) and node[len(_REF) :] in plan:
        return f"{_REF}{plan[node[len(_REF) :]]}"
    if not isinstance(node, dict):
        return node
    result = {key: _renamed(value, plan) for key, value in node.items()}
    result.pop(DATA_KEY, None)  # an inline data shape: its name is FastAPI's business
    return result


def _components_of_references(schemas: dict[str, Any], node: Any) -> Any:
    """``node`` with each inline reference shape replaced by its ``XReference`` component."""
    if isinstance(node, list):
        return [_components_of_references(schemas, item) for item in node]
    if not isinstance(node, dict):
        return node
    class_name = _reference_class(node)
    if class_name is not None:
        return {"$ref": f"{_REF}{_place(schemas, f'{class_name}Reference', node)}"}
    return {key: _components_of_references(schemas, value) for key, value in node.items()}


def _reference_class(schema: Any) -> str | None:
    """The class name when ``schema`` is a reference's JSON schema (signed or not)."""
    if not isinstance(schema, dict) or schema.get("additionalProperties") is not False:
        return None
    properties = schema.get("properties")
    if not isinstance(properties, dict) or set(schema.get("required", ())) < {"class_name", "id"}:
        return None
    const = (properties.get("class_name") or {}).get("const")
    return const if isinstance(const, str) and const.isidentifier() else None


def _place(schemas: dict[str, Any], name: str, schema: dict[str, Any]) -> str:
    """The component name ``schema`` gets: ``name``, or ``name-Input`` when that one differs."""
    for candidate in (name, f"{name}-Input", f"{name}-2"):
        existing = schemas.setdefault(candidate, schema)
        if existing == schema:
            return candidate
    raise AssertionError(f"three different schemas for {name}")  # pragma: no cover
