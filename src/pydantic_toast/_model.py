"""``ExternalBaseModel``: a Pydantic model whose data lives in external storage."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self
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
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema as cs

from pydantic_toast._config import ExternalConfigDict, ModelSettings, settings_for
from pydantic_toast._exceptions import (
    RecordNotFoundError,
    StorageConfigurationError,
    StorageValidationError,
    StoredDataError,
)
from pydantic_toast._loading import (
    LoadSession,
    Routes,
    SessionKey,
    active_session,
    read_one,
    routes_in,
)
from pydantic_toast._records import StoredRecord
from pydantic_toast._reference import ExternalReference, as_reference
from pydantic_toast._saving import Identity, collecting, identity_of, is_serializing, store
from pydantic_toast.runtime.loops import run_sync
from pydantic_toast.runtime.storage import current_storage

__all__ = ["ExternalBaseModel"]


class ExternalBaseModel(BaseModel):
    """A Pydantic model stored in external storage and passed around as a reference.

    ``model_dump()`` and ``model_dump_json()`` store the model and return
    ``{"class_name": ..., "id": ...}``; ``model_validate()`` and ``model_validate_json()`` take
    such a reference and load the model (full data still validates as usual). This holds
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

    __slots__ = ("_toast_identity",)

    __abstract__: ClassVar[bool] = True
    """Set ``__abstract__ = True`` in a subclass body to make a base without its own storage."""

    __toast_settings__: ClassVar[ModelSettings | None] = None
    __toast_nested__: ClassVar[bool | None] = None
    __toast_routes__: ClassVar[Routes | None] = None

    model_config = ExternalConfigDict(ser_json_inf_nan="constants")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """Check the storage configuration when the class is defined."""
        super().__pydantic_init_subclass__(**kwargs)
        cls.__toast_nested__ = None
        cls.__toast_routes__ = None
        if cls.__dict__.get("__abstract__", False):
            cls.__toast_settings__ = None
        else:
            cls.__toast_settings__ = settings_for(cls)

    # -- the hooks Pydantic's core calls, nested or not -----------------------------------------

    @model_serializer(mode="wrap")
    def _toast_serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        if is_serializing(self):
            return handler(self)  # type: ignore[no-any-return]
        return store(self).as_dict()

    @model_validator(mode="wrap")
    @classmethod
    def _toast_validate(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        reference = as_reference(value)
        if reference is None:
            return handler(value)
        key = cls._toast_session_key(reference)
        session = active_session()
        if session is None and not cls._toast_has_nested():  # one record: read it directly
            storage = current_storage()
            record = run_sync(lambda: read_one(storage, *key))
            if record is None:
                raise RecordNotFoundError(key[1], key[2])
            return cls._toast_from_record(record)
        if session is None or key not in session.records:
            session = session or LoadSession(cls._toast_routes())
            wanted = {key[0]: {(key[1], key[2])}}
            run_sync(lambda: session.fetch(wanted, follow=cls._toast_has_nested()))
        return cls._toast_build(key, session)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: cs.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """Document the reference as output and "full data or a reference" as input."""
        full = handler(core_schema)
        settings = cls.__toast_settings__
        if settings is None:
            return full
        reference: JsonSchemaValue = {
            "type": "object",
            "title": f"{settings.external_name} reference",
            "description": f"A stored {settings.external_name}, as its class name and id.",
            "properties": {
                "class_name": {"type": "string", "const": settings.external_name},
                "id": {"type": "string", "format": "uuid"},
            },
            "required": ["class_name", "id"],
            "additionalProperties": False,
        }
        if handler.mode == "serialization":
            return reference
        return {"anyOf": [full, reference]}

    # -- the sync API: Pydantic's own methods ---------------------------------------------------

    def model_dump(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Store the model (and external models inside it) and return its reference.

        Returns ``{"class_name": ..., "id": "<uuid>"}`` once the data is written. Pydantic's
        options (``include``, ``exclude``, ``by_alias``, ``mode``, ...) are accepted and do not
        change what is stored: all fields, under their field names.
        """
        return store(self).as_dict()

    def model_dump_json(self, *args: Any, **kwargs: Any) -> str:
        """Store the model like :meth:`model_dump` and return its reference as JSON."""
        reference = store(self).as_dict()
        return pydantic_core.to_json(reference, indent=kwargs.get("indent")).decode()

    # -- the async API ----------------------------------------------------------------------------

    async def asave(self) -> ExternalReference:
        """Store the model and the external models inside it without blocking the event loop.

        The whole tree is written in one batch per store, on the running loop's own pools.

        Returns:
            The model's reference.
        """
        reference, batch = collecting(lambda: store(self))
        await batch.write()
        return reference

    @classmethod
    async def aload(cls, reference: ExternalReference | Mapping[str, Any] | UUID | str) -> Self:
        """Load a stored model without blocking the event loop.

        Args:
            reference: A reference (as ``model_dump()`` returns it, or an
                :class:`ExternalReference`), or just the id.

        Raises:
            RecordNotFoundError: Nothing is stored under that id.
            StorageValidationError: The reference is malformed or names another class.
        """
        url, class_name, id = key = cls._toast_session_key(cls._toast_reference(reference))
        if not cls._toast_has_nested():  # one record: read it directly
            record = await read_one(current_storage(), url, class_name, id)
            if record is None:
                raise RecordNotFoundError(class_name, id)
            return cls._toast_from_record(record)
        session = LoadSession(cls._toast_routes())
        await session.fetch({url: {(class_name, id)}}, follow=True)
        return cls._toast_build(key, session)

    @property
    def external_id(self) -> UUID | None:
        """The id this instance is stored under, or ``None`` before its first dump."""
        identity = identity_of(self)
        return None if identity is None else identity.id

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
            raise StorageConfigurationError(
                f"{cls.__qualname__} is abstract (__abstract__ = True) and has no storage of its "
                "own: use a concrete subclass"
            )
        return settings

    @classmethod
    def _toast_reference(
        cls, value: ExternalReference | Mapping[str, Any] | UUID | str
    ) -> ExternalReference:
        if isinstance(value, UUID | str):
            reference = as_reference(
                {"class_name": cls._toast_settings().external_name, "id": value}
            )
        else:
            reference = as_reference(value)
        if reference is None:
            raise StorageValidationError(
                f"{cls.__qualname__}.aload() takes a reference {{'class_name': ..., 'id': ...}}, "
                "an ExternalReference or an id",
                class_name=cls._toast_settings().external_name,
            )
        return reference

    @classmethod
    def _toast_session_key(cls, reference: ExternalReference) -> SessionKey:
        settings = cls._toast_settings()
        if reference.class_name != settings.external_name:
            raise StorageValidationError(
                f"the reference names class {reference.class_name!r}, but {cls.__qualname__} is "
                f"stored as {settings.external_name!r}: validate it with the model it came from",
                class_name=reference.class_name,
                id=reference.id,
            )
        return (settings.url(), reference.class_name, reference.id)

    @classmethod
    def _toast_build(cls, key: SessionKey, session: LoadSession) -> Self:
        record = session.records.get(key)
        if record is None:
            raise RecordNotFoundError(key[1], key[2])
        if active_session() is session:
            return cls._toast_from_record(record)
        token = session.activate()
        try:
            return cls._toast_from_record(record)
        finally:
            session.deactivate(token)

    @classmethod
    def _toast_from_record(cls, record: StoredRecord) -> Self:
        settings = cls._toast_settings()
        data = record.data
        if record.schema_version != settings.schema_version:
            decoded = pydantic_core.from_json(data, allow_inf_nan=True)
            migrated = cls.migrate_stored_data(decoded, record.schema_version)
            data = pydantic_core.to_json(migrated, inf_nan_mode="constants")
        try:
            # Stored data is JSON written by this model under field names: validate it as JSON,
            # by name, and lax, so strict models still accept their own datetimes and sets.
            instance = cls.__pydantic_validator__.validate_json(
                data, strict=False, by_alias=False, by_name=True
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, error['loc'])) or '<root>'}: {error['msg']}"
                for error in exc.errors(include_input=False, include_url=False)[:5]
            )
        else:
            object.__setattr__(instance, "_toast_identity", Identity(record.id, record.created_at))
            return instance  # type: ignore[no-any-return]
        # Raised outside the except block: Pydantic's error holds the stored data as input.
        raise StoredDataError(
            f"the stored {record.class_name} record {record.id} "
            f"(schema_version {record.schema_version}) does not validate as "
            f"{cls.__qualname__}: {problems}. If the model changed, bump schema_version and "
            "override migrate_stored_data() to upgrade old records",
            class_name=record.class_name,
            id=record.id,
        )

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


def _schema_has_external(root: type[ExternalBaseModel]) -> bool:
    seen_root = False
    stack: list[object] = [root.__pydantic_core_schema__]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            kind = node.get("type")
            if kind == "definition-ref":
                return True  # reused or recursive models: assume the worst
            model = node.get("cls") if kind == "model" else None
            if isinstance(model, type) and issubclass(model, ExternalBaseModel):
                if model is not root or seen_root:
                    return True
                seen_root = True
            stack.extend(value for value in node.values() if isinstance(value, dict | list))
        elif isinstance(node, list):
            stack.extend(node)
    return False
