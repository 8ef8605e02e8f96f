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
field refuses and a ``float | None`` field reads back as ``None``. Likewise datetimes, dates,
times and timedeltas are always written in ISO 8601: ``ser_json_temporal="seconds"`` would
drop a datetime's UTC offset (and make a naive one aware), ``ser_json_timedelta="float"`` the
microseconds of a long duration. Bytes are written as the class reads them
(``val_json_bytes``, whatever ``ser_json_bytes`` says). Only the serializer built here sees the
override; the models' own ``model_dump_json()`` keeps their setting. The same
serializer notes a datetime or time whose UTC offset is not whole minutes, which Pydantic
writes rounded (``+05:30:30`` as ``+05:30``, an offset of minus a microsecond as ``Z``), and a
value in an ``Any`` field that JSON would not give back as itself (a datetime comes back a str)
and a deque with a maxlen (not written): such a record is refused (a ``Sequence`` field
comes back a list, whatever sequence it held: its type promises no more). Values outside
their field's constraints (a ``Literal``'s other value, a bound, a length: Pydantic's
serializers check types only) fail during serialization.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime, time
from typing import Any, TypeVar, cast

import pydantic.types
from pydantic_core import (
    CoreConfig,
    PydanticSerializationUnexpectedValue,
    SchemaSerializer,
    SchemaValidator,
    ValidationError,
    core_schema,
    to_json,
)

from pydantic_toast._field_types import save_types
from pydantic_toast._fingerprint import LoadLayout, Tracking, load_layout, loads_as_stored
from pydantic_toast._number_plan import SCAN, NumberPlan, number_plan
from pydantic_toast._schema_walk import schema_nodes
from pydantic_toast._unstorable import TIME_KEYS, check_storable

__all__ = [
    "BOUNDED",
    "FLAGS",
    "KEY",
    "OFFSET",
    "ONE_PASS",
    "OUTSIDE",
    "SUBCLASS",
    "UNION",
    "DataSchema",
    "data_schema",
    "data_schema_of",
    "load_validator",
    "note_pending",
    "noted",
    "noting",
    "storage_serializer",
]

T = TypeVar("T")


class DataSchema:
    """The serializer and validator of one model class's own fields.

    Attributes:
        serializer: Writes the fields as JSON (nested external models become references),
            noting a datetime or time whose UTC offset has seconds, and a value in an Any field
            that JSON would not give back as itself (see :func:`noted`).
        validator: Validates stored fields with what lies inside the reference hook: the
            model, and any model validators the hook wraps. Time constraints
            (``FutureDatetime``, ``PastDate``...) are left out: they held when the record was
            written, and a record must load whenever it is read.
        loader: Validates stored fields outside the hook (a load that does not come through
            Pydantic's validation): :attr:`validator` when the hook is outermost, else the
            class's full validator, without time constraints as :attr:`validator`.
        hook_at_root: Whether the reference hook is the outermost validator. When it is not
            (a subclass's own model validators wrap it), a load that does not come through
            Pydantic's validation must use the class's full validator, so that those run too.
        numbers: Which numbers the fields can write (see :mod:`._number_plan`).
        fields: How many fields the class has.
        load_layout: Where a loaded instance's lists and dicts sit, when a fingerprint taken at
            load vouches for its fields (see :func:`._fingerprint.load_layout`), else ``None``.
        tracking: What change tracking knows of the class (see :class:`._fingerprint.Tracking`).
        keyed: Whether the fields can hold dicts whose keys Pydantic writes itself, which it
            writes changed when one holds a lone surrogate (see ``_fidelity.LOSSY_KEY``).
    """

    __slots__ = (
        "fields",
        "hook_at_root",
        "keyed",
        "load_layout",
        "loader",
        "numbers",
        "owner",
        "serializer",
        "source",
        "tracking",
        "validator",
    )

    def __init__(
        self,
        owner: type[Any],
        source: object,
        serializer: SchemaSerializer,
        validator: SchemaValidator,
        *,
        loader: SchemaValidator,
        hook_at_root: bool,
        tracking: Tracking,
        numbers: NumberPlan = SCAN,
        load_layout: LoadLayout | None = None,
        keyed: bool = True,
    ) -> None:
        self.owner = owner
        self.source = source
        self.serializer = serializer
        self.numbers = numbers
        self.validator = validator
        self.loader = loader
        self.hook_at_root = hook_at_root
        self.fields = len(getattr(owner, "__pydantic_fields__", ()))
        self.load_layout = load_layout
        self.tracking = tracking
        self.keyed = keyed


def data_schema_of(model: Any) -> DataSchema | None:
    """``data_schema(type(model))`` for an external model's instance, the cache read through it.

    An attribute of a model class read through the class goes through Pydantic's metaclass
    ``__getattr__`` hook (about 1,000 instructions a read), through an instance less than half
    that: a save asks once per model, and this spares it about 1,900 instructions.
    """
    cached: DataSchema | None = model.__toast_data_schema__
    if (
        cached is not None
        and cached.owner is type(model)
        and cached.source is model.__pydantic_core_schema__
    ):
        return cached
    return data_schema(type(model))


def data_schema(cls: type[Any]) -> DataSchema | None:
    """The class's :class:`DataSchema`, built once per core schema; ``None`` when unusual.

    ``None`` (a schema not built yet, or a subclass's own model serializer) tells the caller to
    use the class's own serializer and validator.
    """
    # Attribute lookups, not cls.__dict__ (a proxy object per access: every save and load asks):
    # the cache is this class's own when its owner is, and is made only once the class has a
    # schema of its own, which then shadows any base class's.
    cached: DataSchema | None = getattr(cls, "__toast_data_schema__", None)
    if (
        cached is not None
        and cached.owner is cls
        and cached.source is getattr(cls, "__pydantic_core_schema__", None)
    ):
        return cached
    schema = cls.__dict__.get("__pydantic_core_schema__")
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
    check_storable(cls)  # (a class completed by a rebuild that refused it: refused here too)
    config = _config_of(validator)
    names = tuple(getattr(cls, "__pydantic_fields__", ()))
    inner_validator = SchemaValidator(_untimed(inner), config)
    if at_root:
        loader = inner_validator
    elif _timed(schema):
        loader = SchemaValidator(_untimed(schema), config)
    else:
        loader = validator
    # Model validators of the class's own may rebuild what its Any fields hold.
    stored = _for_storage(fields, definitions, plain_any=inside is model and at_root)
    built = DataSchema(
        cls,
        schema,
        SchemaSerializer(stored, _storage_config(config)),
        inner_validator,
        loader=loader,
        hook_at_root=at_root,
        numbers=number_plan(model),
        # The whole schema must load as stored: model validators wrap the hook.
        load_layout=load_layout(model, definitions) if loads_as_stored(schema) else None,
        tracking=Tracking(
            schema, names, save_types(stored, names, (_CHECKS["datetime"], _CHECKS["time"]))
        ),
        keyed=_writes_keys(stored),
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
    if fast is None:
        return cast("SchemaSerializer", cls.__pydantic_serializer__)
    return fast.serializer


def load_validator(cls: type[Any]) -> Any:
    """The validator that loads ``cls``'s stored fields when it has no :class:`DataSchema`
    (:func:`data_schema` gives ``None``): the class's own, without its time constraints (see
    :attr:`DataSchema.validator`), built once per core schema.
    """
    schema = cls.__dict__.get("__pydantic_core_schema__")
    validator = cls.__dict__.get("__pydantic_validator__")
    if not isinstance(schema, dict) or not isinstance(validator, SchemaValidator):
        return cls.__pydantic_validator__  # not built yet: its first use builds it
    cached = cls.__dict__.get("__toast_untimed__")
    if cached is None or cached[0] is not schema:
        untimed = (
            SchemaValidator(_untimed(schema), _config_of(validator)) if _timed(schema) else None
        )
        cached = cls.__toast_untimed__ = (schema, untimed)
    return validator if cached[1] is None else cached[1]


def _writes_keys(schema: object) -> bool:
    """Whether core ``schema`` has a dict (or Counter, OrderedDict...) whose keys it types: an
    untyped key, written as Any, fails on a lone surrogate instead of being written changed."""
    return any("keys_schema" in node or node.get("type") == "dict" for node in schema_nodes(schema))


def _timed(schema: object) -> bool:
    """Whether core ``schema`` compares a date or datetime with the current time."""
    return any(key in node for node in schema_nodes(schema) for key in TIME_KEYS)


def _untimed(schema: Any) -> Any:
    """Core ``schema`` without its time constraints (``FutureDatetime``, ``PastDate``...), to
    load stored data: each held when its record was written, and a ``FutureDatetime`` stored
    yesterday is past today. ``schema`` itself when it has none.

    When it has one, every dict, list and tuple of it is copied (each once: a node shared in
    ``schema`` is shared in the copy); classes, functions and other leaves are not. A plain model or
    dataclass nested inside keeps its own constraints (Pydantic reuses its validator): such
    classes are refused when the class is defined (see ``_unstorable``).
    """
    if not _timed(schema):
        return schema
    copies: dict[int, Any] = {}

    def copy(node: Any, names: bool = False) -> Any:
        # names: node maps field names to fields (a field may be named "now_op"): all kept.
        if not isinstance(node, dict | list | tuple):
            return node
        if id(node) in copies:
            return copies[id(node)]
        if isinstance(node, dict):
            named = not names and node.get("type") in ("model-fields", "typed-dict")
            result: Any = {
                key: copy(value, names=named and key == "fields")
                for key, value in node.items()
                if names or key not in TIME_KEYS
            }
        else:
            result = type(node)(copy(item) for item in node)
        copies[id(node)] = result
        return result

    return copy(schema)


def _config_of(validator: SchemaValidator) -> CoreConfig | None:
    """The core config a class's validator was built with."""
    return cast("CoreConfig | None", validator.__reduce__()[1][1])


# Validators that run a function of the user's: what they validate is theirs to rebuild.
_FUNCTIONS = frozenset({"function-before", "function-after", "function-wrap", "function-plain"})
# The core schemas that carry a config of their own, read by the serializers inside them.
_CONFIGURED = frozenset({"model", "dataclass", "typed-dict"})
# A field's Field(exclude=True) or exclude_if hides it from the model's own dumps (an API's
# responses). Stored JSON keeps a field exclude_if leaves out (its value would come back as
# the default, or not load) and a required one exclude=True leaves out; exclude=True on a
# field with a default says it is not data (a client, a cache): it comes back as the default.
_FIELDS = frozenset({"model-field", "dataclass-field", "typed-dict-field"})
# The schemas whose "fields" maps field names to fields (a dataclass's is a list).
_NAMED_FIELDS = frozenset({"model-fields", "typed-dict"})


def _stored_despite_exclusion(field: dict[str, Any]) -> tuple[str, ...]:
    """The exclusion keys of ``field`` (a core schema field) that stored JSON ignores."""
    ignored: tuple[str, ...] = ()
    if field.get("serialization_exclude_if"):
        ignored += ("serialization_exclude_if",)
    inner = field.get("schema", {})
    required = field.get("required", True) and inner.get("type") != "default"
    if field.get("serialization_exclude") and required:
        ignored += ("serialization_exclude",)
    return ignored


# What stored JSON writes whatever a class's config says: NaN and the infinities as constants,
# dates, times and durations in ISO 8601 ("seconds" and "milliseconds" drop a datetime's UTC
# offset and a naive one comes back aware; a duration as a float loses microseconds).
_STORAGE_CONFIG: CoreConfig = {
    "ser_json_inf_nan": "constants",
    "ser_json_temporal": "iso8601",
    "ser_json_timedelta": "iso8601",
}


def _storage_config(config: CoreConfig | None) -> CoreConfig:
    stored: CoreConfig = {**(config or {}), **_STORAGE_CONFIG}
    # Bytes are written the way the class reads them back: ser_json_bytes="base64" without
    # val_json_bytes="base64" would read the base64 text back as the bytes of that text.
    stored["ser_json_bytes"] = stored.get("val_json_bytes", "utf8")
    return stored


def _stored_as_is(config: dict[str, Any]) -> bool:
    """Whether a class with ``config`` already writes JSON as storage does."""
    return (
        config.get("ser_json_inf_nan") == "constants"
        and config.get("ser_json_temporal", "iso8601") == "iso8601"
        and config.get("ser_json_timedelta", "iso8601") == "iso8601"
        and config.get("ser_json_bytes", "utf8") == config.get("val_json_bytes", "utf8")
    )


def _for_storage(node: Any, definitions: list[Any], *, plain_any: bool = True) -> Any:
    """A copy of core schema ``node`` for stored JSON: every config writes NaN and infinities
    as constants, datetimes and times note a UTC offset with seconds, and Any values note what
    JSON would not give back (with ``plain_any``, see :meth:`_Copier.copy`).

    Only dicts and lists are copied; classes, functions and other leaves are shared.
    """
    return _Copier(definitions).copy(node, plain_any=plain_any)


class _Copier:
    """Copies a core schema for stored JSON (see :func:`_for_storage`)."""

    def __init__(self, definitions: list[Any]) -> None:
        self.definitions = {d["ref"]: d for d in definitions if isinstance(d, dict) and "ref" in d}
        self.stand_ins: dict[type, type] = {}

    def copy(
        self,
        node: Any,
        *,
        plain_any: bool = True,
        plain: bool = True,
        config: dict[str, Any] | None = None,
        wrapped: bool = False,
    ) -> Any:
        """A copy of ``node``; ``plain_any``: an Any inside is read back by Pydantic alone (not
        under a validator function, which may rebuild what it holds, nor a serializer's
        return schema), so a value JSON would change in it is noted; ``plain``: the same for
        any value inside, whatever model validators do, so a value its constraints refuse
        fails (see :func:`_constraint_check`); ``config``: the core config of the model,
        dataclass or TypedDict ``node`` is in; ``wrapped``: ``node`` is serialized through a
        wrap serializer of the user's, which hands it what it chooses (see
        :data:`_ONE_PASS_HANDED`)."""
        if isinstance(node, list | tuple):  # a tuple: a union choice with its label
            items = (
                self.copy(item, plain_any=plain_any, plain=plain, config=config, wrapped=wrapped)
                for item in node
            )
            return type(node)(items)
        if not isinstance(node, dict):
            return node
        kind = node.get("type")
        if kind == "union":
            node = self._unshadowed(node)
        own = node.get("config")
        if kind in _CONFIGURED and isinstance(own, dict):
            config = own
        inner = kind not in _FUNCTIONS
        serialization = node.get("serialization")
        wrapped = wrapped or (
            isinstance(serialization, dict) and serialization.get("type") == "function-wrap"
        )
        # A model's or TypedDict's "fields" maps field names to fields: a field named "type"
        # or "serialization" is a field like any other, not a key of a schema.
        named = kind in _NAMED_FIELDS and isinstance(node.get("fields"), dict)
        copied: dict[str, Any] = {}
        for key, value in node.items():
            plain_here = inner and key != "serialization"

            def copy(item: Any, plain_here: bool = plain_here) -> Any:
                return self.copy(
                    item,
                    plain_any=plain_any and plain_here,
                    plain=plain and plain_here,
                    config=config,
                    wrapped=wrapped,
                )

            if named and key == "fields":
                copied[key] = {name: copy(field) for name, field in value.items()}
            else:
                copied[key] = copy(value)
        if kind in _FIELDS:
            for key in _stored_despite_exclusion(node):
                del copied[key]
        if _is_secret(node):
            copied["serialization"] = _secret_serializer(copied)
        if kind == "generator" and "serialization" not in node:
            copied["serialization"] = _ONE_PASS_HANDED if wrapped else _ONE_PASS_CHECK
        if _is_pattern(node):
            copied["serialization"] = _FLAGS_CHECK
        if kind == "deque" and plain and "serialization" not in node:
            copied["serialization"] = _bound_check(copied)
        if "serialization" not in node and plain:
            check = _constraint_check(copied, config)
            if check is not None:
                copied["serialization"] = check
        if kind in _CHECKS and "serialization" not in copied and (plain_any or kind != "any"):
            copied["serialization"] = _CHECKS[kind]
        if _any_hashable(node) and plain_any and "serialization" not in copied:
            copied["serialization"] = _CHECKS["any"]  # a tuple came back a list: unhashable
        if kind == "union" and plain and "serialization" not in node and _ambiguous(node):
            schema = core_schema.definitions_schema(node, list(self.definitions.values()))
            copied["serialization"] = core_schema.wrap_serializer_function_ser_schema(
                _UnionCheck(SchemaValidator(schema)), when_used="json"
            )
        if kind == "dict" and plain and "serialization" not in copied and _unsafe_keys(node):
            keys = core_schema.dict_schema(node["keys_schema"], core_schema.any_schema())
            schema = core_schema.definitions_schema(keys, list(self.definitions.values()))
            copied["serialization"] = core_schema.wrap_serializer_function_ser_schema(
                _KeyCheck(SchemaValidator(schema, cast("CoreConfig", config))), when_used="json"
            )
        if kind == "model-fields" and plain_any and "extras_schema" not in node:
            allowed = node.get("extra_behavior") or (config or {}).get("extra_fields_behavior")
            if allowed == "allow":  # extra fields are read back as Any values are: check them
                copied["extras_schema"] = {"type": "any", "serialization": _CHECKS["any"]}
        config = own
        # A model or dataclass that holds a datetime, a time, an Any or a constrained value
        # needs its stand-in too: its own serializer checks nothing.
        if (
            kind in _CONFIGURED
            and isinstance(config, dict)
            and (not _stored_as_is(config) or self._checked(node))
        ):
            copied["config"] = _storage_config(cast("CoreConfig", config))
            original = node.get("cls")
            if isinstance(original, type) and not isinstance(original, _StandIn):
                if original not in self.stand_ins:
                    self.stand_ins[original] = _stand_in(original, ())
                copied["cls"] = self.stand_ins[original]
        if kind in _CLASSES and "serialization" not in node:
            check = _exact_class_check(node.get("cls"), copied)
            if check is not None:
                copied["serialization"] = check
        if _users_function(serialization) and _holds_generator(node):
            # The user's serializer is handed the field's value: a one-pass one (Pydantic's
            # iterator, a map its validator made, one assigned later) it would consume.
            return core_schema.no_info_after_validator_function(
                _same, copied, serialization=_ONE_PASS_ABOVE
            )
        return copied

    def _checked(self, node: Any) -> bool:
        """Whether schema ``node`` can serialize a datetime, a time or an Any value."""
        config = node.get("config")
        for item in schema_nodes(node, definitions=self.definitions):
            kind = item.get("type")
            if kind in _CHECKS or _constrained(item, config):
                return True
            if kind in _FIELDS and _stored_despite_exclusion(item):
                return True
            if _is_secret(item) or kind == "generator" or _any_hashable(item) or _is_pattern(item):
                return True
            if kind == "deque":
                return True
            if kind == "dict" and _unsafe_keys(item):
                return True
            if kind == "definition-ref" and item.get("schema_ref") not in self.definitions:
                return True  # a definition it cannot see may hold anything, as an Any does
        return False

    def _unshadowed(self, union: dict[str, Any]) -> dict[str, Any]:
        """``union`` with each model member that another member subclasses inlined, under a
        stand-in that leaves those subclasses' instances to their own member.

        Pydantic picks a union member by exact type first, which no stand-in can answer;
        without this, ``A | B`` (``B`` a subclass of ``A``) would write a ``B`` as an ``A``.
        """
        members = []
        for choice in union.get("choices", []):
            schema = choice[0] if isinstance(choice, tuple) else choice
            target = schema
            if isinstance(schema, dict) and schema.get("type") == "definition-ref":
                target = self.definitions.get(schema.get("schema_ref"), schema)
            found = target.get("cls") if isinstance(target, dict) else None
            members.append((choice, target, found if isinstance(found, type) else None))
        classes = [cls for _, _, cls in members if cls is not None]
        choices: list[Any] = []
        for choice, target, cls in members:
            shadows = tuple(c for c in classes if c is not cls and cls and issubclass(c, cls))
            if cls is None or not shadows:
                choices.append(choice)
                continue
            inlined = {key: value for key, value in target.items() if key != "ref"}
            inlined["cls"] = _stand_in(cls, shadows)
            choices.append((inlined, choice[1]) if isinstance(choice, tuple) else inlined)
        return {**union, "choices": choices}


# SecretStr, SecretBytes and Secret[T] write "**********" as JSON: stored so, the secret was
# lost. Stored JSON holds the secret; the models' own dumps keep masking it.
_SECRET_SERIALIZERS = frozenset(
    function
    for function in (
        getattr(pydantic.types, "_serialize_secret_field", None),
        getattr(pydantic.types, "_serialize_secret", None),
    )
    if function is not None
)


def _any_hashable(node: dict[str, Any]) -> bool:
    """Whether schema ``node`` is ``Hashable``'s: any hashable value, written as an Any's is."""
    return node.get("type") == "custom-error" and node.get("custom_error_type") == "is_hashable"


def _is_secret(node: dict[str, Any]) -> bool:
    """Whether schema ``node`` is a Pydantic secret type's (its serializer masks the value)."""
    serialization = node.get("serialization")
    return (
        isinstance(serialization, dict)
        and serialization.get("function") in _SECRET_SERIALIZERS
        and node.get("type") in ("lax-or-strict", "json-or-python")
    )


def _reveal(value: Any) -> Any:
    return value.get_secret_value()


def _secret_serializer(node: dict[str, Any]) -> dict[str, Any]:
    """A serializer writing the secret of secret type schema ``node`` as its inner type does."""
    either = node.get("lax_schema", node)  # SecretStr, SecretBytes: lax or strict; Secret[T]
    inner = either.get("json_schema", {}).get("schema", core_schema.any_schema())
    serializer = core_schema.plain_serializer_function_ser_schema(
        _reveal, return_schema=inner, when_used="unless-none"
    )
    return cast("dict[str, Any]", serializer)


def _stand_in(original: type, shadows: tuple[type, ...]) -> type:
    return _StandIn(
        original.__name__,
        (),
        {"original": original, "shadows": shadows, "__module__": original.__module__},
    )


# Pydantic writes UTC offsets as +HH:MM, dropping seconds (an offset such as LMT's +00:19:32,
# for dates before 1937 in Europe/Amsterdam) and fractions (minus a microsecond is written Z):
# such a value would come back changed. So would any value but JSON's own (None, bool, int,
# float, str, list, dict with str keys) inside an Any field: a datetime comes back a str, a
# tuple a list. The checks note such values rather than raising: inside a union, Pydantic would
# take an error for a mismatch, try the next member and write the value all the same. A Python
# call per datetime, time or Any value written: no byte scan can see an offset written as Z.
_note: ContextVar[str | None] = ContextVar("pydantic_toast_note", default=None)
OFFSET = "offset"
"""The note of a UTC offset with seconds; any other note names a type found in an Any value."""
_TIMES = (datetime, time)
_JSON_ATOMS = frozenset({type(None), bool, int, float, str})


def _whole_minute_offset(value: Any) -> Any:
    if isinstance(value, _TIMES):
        zone = value.tzinfo
        if zone is not None and zone is not UTC:
            offset = value.utcoffset()
            if offset is not None and (offset.seconds % 60 or offset.microseconds):
                _note.set(OFFSET)
    return value


def _json_value(value: Any) -> Any:
    """Note the first value in ``value`` that JSON would not give back as itself."""
    if type(value) in _JSON_ATOMS:
        return value
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _JSON_ATOMS:
            continue
        if kind is list:
            stack.extend(item)
        elif kind is dict and all(type(key) is str for key in item):
            stack.extend(item.values())
        else:
            _note.set("dict with keys that are not str" if kind is dict else kind.__qualname__)
            break
    return value


def _exact_class_check(declared: Any, copied: dict[str, Any]) -> Any:
    """A serializer for plain model or dataclass schema ``copied`` of class ``declared`` that
    notes an instance of a subclass (see :class:`_ExactClass`); ``None`` for an external
    model's own schema (its subclasses' instances are refused when collected)."""
    shadows: tuple[type, ...] = ()
    if isinstance(declared, _StandIn):
        declared, shadows = declared.original, declared.shadows
    if not isinstance(declared, type) or hasattr(declared, "_toast_serialize"):
        return None
    inner = {key: value for key, value in copied.items() if key != "ref"}
    return core_schema.plain_serializer_function_ser_schema(
        _ExactClass(declared, shadows), return_schema=inner, when_used="json"
    )


class _ExactClass:
    """Notes an instance of a subclass in a field declared as its base class: Pydantic writes
    it as the base class (the subclass's own fields left out), and it comes back as one.

    Instances of ``shadows`` (the subclasses that other members of a union stand for) are not
    this member's: the union writes them with their own.
    """

    __slots__ = ("declared", "shadows")

    def __init__(self, declared: type, shadows: tuple[type, ...]) -> None:
        self.declared = declared
        self.shadows = shadows

    def __call__(self, value: Any) -> Any:
        kind = type(value)
        if (
            kind is not self.declared
            and isinstance(value, self.declared)
            and not isinstance(value, self.shadows)
            and not _parametrizes(kind, self.declared)
        ):
            _note.set(f"{SUBCLASS}:{kind.__qualname__}:{self.declared.__qualname__}")
        return value


def _parametrizes(kind: type, declared: type) -> bool:
    """Whether ``kind`` is a parametrization of generic model ``declared`` (``Box[int]`` of
    ``Box``): the same fields, read back as ``declared``, an equal instance."""
    metadata: Any = getattr(kind, "__pydantic_generic_metadata__", None)
    return metadata is not None and metadata.get("origin") is declared


# Plain serializers handing the value on to the usual one (cheaper than a wrap serializer,
# which builds a handler for every call).
_CHECKS = {
    kind: core_schema.plain_serializer_function_ser_schema(
        check, return_schema={"type": kind}, when_used="json"
    )
    for kind, check in (
        ("datetime", _whole_minute_offset),
        ("time", _whole_minute_offset),
        ("any", _json_value),
    )
}


# An Iterable field holds a one-pass iterator: writing it consumes it, so the instance's next
# save stored it empty (and so did anything else that serialized it in between).
ONE_PASS = "one-pass"
"""The note of an Iterable field's iterator, which a save would consume."""


def _one_pass(value: Any) -> None:
    _note.set(ONE_PASS)  # refused: the iterator is left as it is


_ONE_PASS_CHECK = core_schema.plain_serializer_function_ser_schema(_one_pass, when_used="json")
_VALIDATED_ITERATOR = type(SchemaValidator(core_schema.generator_schema()).validate_python(()))


def _one_pass_handed(value: Any, handler: core_schema.SerializerFunctionWrapHandler) -> Any:
    if type(value) is _VALIDATED_ITERATOR:  # the field's own iterator: writing it consumes it
        _note.set(ONE_PASS)
        return None
    return handler(value)  # an iterator the user's serializer made (of a list...): theirs


def _one_pass_above(value: Any, handler: core_schema.SerializerFunctionWrapHandler) -> Any:
    try:
        one_pass = iter(value) is value
    except TypeError:  # not iterable: nothing to consume
        one_pass = False
    if one_pass:
        _note.set(ONE_PASS)  # refused: the iterator is left as it is
        return None
    return handler(value)


_ONE_PASS_ABOVE = core_schema.wrap_serializer_function_ser_schema(_one_pass_above, when_used="json")
"""The one-pass check above a serializer of the user's on a schema holding an Iterable: the
value it would be handed is refused when it is an iterator (``iter(value) is value``), which
the serializer would consume, so that the next save stored it empty; a list passes. (Only the
stored copy of the schema gets it: ``_same`` never validates anything.)"""


def _same(value: Any) -> Any:
    return value


def _users_function(serialization: Any) -> bool:
    """Whether ``serialization`` is a function serializer (of the user's: the schema copied)."""
    return isinstance(serialization, dict) and serialization.get("type") in (
        "function-plain",
        "function-wrap",
    )


def _holds_generator(node: Any) -> bool:
    """Whether a ``generator`` schema (an Iterable) is in ``node``, however deep."""
    if isinstance(node, dict):
        return node.get("type") == "generator" or any(map(_holds_generator, node.values()))
    if isinstance(node, list | tuple):
        return any(map(_holds_generator, node))
    return False


_ONE_PASS_HANDED = core_schema.wrap_serializer_function_ser_schema(
    _one_pass_handed, when_used="json"
)
"""The one-pass check below a wrap serializer of the user's, whose handler may be given an
iterator the serializer made (``handler(iter(value))`` of a field its validator turned into a
list): refused only when it is the iterator Pydantic validated, the field's value."""


# A compiled pattern is written as its text: flags given to re.compile (not inline in the
# text, as (?i)) came back lost.
FLAGS = "flags"
"""The note of a compiled pattern whose flags its text does not hold."""


def _is_pattern(node: dict[str, Any]) -> bool:
    """Whether schema ``node`` is a compiled pattern's (``re.Pattern``)."""
    serialization = node.get("serialization")
    return (
        isinstance(serialization, dict)
        and repr(serialization.get("function")) == "operator.attrgetter('pattern')"
    )


def _pattern_text(value: Any) -> Any:
    if value.flags != re.compile(value.pattern).flags:
        _note.set(FLAGS)
    return value.pattern


_FLAGS_CHECK = core_schema.plain_serializer_function_ser_schema(
    _pattern_text, return_schema=core_schema.str_schema(), when_used="json"
)


# A deque's maxlen is not written: a bounded deque came back unbounded (equal by ==, but an
# append no longer drops the oldest item).
BOUNDED = "bounded"
"""The note of a deque with a maxlen, which its JSON does not keep."""


def _bounded(value: Any) -> Any:
    if getattr(value, "maxlen", None) is not None:
        _note.set(BOUNDED)
    return value


def _bound_check(copied: dict[str, Any]) -> dict[str, Any]:
    """A serializer for deque schema ``copied`` noting a deque with a maxlen."""
    inner = {key: value for key, value in copied.items() if key not in ("serialization", "ref")}
    serializer = core_schema.plain_serializer_function_ser_schema(
        _bounded, return_schema=cast("core_schema.CoreSchema", inner), when_used="json"
    )
    return cast("dict[str, Any]", serializer)


# Constraints Pydantic's serializers do not check: a value outside them (put there by
# model_construct(), an assignment without validate_assignment, an append or a __dict__ write)
# would be written, and every load would then refuse it (a Literal's other value, -1 in a field
# with gt=0, a naive datetime in an AwareDatetime) or change it (to_lower, strip_whitespace).
# Enum members of another enum, and values of another type, Pydantic's serializers refuse.
_BOUNDS = frozenset({"gt", "ge", "lt", "le"})
_CONSTRAINTS: dict[str, frozenset[str]] = {
    "int": _BOUNDS | {"multiple_of"},
    "float": _BOUNDS | {"multiple_of"},
    "decimal": _BOUNDS | {"multiple_of", "max_digits", "decimal_places"},
    "str": frozenset(
        {"min_length", "max_length", "pattern", "strip_whitespace", "to_lower", "to_upper"}
    ),
    "bytes": frozenset({"min_length", "max_length"}),
    "date": _BOUNDS,
    "datetime": _BOUNDS | {"tz_constraint"},
    "time": _BOUNDS | {"tz_constraint"},
    "timedelta": _BOUNDS,
    "uuid": frozenset({"version"}),
}
_STR_CONFIG = (
    "str_min_length",
    "str_max_length",
    "str_strip_whitespace",
    "str_to_lower",
    "str_to_upper",
)
_SIZED = frozenset({"list", "tuple", "set", "frozenset", "dict"})
_LENGTHS = ("min_length", "max_length")
OUTSIDE = "a value its field's constraints refuse"
"""The message of a value outside its field's constraints (its type is right)."""


def _constrained(node: dict[str, Any], config: dict[str, Any] | None) -> bool:
    """Whether schema ``node`` constrains its values beyond what its serializer checks."""
    kind = node.get("type")
    if kind == "literal":
        return True
    if kind in _SIZED:
        return any(node.get(key) is not None for key in _LENGTHS)
    keys = _CONSTRAINTS.get(kind)  # type: ignore[arg-type]
    if keys is None:
        return False
    # gt=0 is a constraint; strip_whitespace=False is not.
    if any(node.get(key, False) is not False for key in keys):
        return True
    if kind == "float" and node.get("allow_inf_nan") is False:
        return True
    config = config or {}
    if kind == "float" and config.get("allow_inf_nan") is False:
        return True
    return kind == "str" and any(config.get(key) for key in _STR_CONFIG)


def _constraint_check(node: dict[str, Any], config: dict[str, Any] | None) -> dict[str, Any] | None:
    """A serializer refusing values outside ``node``'s constraints, ``None``: none to check.

    Leaves are validated the way a load validates them (lax), and refused when that fails or
    gives back another value; sized containers have their length checked. The error is the
    one Pydantic's own serializers raise for a value not of their type: inside a union, the
    next member is tried.
    """
    if not _constrained(node, config):
        return None
    # Time constraints are not checked again: a loaded FutureDatetime may be past by now, and
    # the record it came from must still save (loads leave them out too, see _untimed).
    left_out = ("serialization", "ref", *TIME_KEYS)
    schema = {key: value for key, value in node.items() if key not in left_out}
    kind = node["type"]
    check: Callable[[Any], Any]
    if kind in _SIZED:
        low = node.get("min_length") or 0
        high = node.get("max_length")

        def check(value: Any) -> Any:
            size = len(value)
            if size < low or (high is not None and size > high):
                raise PydanticSerializationUnexpectedValue(OUTSIDE)
            return value

    else:
        validate = SchemaValidator(
            cast("core_schema.CoreSchema", schema), cast("CoreConfig", config)
        ).validate_python
        then = _whole_minute_offset if kind in ("datetime", "time") else None
        # A value of another type that validation turns into an equal one (an int in a float
        # field) is left to the type's serializer, as in a field without constraints; only a
        # Literal, which has no serializer of its type, refuses it here.
        literal = kind == "literal"

        def check(value: Any) -> Any:
            try:
                result = validate(value, strict=False)
            except ValidationError:
                raise PydanticSerializationUnexpectedValue(OUTSIDE) from None
            if result is not value and (
                (result != value and value == value)
                or (literal and type(result) is not type(value))
            ):
                raise PydanticSerializationUnexpectedValue(OUTSIDE)  # would come back changed
            return value if then is None else then(value)

    serializer = core_schema.plain_serializer_function_ser_schema(
        check, return_schema=cast("core_schema.CoreSchema", schema), when_used="json"
    )
    return cast("dict[str, Any]", serializer)


# Union members that read a JSON string back as a value of their own, and the kinds that share
# JSON's array: in a union with a str (or with one another), a value of one may be read back as
# another, since the JSON does not say which member wrote it (datetime | str: a str shaped like
# a datetime comes back a datetime; list[int] | tuple[int, ...]: a tuple comes back a list).
_PARSES_STRINGS = frozenset(
    {"datetime", "date", "time", "timedelta", "uuid", "bytes", "decimal", "url", "multi-host-url"}
)
_ARRAYS = frozenset({"list", "tuple", "set", "frozenset"})
# Members reading a JSON string or number back: two of them may take each other's values (a
# time in timedelta | time comes back a timedelta, bytes in bytes | Decimal a Decimal); an enum
# or a Literal next to its value's type gives its member back as a plain int or str.
_READS_STRINGS = _PARSES_STRINGS | {"str", "enum", "literal"}
_CHOSEN = frozenset({"enum", "literal"})
_READS_NUMBERS = frozenset({"int", "float", "decimal", "bool"}) | _CHOSEN
_OPAQUE = frozenset({"model", "dataclass", "typed-dict", "definition-ref", *_FUNCTIONS})
UNION = "union"
"""The note of a union member read back as another (followed by ``:written:read``)."""
SUBCLASS = "subclass"
"""The note of a subclass instance where its base class is declared (followed by
``:subclass:declared``)."""
_CLASSES = frozenset({"model", "dataclass"})


def _ambiguous(union: dict[str, Any]) -> bool:
    """Whether a value of one of ``union``'s members may be read back as another's; only for
    unions of plain data (no models, dataclasses or functions, which the check would run)."""
    kinds = []
    for choice in union.get("choices", []):
        schema = choice[0] if isinstance(choice, tuple) else choice
        for node in schema_nodes(schema):
            if node.get("type") in _OPAQUE:
                return False
        if isinstance(schema, dict):
            kinds.append(schema.get("type"))
    numbers = {kind for kind in kinds if kind in _READS_NUMBERS}
    return (
        sum(kind in _READS_STRINGS for kind in kinds) > 1
        or (len(numbers) > 1 and bool(numbers & _CHOSEN))
        or len(set(kinds) & _ARRAYS) > 1
    )


class _UnionCheck:
    """A union's serializer (see :func:`_ambiguous`): notes a value that its JSON would read
    back as another member's, or as an unequal value."""

    __slots__ = ("validator",)

    def __init__(self, validator: SchemaValidator) -> None:
        self.validator = validator

    def __call__(self, value: Any, handler: Any) -> Any:
        written = handler(value)
        if _note.get() is not None:  # noted inside (an offset with seconds): that says more
            return written
        try:
            back = self.validator.validate_json(to_json(written), strict=False)
        except ValueError:  # unreadable: the record's own read-back check names it
            return written
        if type(back) is not type(value) or (back != value and value == value):
            _note.set(f"{UNION}:{type(value).__qualname__}:{type(back).__qualname__}")
        return written


# Dict keys that come back from a JSON object's str keys as themselves. Others may not: a tuple
# is written "1,2" and None "None", which no load reads back; an int key of str | int comes back
# a str, and two members of an enum whose values are 1 and "1" come back one.
_KEYS_READ_BACK = frozenset(
    {"str", "int", "float", "bool", "bytes", "decimal", "uuid", "date", "datetime", "time"}
    | {"timedelta"}
)
KEY = "key"
"""The note of a dict key read back as another (followed by ``:written:read``, read empty
when the key is not read back at all)."""


def _unsafe_keys(node: dict[str, Any]) -> bool:
    """Whether dict schema ``node``'s keys may not come back from JSON as themselves; not for
    keys of a type with validators of the user's (what they accept is theirs to keep)."""
    keys = node.get("keys_schema")
    if not isinstance(keys, dict) or keys.get("type", "any") in _KEYS_READ_BACK:
        return False
    if keys.get("type") == "any":
        return False  # an Any key: the dict's values are checked as an Any field's
    return not any(item.get("type") in _OPAQUE for item in schema_nodes(keys))


class _KeyCheck:
    """A dict's serializer (see :func:`_unsafe_keys`): notes a key that JSON, whose object keys
    are strings, would read back as another key, or not at all."""

    __slots__ = ("validator",)

    def __init__(self, validator: SchemaValidator) -> None:
        self.validator = validator

    def __call__(self, value: Any, handler: Any) -> Any:
        written = handler(value)
        if not value or _note.get() is not None:
            return written
        try:
            back = list(self.validator.validate_json(to_json(dict.fromkeys(written))))
        except ValueError:
            back = []
        if len(back) == len(value) and all(
            type(read) is type(key) and (read == key or key != key)
            for key, read in zip(value, back, strict=True)
        ):
            return written
        for key, text in zip(value, written, strict=False):
            try:
                read: Any = next(iter(self.validator.validate_json(to_json({text: None}))))
            except ValueError:
                _note.set(f"{KEY}:{type(key).__qualname__}:")
                break
            if type(read) is not type(key) or (read != key and key == key):
                _note.set(f"{KEY}:{type(key).__qualname__}:{type(read).__qualname__}")
                break
        else:  # each key comes back, but two of them as one
            _note.set(f"{KEY}:{type(next(iter(value))).__qualname__}:")
        return written


def noted() -> str | None:
    """What a storage serializer noted in this context since the last call (an offset with
    seconds, :data:`OFFSET`, or the type of a value an Any field would not give back); the
    note is cleared."""
    note = _note.get()
    if note is not None:
        _note.set(None)
    return note


note_pending: Callable[[], str | None] = _note.get
"""The note :func:`noted` would give, left in place: a C call, where a save's call of
:func:`noted` costs about 500 instructions more."""


def noting(serialize: Callable[[], T]) -> tuple[T, str | None]:
    """``serialize()``'s result, and what it noted (see :func:`noted`)."""
    token = _note.set(None)
    try:
        result = serialize()
        return result, _note.get()
    finally:
        _note.reset(token)


class _StandIn(type):
    """The metaclass of a model or dataclass's stand-in: its instances are the original's.

    pydantic-core reuses a complete class's own serializer (built with the class's config)
    wherever the class appears in a schema, so a changed config has no effect under the real
    class. Its serializers use the class only to check instances (and for its name): a stand-in
    that answers those checks like the original gets a serializer built from the config here.
    """

    original: type
    shadows: tuple[type, ...]  # subclasses that other members of a union stand for

    def __instancecheck__(cls, instance: object) -> bool:
        return isinstance(instance, cls.original) and not isinstance(instance, cls.shadows)

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
