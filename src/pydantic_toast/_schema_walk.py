"""The one walk over a Pydantic core schema's nodes, for the checks made when a class is defined."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["external_models", "schema_nodes"]


def schema_nodes(
    schema: object,
    *,
    definitions: Mapping[str, object] | None = None,
    descend: Callable[[dict[str, Any]], bool] | None = None,
) -> Iterator[dict[str, Any]]:
    """Every node (dict) of core ``schema``, each once, depth first.

    A node's children are the dicts among its values and inside its lists and tuples, to any
    depth: ``schema``, ``items_schema``, ``choices`` (a labelled choice is a ``(schema,
    label)`` tuple), ``fields`` (a model's or TypedDict's mapping of field names is passed
    through, not yielded: a field may be named ``type``), ``definitions``, but also
    ``metadata``, ``serialization`` and default values, which may hold dicts that are not
    schemas. Stop early by leaving the loop: nothing past the last node taken is visited.

    Args:
        schema: A core schema, or a list of them.
        definitions: Where given, the definition a ``definition-ref`` node names (its
            ``schema_ref``) is one more child of that node, walked after its own values; a
            name missing from it leads nowhere. Without, a ``definition-ref`` is a node like
            any other, and the definitions are reached only where ``schema`` holds them.
        descend: Asked with each node after it is yielded; its children are walked only
            where it returns ``True``. Without, every node's are.

    Yields:
        The nodes, by identity: a dict reached twice (shared, or through a definition's
        cycle) is yielded the first time only, so the walk always ends.
    """
    seen: set[int] = set()
    stack: list[object] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if id(node) in seen:
                continue
            seen.add(id(node))
            yield node
            if descend is not None and not descend(node):
                continue
            if definitions is not None and node.get("type") == "definition-ref":
                name = node.get("schema_ref")
                target = definitions.get(name) if isinstance(name, str) else None
                if target is not None:
                    stack.append(target)
            kind = node.get("type")
            fields = node.get("fields")
            if (kind == "model-fields" or kind == "typed-dict") and isinstance(fields, dict):
                # Field names are its keys (a field may be named "type"): not a node itself.
                children = [*node.values(), *fields.values()]
                children.remove(fields)
            else:
                children = list(node.values())
            stack.extend([value for value in children if isinstance(value, _BRANCHES)])
        elif isinstance(node, _SEQUENCES):
            stack.extend(node)


# Tuples of types, built once: ``isinstance`` takes them faster than a ``list | tuple`` union.
_SEQUENCES = (list, tuple)
_BRANCHES = (dict, list, tuple)


def external_models(schema: object) -> list[Any]:
    """The external model classes (``ExternalBaseModel`` subclasses, abstract ones too) whose
    ``model`` nodes core ``schema`` holds, each once, in walk order."""
    found: dict[int, Any] = {}
    for node in schema_nodes(schema):
        model = node.get("cls") if node.get("type") == "model" else None
        if hasattr(model, "__toast_settings__"):
            found.setdefault(id(model), model)
    return list(found.values())
