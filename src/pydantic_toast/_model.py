"""``ExternalBaseModel``: a Pydantic model whose data lives in external storage."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any, ClassVar, Literal, Self
from uuid import UUID

import pydantic_core
from pydantic import (
    BaseModel,
    GetJsonSchemaHandler,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidatorFunctionWrapHandler,
    model_serializer,
    model_validator,
)
from pydantic.config import ExtraValues
from pydantic.json_schema import JsonSchemaValue
from pydantic.main import IncEx
from pydantic_core import PydanticCustomError
from pydantic_core import core_schema as cs

from pydantic_toast import _fidelity, _unions
from pydantic_toast._boundary import (
    DATA_KEY,
    Boundary,
    accepting,
    current_boundary,
    documenting_requests,
    is_trusted,
    not_accepting,
    reference_json_schema,
    trusted,
)
from pydantic_toast._config import (
    ExternalConfigDict,
    ModelSettings,
    check_config_keys,
    settings_for,
)
from pydantic_toast._data_schema import data_schema, load_validator
from pydantic_toast._exceptions import (
    ExternalStorageError,
    InvalidReferenceError,
    RecordNotFoundError,
    StorageConfigurationError,
    StorageUsageError,
    StoredDataError,
    shorten,
)
from pydantic_toast._expanded import EXPANDED_KEY, is_expanding
from pydantic_toast._fidelity import decode_stored, describe_errors
from pydantic_toast._fingerprint import loaded
from pydantic_toast._key_order import note_key_order
from pydantic_toast._loading import (
    LoadSession,
    Routes,
    SessionKey,
    active_session,
    read_one,
    routes_in,
)
from pydantic_toast._ownership import mark_loaded, owns_children, use_owner_slot
from pydantic_toast._records import StoredRecord
from pydantic_toast._reference import (
    ExternalReference,
    extra_keys_problem,
    parse_reference,
    unexpected_keys,
)
from pydantic_toast._saving import (
    Identity,
    UnvalidatedIdentity,
    collecting_model,
    collecting_now,
    forget_fingerprint,
    identity_of,
    is_serializing,
    keep_id_text,
    mark_unvalidated,
    store,
    unchanged_reference,
    use_identity_slot,
)
from pydantic_toast._schema_walk import schema_nodes
from pydantic_toast._signing import (
    parse_signed,
    response_keys,
    sign_reference,
    verify_parsed,
)
from pydantic_toast._unstorable import check_storable
from pydantic_toast.runtime.loops import run_sync
from pydantic_toast.runtime.storage import current_storage

__all__ = ["ExternalBaseModel"]

# Pydantic 2.12 and later call __pydantic_on_complete__ whenever a class's schema is complete
# (defined, or rebuilt with its forward references resolved); before, the definition checks.
_ON_COMPLETE = hasattr(BaseModel, "__pydantic_on_complete__")

logger = logging.getLogger("pydantic_toast")


class ExternalBaseModel(BaseModel):
    """A Pydantic model stored in external storage and passed around as a reference.

    ``model_dump()`` and ``model_dump_json()`` store the model and return
    ``{"class_name": ..., "id": ...}``; ``model_validate()`` and ``model_validate_json()`` take
    such a reference and load the model (full data still validates as usual; a mapping with
    ``class_name``, ``id`` and other keys is neither, and refused). This holds
    wherever Pydantic serializes or validates: nested in other models, in ``TypeAdapter`` and in
    FastAPI. The same instance keeps its id across dumps and updates its record.

    Code that must not block its event loop uses the async API: :meth:`asave` and
    :meth:`aload`.

    A copy (``model_copy()``, ``copy.copy``, ``copy.deepcopy``) is a new record: it gets a new
    id on its first dump, so changing a copy never overwrites the original. Pickling keeps the
    id: the unpickled instance is the same record.

    Example::

        class Order(ExternalBaseModel):
            product: str
            quantity: int
            model_config = ExternalConfigDict(storage="sqlite:///shop.db")

        reference = Order(product="tea", quantity=2).model_dump()
        order = Order.model_validate(reference)
    """

    # __weakref__: an owned child refers to its parent weakly (see _ownership.set_owner).
    __slots__ = ("__weakref__", "_toast_identity", "_toast_owner")

    __abstract__: ClassVar[bool] = True
    """Set ``__abstract__ = True`` in a subclass body to make a base without its own storage."""

    __toast_settings__: ClassVar[ModelSettings | None] = None
    __toast_nested__: ClassVar[bool | None] = None
    __toast_routes__: ClassVar[Routes | None] = None
    __toast_has_records__: ClassVar[bool] = False
    __toast_refused__: ClassVar[str | None] = None  # why a model_rebuild() refused the class
    # The class's DataSchema (see _data_schema), set on the class once built; here so that a
    # save can read it through the instance (see data_schema_of).
    __toast_data_schema__: ClassVar[Any] = None

    model_config = ExternalConfigDict(ser_json_inf_nan="constants")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """Check the storage configuration when the class is defined."""
        super().__pydantic_init_subclass__(**kwargs)
        cls.__toast_nested__ = None
        cls.__toast_routes__ = None
        cls.__toast_has_records__ = False
        check_config_keys(cls)
        if cls.__dict__.get("__abstract__", False):
            cls.__toast_settings__ = None
        else:
            if not _ON_COMPLETE:
                cls._toast_check_storable()
            cls.__toast_settings__ = settings_for(cls)

    @classmethod
    def __pydantic_on_complete__(cls) -> None:
        """Refuse fields no value of which can be stored, once the class's schema is complete
        (when defined, or at the ``model_rebuild()`` that resolves its forward references)."""
        super().__pydantic_on_complete__()
        if not cls.__dict__.get("__abstract__", False):
            cls._toast_check_storable()

    @classmethod
    def _toast_check_storable(cls) -> None:
        try:
            check_storable(cls)
            note_key_order(cls)
        except StorageConfigurationError as refusal:
            # Until it is collected, a refused class is among its base's subclasses: never
            # taken for a stored one (orphan scans, error messages) with its base's settings.
            # Refused by a model_rebuild(), it stays usable: its saves and loads say why not.
            cls.__toast_settings__ = None
            cls.__toast_refused__ = str(refusal)
            raise

    # -- the hooks Pydantic's core calls, nested or not -----------------------------------------

    @model_serializer(mode="wrap")
    def _toast_serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        if is_serializing(self) or is_expanding():
            return handler(self)  # type: ignore[no-any-return]
        keys = response_keys()
        if keys is not None and not collecting_now():
            # An integration's response: signed (stored data always holds plain references).
            return sign_reference(store(self), keys)
        return store(self)

    @model_validator(mode="wrap")
    @classmethod
    def _toast_validate(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        boundary = current_boundary()
        if boundary is not None:
            return cls._toast_validate_untrusted(value, handler, boundary)
        session = active_session()
        reference = parse_reference(value, None if session is None else session.ids)
        if reference is None:
            # Data, unless a reference with keys added (the usual data, a dict, tested inline:
            # the call cost a load of full data 1.4%).
            if type(value) is not dict or "class_name" in value:
                extra = unexpected_keys(value)
                if extra is not None:
                    raise _extra_keys_refusal(cls, value, extra)
            return handler(value)
        settings = cls._toast_settings()
        if reference[0] != settings.external_name:
            # A "does not match" error, so that a union tries its next member.
            raise PydanticCustomError(
                "external_reference_class",
                "{detail}",
                {
                    "detail": _mismatch(cls, reference[0]),
                    "class_name": reference[0],
                    "id": str(reference[1]),
                },
            )
        key = (settings.url(), reference[0], reference[1])
        if session is not None and not cls._toast_has_nested():
            return cls._toast_build_flat(key, session)
        if session is not None and (built := session.reuse(key, cls)) is not None:
            return built  # loaded once per session; a placeholder closes a cycle
        if session is None and not _has_nested(cls):  # one record: read it directly
            storage = current_storage()
            record = run_sync(lambda: read_one(storage, *key, cls), **_blocking_load(cls))
            if record is None:
                raise run_sync(lambda: cls._toast_not_found(key), **_blocking_load(cls))
            instance = _from_record(cls, record, within_hook=True)
            keep_id_text(instance, value)  # as aload(): no str(id) at the next unchanged dump
            return instance
        if session is None:
            session = LoadSession(cls._toast_routes())
            wanted = {key[0]: {(key[1], key[2])}}
            run_sync(lambda: session.fetch(wanted, follow=True), **_blocking_load(cls))
            if session.records.get(key) is None:
                raise run_sync(lambda: cls._toast_not_found(key), **_blocking_load(cls))
        elif key not in session.records:  # a reference the tree's prefetch did not foresee
            wanted = {key[0]: {(key[1], key[2])}}
            run_sync(
                lambda: session.fetch(wanted, follow=cls._toast_has_nested()),
                **_blocking_load(cls),
            )
        return cls._toast_build(key, session, within_hook=True)

    @classmethod
    def _toast_validate_untrusted(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, boundary: Boundary
    ) -> Any:
        """Input from outside: full data, or a reference its field accepts (never any I/O)."""
        name = cls._toast_settings().external_name
        keys = boundary.keys
        try:
            signed = parse_signed(value) if keys is not None else None
            reference = signed[0] if signed is not None else parse_reference(value)
        except InvalidReferenceError:
            raise PydanticCustomError(
                "external_reference_invalid", "Invalid {class_name} reference", {"class_name": name}
            ) from None
        if reference is None:
            extra = unexpected_keys(value)
            if extra is not None:  # a reference sent back with keys added: never data
                raise PydanticCustomError(
                    "external_reference_invalid",
                    "Invalid {class_name} reference: {problem}",
                    {
                        "class_name": name,
                        "problem": extra_keys_problem(
                            name, extra, client=True, signing=keys is not None
                        ),
                    },
                )
            # Full data: references nested in it are accepted only where their own field says.
            with not_accepting():
                return handler(value)
        if reference[0] != name:
            raise PydanticCustomError(
                "external_reference_class",
                "A {expected} reference is expected here, not a {class_name} reference",
                {"expected": name, "class_name": reference[0]},
            )
        if not accepting():
            raise PydanticCustomError(
                "external_reference_not_accepted",
                "A reference is not accepted here: send the {class_name}'s data",
                {"class_name": name},
            )
        key = (cls._toast_settings().url(), reference[0], reference[1])
        session = boundary.session
        # Unsigned or badly signed where signatures are required, refused by the authorization
        # hook, missing, or never fetched: the same answer, so that a client cannot tell which
        # ids exist.
        forged = keys is not None and (signed is None or verify_parsed(*signed, keys) is not None)
        if forged or session is None or key in boundary.refused or session.records.get(key) is None:
            raise PydanticCustomError(
                "external_reference_unknown", "Unknown {class_name} reference", {"class_name": name}
            )
        with trusted():
            return cls._toast_build(key, session, within_hook=True)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: cs.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """Document the reference as output and "full data or a reference" as input."""
        if (core_schema.get("metadata") or {}).get(EXPANDED_KEY):
            return handler(core_schema["schema"])
        full = handler(core_schema)
        settings = cls.__toast_settings__
        if settings is None:
            return full
        reference = reference_json_schema(settings.external_name)
        if handler.mode == "serialization":
            return reference
        if documenting_requests():
            # Request input behind the boundary: full data only, unless the field accepts
            # references (AcceptReference adds the reference shape where it is used).
            return {**full, DATA_KEY: [cls.__name__, settings.external_name]}
        return {"anyOf": [full, reference]}

    # -- the sync API: Pydantic's own methods ---------------------------------------------------

    @classmethod
    def model_construct(cls, _fields_set: set[str] | None = None, **values: Any) -> Self:
        """Pydantic's ``model_construct()``: an instance made without validation.

        Since nothing was validated, the instance's first save checks that each value is of
        its field's type and refuses one that is not with :class:`StorageValidationError`
        (Pydantic would write it as it finds it, and loading it back would fail or change it).
        """
        model = super().model_construct(_fields_set, **values)
        if cls.__toast_settings__ is not None:
            mark_unvalidated(model)
        return model

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """Pydantic's ``model_copy()``: a copy, a new record on its first dump.

        ``update`` is not validated (as in Pydantic): the copy's first save then checks, as
        after :meth:`model_construct`, that each value is of its field's type.
        """
        copied = super().model_copy(update=update, deep=deep)
        if update and type(self).__toast_settings__ is not None:
            mark_unvalidated(copied)
        return copied

    @classmethod
    def model_validate(
        cls,
        obj: Any,
        *,
        strict: bool | None = None,
        extra: ExtraValues | None = None,
        from_attributes: bool | None = None,
        context: Any | None = None,
        by_alias: bool | None = None,
        by_name: bool | None = None,
    ) -> Self:
        """Validate full data, or load the model a reference points to.

        Raises:
            RecordNotFoundError: The reference's record does not exist.
            StorageValidationError: The reference is malformed (keys added to it, too) or names
                another class (nested deeper, a reference to another class is a
                ``ValidationError`` at its location instead, so that unions can try their next
                member).
            ValidationError: The data does not validate.
        """
        with _MISMATCH_RAISED:
            return super().model_validate(
                obj,
                strict=strict,
                extra=extra,
                from_attributes=from_attributes,
                context=context,
                by_alias=by_alias,
                by_name=by_name,
            )

    @classmethod
    def model_validate_json(
        cls,
        json_data: str | bytes | bytearray,
        *,
        strict: bool | None = None,
        extra: ExtraValues | None = None,
        context: Any | None = None,
        by_alias: bool | None = None,
        by_name: bool | None = None,
    ) -> Self:
        """Like :meth:`model_validate`, from JSON text."""
        with _MISMATCH_RAISED:
            return super().model_validate_json(
                json_data,
                strict=strict,
                extra=extra,
                context=context,
                by_alias=by_alias,
                by_name=by_name,
            )

    # The signatures are Pydantic's own (2.14), except ``mode``, narrowed to the two modes that
    # exist so that a typo fails type checking too: hence the ignore[override].
    def model_dump(  # type: ignore[override]
        self,
        *,
        mode: Literal["python", "json"] = "python",
        include: IncEx | None = None,
        exclude: IncEx | None = None,
        context: Any | None = None,
        by_alias: bool | None = None,
        exclude_unset: bool = False,
        exclude_defaults: bool = False,
        exclude_none: bool = False,
        exclude_computed_fields: bool = False,
        round_trip: bool = False,
        warnings: bool | Literal["none", "warn", "error"] = True,
        fallback: Callable[[Any], Any] | None = None,
        serialize_as_any: bool = False,
        polymorphic_serialization: bool | None = None,
    ) -> ExternalReference:
        """Store the model (and external models inside it) and return its reference.

        An external model's dump always stores *all* fields, under their field names, and
        returns ``{"class_name": ..., "id": "<uuid>"}`` (an :class:`ExternalReference`). So the
        options follow one rule: those that only shape the returned reference or its JSON text
        are accepted (``mode``, ``by_alias`` (the reference has no aliased keys),
        ``round_trip``, ``warnings``); those that would change what a plain model's dump
        contains (``include``, ``exclude``, ``exclude_unset``, ``exclude_defaults``,
        ``exclude_none``, ``exclude_computed_fields``, ``context``, ``fallback``,
        ``serialize_as_any``, ``polymorphic_serialization``) raise
        :class:`StorageUsageError` when set, instead of being silently ignored. For a partial
        view of the data, validate a plain ``BaseModel`` from it
        (``View.model_validate(obj, from_attributes=True)``) and dump that.

        Raises:
            StorageUsageError: An option that cannot apply was set, or ``mode`` is unknown.
        """
        if (
            mode not in _MODES
            or include is not None
            or exclude is not None
            or context is not None
            or exclude_unset
            or exclude_defaults
            or exclude_none
            or exclude_computed_fields
            or fallback is not None
            or serialize_as_any
            or polymorphic_serialization
        ):
            _refuse_options(
                "model_dump",
                mode=mode,
                include=include,
                exclude=exclude,
                context=context,
                exclude_unset=exclude_unset,
                exclude_defaults=exclude_defaults,
                exclude_none=exclude_none,
                exclude_computed_fields=exclude_computed_fields,
                fallback=fallback,
                serialize_as_any=serialize_as_any,
                polymorphic_serialization=polymorphic_serialization,
            )
        return store(self)

    def model_dump_json(
        self,
        *,
        indent: int | None = None,
        ensure_ascii: bool = False,
        include: IncEx | None = None,
        exclude: IncEx | None = None,
        context: Any | None = None,
        by_alias: bool | None = None,
        exclude_unset: bool = False,
        exclude_defaults: bool = False,
        exclude_none: bool = False,
        exclude_computed_fields: bool = False,
        round_trip: bool = False,
        warnings: bool | Literal["none", "warn", "error"] = True,
        fallback: Callable[[Any], Any] | None = None,
        serialize_as_any: bool = False,
        polymorphic_serialization: bool | None = None,
    ) -> str:
        """Store the model like :meth:`model_dump` and return its reference as JSON.

        ``indent`` and ``ensure_ascii`` format the returned JSON; the other options follow
        :meth:`model_dump`'s rule.

        Raises:
            StorageUsageError: An option that cannot apply was set.
        """
        if (
            include is not None
            or exclude is not None
            or context is not None
            or exclude_unset
            or exclude_defaults
            or exclude_none
            or exclude_computed_fields
            or fallback is not None
            or serialize_as_any
            or polymorphic_serialization
        ):
            _refuse_options(
                "model_dump_json",
                mode="json",
                include=include,
                exclude=exclude,
                context=context,
                exclude_unset=exclude_unset,
                exclude_defaults=exclude_defaults,
                exclude_none=exclude_none,
                exclude_computed_fields=exclude_computed_fields,
                fallback=fallback,
                serialize_as_any=serialize_as_any,
                polymorphic_serialization=polymorphic_serialization,
            )
        reference = store(self)
        return pydantic_core.to_json(reference, indent=indent, ensure_ascii=ensure_ascii).decode()

    # -- the async API ----------------------------------------------------------------------------

    async def asave(self, *, force: bool = False) -> ExternalReference:
        """Store the model and the external models inside it without blocking the event loop.

        The whole tree is written in one batch per store, on the running loop's own pools.
        Models unchanged since they were loaded or last written are not written again.

        Args:
            force: Write every model of the tree, changed or not, over whatever revision is
                stored (and write deleted records back): last write wins for this call.

        Returns:
            The model's reference.

        Raises:
            ConcurrencyError: A record was changed or deleted by another writer since this
                instance read it; nothing of that store's batch was written.
        """
        if not force and (known := unchanged_reference(self)) is not None:
            return known
        reference, batch = collecting_model(self, force=force)
        await batch.write()
        return reference

    @classmethod
    async def aload(cls, reference: Mapping[str, Any] | UUID | str | ExternalBaseModel) -> Self:
        """Load a stored model without blocking the event loop.

        Args:
            reference: A reference (as ``model_dump()`` and ``asave()`` return it, or the same
                keys in a plain dict), just the id, or a saved instance (its record is read
                afresh).

        Raises:
            RecordNotFoundError: Nothing is stored under that id.
            StorageValidationError: The reference is malformed or names another class.
        """
        # The private classmethods called as functions (see _from_record below).
        url, class_name, id = key = _key_of(cls, reference)
        if not _has_nested(cls):  # one record: read it directly
            record = await read_one(current_storage(), url, class_name, id, cls)
            if record is None:
                raise await cls._toast_not_found(key)
            instance: Self = _from_record(cls, record)
            keep_id_text(instance, reference)
            return instance
        session = LoadSession(cls._toast_routes())
        await session.fetch({url: {(class_name, id)}}, follow=True)
        if session.records.get(key) is None:
            raise await cls._toast_not_found(key)
        return cls._toast_build(key, session)

    @property
    def external_id(self) -> UUID | None:
        """The id this instance is stored under, or ``None`` before its first dump."""
        identity = identity_of(self)
        # An unvalidated instance's identity is made with it, only to mark it (never written).
        return None if identity is None or type(identity) is UnvalidatedIdentity else identity.id

    @property
    def external_revision(self) -> int | None:
        """The stored revision this instance last read or wrote, ``None`` before its first dump.

        A record's revision is 1 when first written and grows by one on every write; a write
        from an instance whose revision is no longer the stored one raises
        :class:`~pydantic_toast.ConcurrencyError`. ``None`` too on a backend without revisions.
        A deleted record written back (by a forced or last-write-wins save) starts again at 1:
        a revision names a state of a record only while that record exists.
        """
        identity = identity_of(self)
        return None if identity is None or not identity.revision else identity.revision

    @classmethod
    def migrate_stored_data(cls, data: dict[str, Any], from_version: int) -> dict[str, Any]:
        """Upgrade data stored by an older ``schema_version`` before it is validated.

        Override it when you bump ``schema_version``; the default passes older data through
        unchanged and refuses data written by a newer version.

        Args:
            data: The stored fields, as decoded JSON.
            from_version: The ``schema_version`` the record was written with.
        """
        settings = cls._toast_settings()
        if from_version > settings.schema_version:
            raise StoredDataError(
                f"a stored {settings.external_name} record has schema_version {from_version}, "
                f"newer than {cls.__qualname__}'s {settings.schema_version}: it was written by "
                "newer code, so load it with that code",
                class_name=settings.external_name,
                id="?",
            )
        return data

    # -- internals --------------------------------------------------------------------------------

    def __delattr__(self, name: str) -> None:
        super().__delattr__(name)
        if name in type(self).__pydantic_fields__:  # set again, it comes last in __dict__
            forget_fingerprint(self)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["_toast_identity"] = identity_of(self)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        identity = state.pop("_toast_identity", None)
        super().__setstate__(state)
        if identity is not None:
            object.__setattr__(self, "_toast_identity", identity)

    @classmethod
    def _toast_settings(cls) -> ModelSettings:
        settings = cls.__toast_settings__
        if settings is None:
            refused = cls.__dict__.get("__toast_refused__")
            if refused is not None:  # refused by a model_rebuild() (see _toast_check_storable)
                raise StorageConfigurationError(refused)
            raise StorageConfigurationError(
                f"{cls.__qualname__} is abstract (__abstract__ = True) and has no storage of its "
                "own: use a concrete subclass"
            )
        return settings

    @classmethod
    def _toast_key(
        cls, value: Mapping[str, Any] | UUID | str | ExternalBaseModel, call: str = ""
    ) -> SessionKey:
        """Where the record ``value`` (a reference, an id or an instance) names is.

        ``call`` names the call that was given ``value``, for the error (``aload()`` if empty).
        """
        settings = cls.__toast_settings__ or cls._toast_settings()
        # A reference as dump() returns it, or a plain dict, skips isinstance(), which tries
        # each of the id types in turn (about a thousand instructions).
        kind = type(value)
        if kind is not ExternalReference and kind is not dict and isinstance(value, _ID_TYPES):
            reference = parse_reference({"class_name": settings.external_name, "id": value})
        else:
            reference = parse_reference(value)
        if reference is None and isinstance(value, ExternalBaseModel):
            reference = _instance_reference(value, call or f"{cls.__qualname__}.aload()")
        if reference is None:
            raise InvalidReferenceError(
                f"{call or f'{cls.__qualname__}.aload()'} takes a reference "
                "{'class_name': ..., 'id': ...}, an ExternalReference, an id or a saved instance"
                + ("" if isinstance(value, Mapping) else f", not {_kind(value)}"),
                class_name=settings.external_name,
            )
        class_name, id = reference
        if class_name != settings.external_name:
            raise InvalidReferenceError(_mismatch(cls, class_name), class_name=class_name, id=id)
        return (settings.url(), class_name, id)

    @classmethod
    async def _toast_not_found(cls, key: SessionKey) -> RecordNotFoundError:
        """The error for a missing record, with a rename hint when the class has no records.

        Runs on the error path only, and at most until one record of the class is seen: a
        class with no record at all under its stored name was most likely renamed.
        """
        url, class_name, id = key
        if cls.__toast_has_records__:
            return RecordNotFoundError(class_name, id)
        try:
            backend = await current_storage().connected(url)
            any_record = await backend.list_ids(class_name, limit=1)
        except ExternalStorageError:  # the hint is a nicety: never hide the real error
            return RecordNotFoundError(class_name, id)
        if any_record:
            cls.__toast_has_records__ = True
            return RecordNotFoundError(class_name, id)
        return RecordNotFoundError(
            class_name,
            id,
            detail=(
                f", and no {class_name} record exists there at all. If {cls.__qualname__} was "
                "renamed, its records are still stored under the old name: keep reading them "
                "with model_config = ExternalConfigDict(external_name='<old class name>')"
            ),
        )

    @classmethod
    def _toast_build(
        cls, key: SessionKey, session: LoadSession, *, within_hook: bool = False
    ) -> Self:
        """The instance of ``key``, its tree built leaves first (see :mod:`._loading`).

        ``within_hook``: called from the reference hook (see :meth:`_toast_from_record`).
        """
        record = session.records.get(key)
        if record is None:
            raise RecordNotFoundError(key[1], key[2])
        nested = active_session() is session
        token = None if nested else session.activate()
        try:
            session.prebuild(key, within_hook=within_hook)
            built = session.reuse(key, cls)
            if built is not None:
                return built
            return cls._toast_build_record(key, record, session, within_hook=within_hook)
        finally:
            if token is not None:
                session.deactivate(token)

    @classmethod
    def _toast_build_flat(cls, key: SessionKey, session: LoadSession) -> Self:
        """The session's instance of ``key``, for a class whose fields hold no external model.

        Such a record references nothing, so it is never part of a cycle and has no children
        to build first: :meth:`_toast_build`'s walk and bookkeeping are left out (a batch load
        builds one per record).
        """
        instance = session.instances.get(key)
        if isinstance(instance, cls):
            return instance
        record: StoredRecord | None = session.records.get(key, _UNFETCHED)
        if record is _UNFETCHED:  # a reference the tree's prefetch did not foresee
            wanted = {key[0]: {(key[1], key[2])}}
            run_sync(lambda: session.fetch(wanted, follow=False), **_blocking_load(cls))
            record = session.records.get(key)
        if record is None:
            raise RecordNotFoundError(key[1], key[2])
        instance = cls._toast_from_record(record, within_hook=True)
        session.instances[key] = instance
        return instance

    @classmethod
    def _toast_build_record(
        cls, key: SessionKey, record: StoredRecord, session: LoadSession, *, within_hook: bool
    ) -> Self:
        """Validate one record of ``session`` (active) into the session's instance of ``key``."""
        session.building.add(key)
        try:
            instance = cls._toast_from_record(record, within_hook=within_hook)
        finally:
            session.building.discard(key)
        built = session.built(key, instance)
        if owns_children(cls):  # its children know their parent (see _ownership.check_claims)
            mark_loaded(built)
        return built

    @classmethod
    def _toast_from_record(cls, record: StoredRecord, *, within_hook: bool = False) -> Self:
        """Validate a stored record as this model.

        ``within_hook``: called from the reference hook, inside Pydantic's validation, where the
        model validators outside the hook run on the result anyway (so they run once).
        """
        settings = cls.__toast_settings__ or cls._toast_settings()
        data = record.data
        if record.schema_version != settings.schema_version:
            data = cls._toast_migrated(record, settings.schema_version)
        try:
            # Stored data is JSON written by this model under field names: validate it as JSON,
            # by name, and lax, so strict models still accept their own datetimes and sets.
            fast = data_schema(cls)
            validator: Any = (
                load_validator(cls)
                if fast is None
                else fast.validator
                if within_hook
                else fast.loader
            )
            # The references inside it were written by the application: trusted.
            if is_trusted():
                instance = validator.validate_json(data, strict=False, by_alias=False, by_name=True)
            else:
                with trusted():
                    instance = validator.validate_json(
                        data, strict=False, by_alias=False, by_name=True
                    )
        except ValidationError as exc:
            problems, field = describe_errors(exc, data, cls)
            removed = _fidelity.refused_extra(exc)
            others = exc.error_count() > removed
        else:
            if data is record.data:
                identity = Identity(  # positional: a load makes one, keywords cost more
                    record.id,
                    record.created_at,
                    record.revision,
                    data,
                    False,  # exact: a store may spell the JSON differently
                    # A fingerprint when the class vouches for loaded values (see
                    # _fingerprint.load_layout) and no field was left to its default.
                    None
                    if fast is None
                    or fast.load_layout is None
                    or len(instance.__pydantic_fields_set__) != fast.fields
                    else loaded(instance.__dict__.values(), fast.load_layout),
                )
            else:  # migrated: written back on the next dump, under the new schema_version
                identity = Identity(record.id, record.created_at, record.revision, None, False)
            _set_identity(instance, identity)
            return instance  # type: ignore[no-any-return]
        # Raised outside the except block: Pydantic's error holds the stored data as input.
        if data is not record.data:
            fix = (
                f"fix {cls.__qualname__}.migrate_stored_data() so that it returns the data as "
                f"schema_version {settings.schema_version} has it"
            )
        else:
            fix = (
                "If the model changed, bump schema_version and override migrate_stored_data() "
                "to upgrade the old records, or make the field accept the stored value (a "
                "default for a new field, a union or a mode='before' validator that converts "
                "the old type)"
            )
            if removed:
                fix = (
                    "A field no longer in the model (or a model it holds) is still in the stored "
                    "record, and "
                    "extra='forbid' refuses it: bump schema_version and drop the field in "
                    "migrate_stored_data() (data.pop(name, None)), or let the model accept it "
                    "(extra='ignore' drops it as it loads, extra='allow' keeps it)"
                    + (f". {fix}" if others else "")
                )
        unreadable = StoredDataError(
            f"the stored {record.class_name} record {record.id} "
            f"(schema_version {record.schema_version}) does not validate as "
            f"{cls.__qualname__}"
            f"{' after migrate_stored_data()' if data is not record.data else ''}: "
            f"{problems}; it is left untouched. {fix[0].upper()}{fix[1:]}",
            class_name=record.class_name,
            id=record.id,
            field=field,
        )
        if not _fidelity.CHECKING.get():  # a save checking its own records refuses them
            logger.error("%s", unreadable)  # the server's data, not the caller's: worth an alert
        raise unreadable

    @classmethod
    def _toast_migrated(cls, record: StoredRecord, version: int) -> bytes:
        """``record``'s data upgraded by :meth:`migrate_stored_data` to ``version``, as JSON.

        Raises:
            StoredDataError: The hook raised (chained), or returned something else than a dict.
        """
        where = (
            f"{cls.__qualname__}.migrate_stored_data() upgrading the stored "
            f"{record.class_name} record {record.id} from schema_version "
            f"{record.schema_version} to {version}"
        )
        try:
            migrated = cls.migrate_stored_data(decode_stored(record), record.schema_version)
        except StoredDataError:
            raise
        except Exception as exc:
            raise StoredDataError(
                f"{where} raised {type(exc).__name__}; the record is left untouched. Fix the "
                "hook for records of that version (the chained error is where it failed)",
                class_name=record.class_name,
                id=record.id,
            ) from exc
        if not isinstance(migrated, dict):
            raise StoredDataError(
                f"{where} returned {type(migrated).__name__}, not the upgraded data as a dict; "
                "the record is left untouched. Make the hook return the data (`return data` "
                "after changing it in place)",
                class_name=record.class_name,
                id=record.id,
            )
        return pydantic_core.to_json(migrated, inf_nan_mode="constants")

    @classmethod
    def _toast_from_records(
        cls, records: Sequence[StoredRecord | None], ids: Sequence[UUID]
    ) -> list[Self]:
        """Validate a batch's records as this model, in order (as :meth:`_toast_from_record`).

        What :meth:`_toast_from_record` does per record, with the per-class work done once
        (a batch load's loop).

        Raises:
            RecordNotFoundError: The first record that is ``None`` (``ids`` gives its id).
            StoredDataError: The first record that does not validate.
        """
        settings = cls._toast_settings()
        fast = data_schema(cls)
        # As _toast_from_record outside the hook: the fields' own validator when the hook is
        # outermost, else the class's (its validators that wrap the hook must run).
        validator: Any = load_validator(cls) if fast is None else fast.loader
        validate = validator.validate_json
        version = settings.schema_version
        # A fingerprint per loaded instance when the class vouches (see _toast_from_record).
        layout, fields = (None, 0) if fast is None else (fast.load_layout, fast.fields)
        # Fields of atoms only (no list or dict to spell out): the fingerprint is the
        # fields' values and the layout, made here without loaded()'s two calls.
        atoms = layout is not None and not (layout[1] or layout[2])
        # One list and no dict (a usual shape): its field's name, to take the fingerprint
        # inline as loaded() does, without its call and its list of the values first.
        one_list = (
            tuple(cls.__pydantic_fields__)[layout[1][0]]
            if layout is not None and len(layout[1]) == 1 and not layout[2]
            else None
        )
        instances: list[Self] = []
        add = instances.append
        unreadable = None
        with nullcontext() if is_trusted() else trusted():  # as _toast_from_record, once
            for record in records:
                if record is None:  # (instances holds one per record before it)
                    raise RecordNotFoundError(settings.external_name, ids[len(instances)])
                if record.schema_version != version:  # migrated first
                    add(cls._toast_from_record(record))
                    continue
                data = record.data
                try:
                    instance = validate(data, strict=False, by_alias=False, by_name=True)
                except ValidationError:
                    unreadable = record  # described below, outside this block (see there)
                    break
                # Identity(...) filled in without its __init__ (a call per record less).
                identity = _new_identity(Identity)
                identity.id = record.id
                identity.created_at = record.created_at
                identity.revision = record.revision
                identity.data = data
                identity.exact = False
                identity.text = None
                if layout is None or len(instance.__pydantic_fields_set__) != fields:
                    identity.fingerprint = None
                elif atoms:
                    identity.fingerprint = (*instance.__dict__.values(), layout)
                elif one_list is not None:
                    values = instance.__dict__
                    items = values[one_list]
                    identity.fingerprint = (*values.values(), len(items), *items, layout)
                else:
                    identity.fingerprint = loaded(instance.__dict__.values(), layout)
                _set_identity(instance, identity)
                add(instance)
        if unreadable is not None:
            # Raises the error that describes it, without the stored data. Raised here, not
            # in the except block, where Pydantic's error (which quotes the stored values)
            # would be its __context__, printed with every traceback of it.
            add(cls._toast_from_record(unreadable))
            done = len(instances)  # (validated this time: a validator that changed its mind)
            instances += cls._toast_from_records(records[done:], ids[done:])
        return instances

    @classmethod
    def _toast_routes(cls) -> Routes:
        """Where the records of this model's tree are looked for (computed once)."""
        routes = cls.__toast_routes__
        if routes is None:
            routes = cls.__toast_routes__ = routes_in(cls.__pydantic_core_schema__)
        return routes

    @classmethod
    def _toast_has_nested(cls) -> bool:
        """Whether this model's fields can hold other external models (computed once)."""
        nested = cls.__toast_nested__
        if nested is None:
            nested = cls.__toast_nested__ = _schema_has_external(cls)
        return nested


_MODES = frozenset(("python", "json"))
_ID_TYPES = (UUID, str)  # a tuple: ``UUID | str`` would build a union on every call
_UNFETCHED: Any = object()  # no entry in a session's records (None: fetched, not found)


@functools.lru_cache(maxsize=256)  # bounded: classes made per test are not kept forever
def _blocking_load(cls: type[ExternalBaseModel]) -> dict[str, str]:
    """How a blocking load from async code is reported (see ``runtime.blocking``).

    Made once per class (every sync load passes it; it is read only when reporting).
    """
    name = cls.__qualname__
    return {
        "call": f"{name}.model_validate(reference)",
        "instead": f"await {name}.aload(reference) (or await pydantic_toast.avalidate(...))",
    }


_REFUSED_DEFAULTS: dict[str, object] = {
    "include": None,
    "exclude": None,
    "context": None,
    "exclude_unset": False,
    "exclude_defaults": False,
    "exclude_none": False,
    "exclude_computed_fields": False,
    "fallback": None,
    "serialize_as_any": False,
    "polymorphic_serialization": None,
}


def _refuse_options(method: str, *, mode: str, **options: object) -> None:
    if mode not in _MODES:
        raise StorageUsageError(
            f"{method}(mode={mode!r}) is not a mode: use mode='python' or mode='json' (an "
            "external model returns the same reference in both)"
        )
    refused = [
        name
        for name, default in _REFUSED_DEFAULTS.items()
        if options[name] != default and not (default is None and options[name] is False)
    ]
    if refused:
        names = ", ".join(f"{name}=" for name in refused)
        raise StorageUsageError(
            f"{method}() of an external model cannot take {names}: it always stores all fields "
            "and returns only the reference {'class_name': ..., 'id': ...}, so these options "
            "would have no effect. For a partial or reshaped view of the data, validate a plain "
            "BaseModel from the instance (View.model_validate(obj, from_attributes=True)) and "
            "dump that"
        )


class _MismatchRaised:
    """Inside it, a ``ValidationError`` that is only the model's own reference naming another
    class leaves as the seeds' :class:`InvalidReferenceError` (see ``_root_mismatch``). A
    class, not ``contextlib.contextmanager``: one is entered on every ``model_validate``."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        if isinstance(exc, ValidationError):
            mismatch = _root_mismatch(exc)
            if mismatch is not None:
                raise mismatch from None


_MISMATCH_RAISED = _MismatchRaised()


def _root_mismatch(exc: ValidationError) -> InvalidReferenceError | None:
    """The model's own reference named another class: the seeds' StorageValidationError."""
    if exc.error_count() != 1:
        return None
    (error,) = exc.errors(include_url=False, include_input=False)
    if error["type"] != "external_reference_class" or error["loc"]:
        return None
    context = error.get("ctx") or {}
    return InvalidReferenceError(
        error["msg"], class_name=context.get("class_name"), id=context.get("id")
    )


def _instance_reference(instance: ExternalBaseModel, call: str) -> tuple[str, UUID]:
    """The stored class name and id of a saved ``instance`` given where a reference goes."""
    name = type(instance)._toast_settings().external_name
    id = instance.external_id
    if id is None:
        raise InvalidReferenceError(
            f"{call} was given a {type(instance).__qualname__} that was never saved, so no "
            "record is stored under it: dump or save it first, or pass a reference or an id",
            class_name=name,
        )
    return name, id


def _kind(value: object) -> str:
    """What ``value`` is, for a message, without its content (it may be a client's data)."""
    return "None" if value is None else type(value).__name__


def _extra_keys_refusal(
    model: type[ExternalBaseModel], value: Mapping[str, Any], keys: list[str]
) -> InvalidReferenceError:
    """The refusal of ``value``, a reference with ``keys`` added, by the application's code.

    Named by the class it names (in a union, the first member reports it) when that is a
    string, else by ``model``'s.
    """
    named = value["class_name"]
    name = (
        shorten(named)
        if isinstance(named, str) and named
        else model._toast_settings().external_name
    )
    problem = extra_keys_problem(name, keys, client=False, signing=False)
    return InvalidReferenceError(problem, class_name=name)


def _mismatch(model: type[ExternalBaseModel], class_name: str) -> str:
    """Why a reference to ``class_name`` is not a ``model``, with the likely fix."""
    settings = model._toast_settings()
    class_name = shorten(class_name)  # a client may send anything, of any length
    message = (
        f"the reference names class {class_name!r}, but {model.__qualname__} is stored as "
        f"{settings.external_name!r}"
    )
    claimed = [
        f"{other.__module__}.{other.__qualname__}"
        for other in current_storage().catalog.classes_named(class_name)
    ]
    if claimed:
        return f"{message}: validate it with {' or '.join(sorted(claimed))}, or a union of both"
    return (
        f"{message}, and no model class in this process is stored as {class_name!r}. If "
        f"{model.__qualname__} was renamed from {class_name}, keep the stored name with "
        f"model_config = ExternalConfigDict(external_name={class_name!r})"
    )


def _schema_has_external(root: type[ExternalBaseModel]) -> bool:
    seen_root = False
    for node in schema_nodes(root.__pydantic_core_schema__):
        kind = node.get("type")
        if kind == "definition-ref":
            return True  # reused or recursive models: assume the worst
        model = node.get("cls") if kind == "model" else None
        if isinstance(model, type) and issubclass(model, ExternalBaseModel):
            if model is not root or seen_root:
                return True
            seen_root = True
    return False


use_identity_slot(ExternalBaseModel.__dict__["_toast_identity"])
use_owner_slot(ExternalBaseModel.__dict__["_toast_owner"])
# ExternalBaseModel's private classmethods a single load calls, as plain functions: a method
# looked up on a model class goes through Pydantic's metaclass __getattr__ hook, about 1,000
# instructions a lookup (subclasses do not override these).
_key_of = ExternalBaseModel.__dict__["_toast_key"].__func__
_has_nested = ExternalBaseModel.__dict__["_toast_has_nested"].__func__
_from_record = ExternalBaseModel.__dict__["_toast_from_record"].__func__
_new_identity = object.__new__  # (_toast_from_records fills in each slot of Identity)
if set(Identity.__slots__) != {  # pragma: no cover
    "id",
    "created_at",
    "revision",
    "data",
    "exact",
    "fingerprint",
    "text",
}:
    raise AssertionError("Identity's slots changed: update _toast_from_records")
# The slot's own setter: what object.__setattr__ ends up calling, without the name lookup.
_set_identity: Callable[[object, Identity], None] = ExternalBaseModel.__dict__[
    "_toast_identity"
].__set__
_unions.install()
