"""Discriminated unions of external models: a reference picks its member by its class name.

A reference ``{"class_name": ..., "id": ...}`` carries no discriminator field, so the tagged
union Pydantic builds for ``Annotated[A | B, Field(discriminator="kind")]`` (or for a callable
``Discriminator``) cannot route it. Pydantic offers no hook on a union's schema, so
:func:`install` wraps the two functions that build tagged unions:
``pydantic._internal._discriminated_union.apply_discriminator`` (field discriminators, looked
up on that module by both of Pydantic's call sites) and ``Discriminator._convert_schema``
(callable discriminators). When the tagged union has external models among its members:

- a field discriminator gets a wrap validator that adds the member's tag to a reference before
  the union looks for it (data still goes through Pydantic's own tag lookup, unchanged); a
  mapping with other keys besides ``class_name`` and ``id`` (a signed reference, or one with
  keys added) and no tag gets its member's tag once the union found none, so that the member
  verifies it, or refuses the keys, as a field of its own type would;
- a callable discriminator is wrapped to answer a reference's tag from its class name first
  (a signed reference's, or one's with keys added, too), so the user's function only ever
  sees data.

Unions without external models are returned untouched. A plain ``A | B`` needs none of this:
a member refuses another class's reference with a "does not match" error and Pydantic tries
the next one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from pydantic import ValidationError, ValidatorFunctionWrapHandler
from pydantic_core import PydanticCustomError
from pydantic_core import core_schema as cs

from pydantic_toast._config import ModelSettings
from pydantic_toast._exceptions import shorten
from pydantic_toast._reference import RoutedAsSent, RoutedReference, parse_reference

__all__ = ["install"]

_WRAPPERS = ("nullable", "missing-sentinel", "definitions")
_SIGNED_KEYS = frozenset(("class_name", "id", "signature", "expires_at"))


Resolve = Callable[[dict[str, Any]], Any]
"""Looks up the schema a ``definition-ref`` points to (``None`` when unknown)."""


def install() -> None:
    """Wrap Pydantic's two places that build tagged unions, once per process."""
    from pydantic import Discriminator
    from pydantic._internal import _discriminated_union

    original_apply = _discriminated_union.apply_discriminator
    if getattr(original_apply, "__toast_wrapped__", False):
        return

    def apply_discriminator(
        schema: cs.CoreSchema,
        discriminator: Any,
        definitions: dict[str, cs.CoreSchema] | None = None,
    ) -> cs.CoreSchema:
        applied = original_apply(schema, discriminator, definitions)
        return route_references(applied, _from_definitions(definitions or {}))

    original_convert = Discriminator._convert_schema

    def convert_schema(
        self: Discriminator,
        original_schema: cs.CoreSchema,
        handler: Any = None,
        definitions: dict[str, cs.CoreSchema] | None = None,
    ) -> cs.TaggedUnionSchema:
        converted = original_convert(self, original_schema, handler, definitions)
        if handler is not None:
            resolve = _from_handler(handler)
        else:
            resolve = _from_definitions(definitions or {})
        return route_references(converted, resolve)  # type: ignore[return-value]

    apply_discriminator.__toast_wrapped__ = True  # type: ignore[attr-defined]
    _discriminated_union.apply_discriminator = apply_discriminator
    Discriminator._convert_schema = convert_schema  # type: ignore[method-assign]


def _from_definitions(definitions: dict[str, cs.CoreSchema]) -> Resolve:
    return lambda ref: definitions.get(ref.get("schema_ref", ""))


def _from_handler(handler: Any) -> Resolve:
    def resolve(ref: dict[str, Any]) -> Any:
        try:
            return handler.resolve_ref_schema(ref)
        except LookupError:
            return None

    return resolve


def route_references(schema: cs.CoreSchema, resolve: Resolve) -> cs.CoreSchema:
    """``schema`` (a possibly wrapped tagged union) made to route references by class name."""
    parent: dict[str, Any] | None = None
    node: dict[str, Any] = schema  # type: ignore[assignment]
    while node.get("type") in _WRAPPERS and isinstance(node.get("schema"), dict):
        parent, node = node, node["schema"]
    if node.get("type") != "tagged-union" or "ref" in node:
        return schema
    members = [
        (tag, model)
        for tag, choice in node["choices"].items()
        if (model := _external_model(choice, resolve)) is not None
    ]
    if not members:
        return schema
    tags = _Tags(members)
    discriminator = node["discriminator"]
    if callable(discriminator):
        if not getattr(discriminator, "__toast_wrapped__", False):
            node["discriminator"] = _by_class_name_first(discriminator, tags)
        return schema
    key = _top_level_key(discriminator)
    if key is None:
        return schema
    routed = cs.no_info_wrap_validator_function(_router(key, tags), node)
    if parent is None:
        return routed
    parent["schema"] = routed
    return schema


class _Tags:
    """Stored class name -> the union's tag for that member, computed at first use.

    A member's stored name is only known once its class is complete, which, for a model whose
    own fields hold the union, is after the union's schema was built.
    """

    __slots__ = ("_by_name", "_members")

    def __init__(self, members: list[tuple[Hashable, type]]) -> None:
        self._members = members
        self._by_name: dict[str, Hashable] | None = None

    def get(self, class_name: str) -> Hashable | None:
        by_name = self._by_name
        if by_name is None:
            by_name = {}
            for tag, model in self._members:
                settings = getattr(model, "__toast_settings__", None)
                if isinstance(settings, ModelSettings):
                    by_name.setdefault(settings.external_name, tag)
            self._by_name = by_name
        return by_name.get(class_name)

    def first(self) -> Hashable:
        """The first member's tag."""
        return self._members[0][0]

    def names(self) -> str:
        self.get("")
        return ", ".join(sorted(self._by_name or ()))


def _external_model(choice: dict[str, Any], resolve: Resolve) -> type | None:
    node: Any = choice
    for _ in range(32):  # wrappers around a member are few; never loop on a cycle
        if not isinstance(node, dict):
            return None
        kind = node.get("type")
        if kind == "model":
            model = node.get("cls")
            has_settings = isinstance(model, type) and hasattr(model, "__toast_settings__")
            return model if has_settings else None
        node = resolve(node) if kind == "definition-ref" else node.get("schema")
    return None


def _top_level_key(discriminator: Any) -> str | None:
    """The dict key the union reads its tag from, when it is one top-level key."""
    if isinstance(discriminator, str):
        return discriminator
    if isinstance(discriminator, list) and discriminator:
        first = discriminator[0]
        if isinstance(first, list):  # several alias paths: the first one
            first = first[0] if len(first) == 1 else None
        elif len(discriminator) != 1:
            first = None
        if isinstance(first, str):
            return first
    return None


def _sent_as_reference(value: Any, key: str) -> bool:
    """Whether ``value`` is a mapping sent as a reference, with keys besides its two, without
    the union's tag ``key``."""
    return isinstance(value, dict) and key not in value and "class_name" in value and "id" in value


def _member_of_sent(value: dict[str, Any], tags: _Tags) -> Hashable:
    """The tag of the member that checks ``value``, a reference with keys besides its two.

    The member its class names, which verifies a signed reference as a field of its own type
    would (or refuses the keys added); for a class none of the members is, the first member,
    which refuses the keys added, as the first member of a plain union does.

    Raises:
        PydanticCustomError: ``value`` is a signed reference (no other key added) to a class
            none of the members is.
    """
    class_name = value["class_name"]
    tag = tags.get(class_name) if isinstance(class_name, str) else None
    if tag is not None:
        return tag
    if isinstance(class_name, str) and value.keys() <= _SIGNED_KEYS:
        raise _unknown_class(class_name, tags)
    return tags.first()


def _unknown_class(class_name: str, tags: _Tags) -> PydanticCustomError:
    return PydanticCustomError(
        "external_reference_class",
        "the reference names class {class_name}, which is none of this union's external "
        "models ({members}); if one of them was renamed from {class_name}, keep the stored "
        "name with ExternalConfigDict(external_name='{class_name}')",
        {"class_name": shorten(class_name), "members": tags.names()},
    )


def _router(key: str, tags: _Tags) -> Callable[[Any, ValidatorFunctionWrapHandler], Any]:
    def route(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if isinstance(value, dict) and len(value) == 2:
            parsed = parse_reference(value)
            if parsed is not None:
                tag = tags.get(parsed[0])
                if tag is None:
                    raise _unknown_class(parsed[0], tags)
                value = RoutedReference(value, key, tag, parsed)
        try:
            return handler(value)
        except ValidationError:
            # No tag: a reference with keys besides its two (signed, or with keys added) is
            # routed to the member that verifies it or refuses the keys. Checked only once
            # the union failed, which costs data that has its tag nothing.
            if not _sent_as_reference(value, key):
                raise
        return handler(RoutedAsSent(value, key, _member_of_sent(value, tags)))

    return route


def _by_class_name_first(
    discriminator: Callable[[Any], Hashable], tags: _Tags
) -> Callable[[Any], Hashable]:
    def discriminate(value: Any) -> Hashable:
        if isinstance(value, dict):
            if len(value) == 2:
                parsed = parse_reference(value)
                if parsed is not None:
                    # An unknown class name is no tag of this union: Pydantic reports it so.
                    tag = tags.get(parsed[0])
                    return parsed[0] if tag is None else tag
            elif "class_name" in value and "id" in value:
                return _member_of_sent(value, tags)
        return discriminator(value)

    discriminate.__toast_wrapped__ = True  # type: ignore[attr-defined]
    return discriminate
