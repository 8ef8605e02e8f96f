"""A model's own fields without the external hooks at its root, for storing and loading.

An external model's core schema wraps its fields in two Python hooks (the wrap serializer that
stores it, the wrap validator that loads references). Writing a record needs the fields as
JSON and reading one needs them back, so going through those hooks at the root only costs: the
wrap serializer makes Pydantic build a Python dict and hand it to Python, the wrap validator
makes it parse JSON into Python objects before validating. The serializer and validator built
here from the same schema, minus the root hooks, stay in Pydantic's Rust code; external models
nested inside keep their hooks (they are stored and loaded as references).

Stored JSON keeps NaN and the infinities as the constants ``NaN``, ``Infinity`` and
``-Infinity`` in every model, dataclass and ``TypedDict`` of the tree: a plain model nested in
an external one writes them as ``null`` by default (``ser_json_inf_nan``), which a ``float``
field refuses and a ``float | None`` field reads back as ``None``. Only the serializer built
here sees the override; the models' own ``model_dump_json()`` keeps their setting.
"""

from __future__ import annotations

from typing import Any, cast

from pydantic_core import CoreConfig, SchemaSerializer, SchemaValidator

__all__ = ["DataSchema", "data_schema", "storage_serializer"]


class DataSchema:
    """The serializer and validator of one model class's own fields.

    Attributes:
        serializer: Writes the fields as JSON (nested external models become references).
        validator: Validates stored fields with what lies inside the reference hook: the
            model, and any model validators the hook wraps.
        hook_at_root: Whether the reference hook is the outermost validator. When it is not
            (a subclass's own model validators wrap it), a load that does not come through
            Pydantic's validation must use the class's full validator, so that those run too.
    """

    __slots__ = ("hook_at_root", "serializer", "source", "validator")

    def __init__(
        self,
        source: object,
        serializer: SchemaSerializer,
        validator: SchemaValidator,
        *,
        hook_at_root: bool,
    ) -> None:
        self.source = source
        self.serializer = serializer
        self.validator = validator
        self.hook_at_root = hook_at_root


def data_schema(cls: type[Any]) -> DataSchema | None:
    """The class's :class:`DataSchema`, built once per core schema; ``None`` when unusual.

    ``None`` (a schema not built yet, or a subclass's own model serializer) tells the caller to
    use the class's own serializer and validator.
    """
    schema = cls.__dict__.get("__pydantic_core_schema__")
    cached: DataSchema | None = cls.__dict__.get("__toast_data_schema__")
    if cached is not None and cached.source is schema:
        return cached
    validator = cls.__dict__.get("__pydantic_validator__")
    if not isinstance(schema, dict) or not isinstance(validator, SchemaValidator):
        return None  # not built yet (forward references): use the regular path this time
    definitions: list[Any] = []
    root = schema
    if schema.get("type") == "definitions":
        definitions = schema["definitions"]
        root = _resolve(schema["schema"], definitions)
    found = _find_hook(root, cls, definitions)
    if found is None:
        return None
    inside, at_root = found
    model = _resolve(inside, definitions)
    if model.get("type") != "model" or model.get("cls") is not cls:
        return None
    if model.get("serialization", {}).get("function") is not cls._toast_serialize:
        return None  # a subclass's own model_serializer decides what is stored
    fields = {key: value for key, value in model.items() if key not in ("serialization", "ref")}
    inner = {key: value for key, value in inside.items() if key != "ref"}
    if inside is model:
        inner = fields
    if definitions:
        fields = {"type": "definitions", "schema": fields, "definitions": definitions}
        inner = {"type": "definitions", "schema": inner, "definitions": definitions}
    config = _config_of(validator)
    built = DataSchema(
        schema,
        SchemaSerializer(_keeping_inf_nan(fields), _keep_inf_nan(config)),
        SchemaValidator(inner, config),
        hook_at_root=at_root,
    )
    cls.__toast_data_schema__ = built
    return built


def storage_serializer(cls: type[Any]) -> SchemaSerializer:
    """The serializer that writes ``cls``'s stored JSON.

    The :class:`DataSchema` serializer when there is one, else the class's own (a subclass's
    own model serializer decides what is stored; in JSON mode its handler hands back floats,
    which the class's config writes as constants).
    """
    fast = data_schema(cls)
    return cls.__pydantic_serializer__ if fast is None else fast.serializer


def _config_of(validator: SchemaValidator) -> CoreConfig | None:
    """The core config a class's validator was built with."""
    return cast("CoreConfig | None", validator.__reduce__()[1][1])


# The core schemas that carry a config of their own, read by the serializers inside them.
_CONFIGURED = frozenset({"model", "dataclass", "typed-dict"})


def _keep_inf_nan(config: CoreConfig | None) -> CoreConfig:
    return {**(config or {}), "ser_json_inf_nan": "constants"}


def _keeping_inf_nan(node: Any, stand_ins: dict[type, type] | None = None) -> Any:
    """A copy of core schema ``node`` whose configs all write NaN and infinities as constants.

    Only dicts and lists are copied; classes, functions and other leaves are shared.
    """
    if stand_ins is None:
        stand_ins = {}
    if isinstance(node, dict):
        copied = {key: _keeping_inf_nan(value, stand_ins) for key, value in node.items()}
        config = node.get("config")
        if (
            node.get("type") in _CONFIGURED
            and isinstance(config, dict)
            and config.get("ser_json_inf_nan", "null") != "constants"
        ):
            copied["config"] = _keep_inf_nan(cast("CoreConfig", config))
            if "cls" in node:
                original = node["cls"]
                if original not in stand_ins:
                    stand_ins[original] = _StandIn(
                        original.__name__,
                        (),
                        {"original": original, "__module__": original.__module__},
                    )
                copied["cls"] = stand_ins[original]
        return copied
    if isinstance(node, list):
        return [_keeping_inf_nan(item, stand_ins) for item in node]
    return node


class _StandIn(type):
    """The metaclass of a model or dataclass's stand-in: its instances are the original's.

    pydantic-core reuses a complete class's own serializer (built with the class's config)
    wherever the class appears in a schema, so a changed config has no effect under the real
    class. Its serializers use the class only to check instances (and for its name): a stand-in
    that answers those checks like the original gets a serializer built from the config here.
    """

    original: type

    def __instancecheck__(cls, instance: object) -> bool:
        return isinstance(instance, cls.original)

    def __subclasscheck__(cls, subclass: type) -> bool:
        return issubclass(subclass, cls.original)


def _resolve(node: dict[str, Any], definitions: list[Any]) -> dict[str, Any]:
    if node.get("type") == "definition-ref":
        for definition in definitions:
            if definition.get("ref") == node["schema_ref"]:
                return definition  # type: ignore[no-any-return]
    return node


def _find_hook(
    node: dict[str, Any], cls: type[Any], definitions: list[Any]
) -> tuple[dict[str, Any], bool] | None:
    """What our reference hook wraps, and whether the hook is the outermost validator."""
    at_root = True
    for _ in range(64):  # a chain of model validators, never deep
        node = _resolve(node, definitions)
        kind = node.get("type")
        if kind == "function-wrap":
            function = node.get("function", {}).get("function")
            if getattr(function, "__func__", None) is cls._toast_validate.__func__:
                return node["schema"], at_root
        if kind not in ("function-wrap", "function-before", "function-after", "function-plain"):
            return None
        if "schema" not in node:
            return None
        node = node["schema"]
        at_root = False
    return None
