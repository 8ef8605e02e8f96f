"""The reference a stored model dumps to: ``{"class_name": ..., "id": ...}``."""

from __future__ import annotations

import sys
from array import array
from binascii import Error as BinasciiError
from binascii import unhexlify
from collections import deque
from collections.abc import Mapping
from itertools import repeat
from operator import lshift, or_
from typing import Any, cast
from uuid import UUID, SafeUUID

from pydantic_toast._exceptions import InvalidReferenceError, shorten

__all__ = [
    "CANONICAL_ID",
    "ExternalReference",
    "ParsedReference",
    "RoutedAsSent",
    "RoutedReference",
    "all_canonical",
    "extra_keys_problem",
    "made_with",
    "parse_reference",
    "trusted_reference",
    "unexpected_keys",
    "uuid_from_text",
    "uuids_from_canonical",
]


CANONICAL_ID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
"""An id as ``str(UUID)`` spells it (lower case, hyphenated), as a regular expression.

Hex digits only: ``UUID()`` (``int(text, 16)``) also reads ``+``, `` `` and ``_`` into the same
id, so a text it parses is ``str(id)`` exactly when it matches this."""

ParsedReference = tuple[str, UUID]
"""A reference as the library uses it inside: ``(class_name, id)``."""


class ExternalReference(dict[str, str]):
    """Where a stored model lives: ``{"class_name": "<stored class name>", "id": "<uuid>"}``.

    It *is* that dict (a ``dict`` subclass): ``ref["id"]``, ``json.dumps(ref)``, ``dict(ref)``
    and ``ref == {"class_name": ..., "id": ...}`` work as on the plain dict, and Pydantic
    serializes it as one. ``model_dump()``, ``asave()``, ``dump()`` and ``adump()`` return it.
    Two typed accessors are added on top:

    - :attr:`class_name`: the stored class name (``ref["class_name"]``);
    - :attr:`uuid`: the id as a :class:`~uuid.UUID` (``ref["id"]`` is its string form).

    There is no ``.id`` attribute on purpose: ``ref["id"]`` is a string and ``ref.uuid`` a
    UUID, and a third spelling would have to pick one of them silently.

    Example::

        ref = await order.asave()
        ref["id"]                     # '0b6f...' (str)
        ref.uuid                      # UUID('0b6f...')
        Order.model_validate(ref)     # or Order.model_validate({"class_name": ..., "id": ...})
    """

    # The id this reference was made with and its text: while ``self["id"]`` is still that
    # very text object (str is immutable), parsing it again would give the same id, so a load
    # skips the parse (a third of a load's own work at 10 fields). Never compared nor
    # serialized: the reference is still just its two keys. (Two slots, not a tuple in one:
    # an unchanged re-dump makes a reference, and the tuple cost it 3%.)
    __slots__ = ("_toast_made_id", "_toast_made_text")

    _toast_made_id: UUID
    _toast_made_text: str

    def __init__(self, class_name: str, id: UUID | str) -> None:
        """Build a reference from a stored class name and an id (a UUID or its string form).

        Raises:
            InvalidReferenceError: ``id`` is not a UUID.
        """
        if not isinstance(id, UUID):
            # A str id is normalised (and checked) once here, so that .uuid cannot fail later.
            try:
                id = UUID(id)
            except (TypeError, ValueError, AttributeError):
                raise InvalidReferenceError(
                    f"the {class_name} reference's id is not a UUID: pass a UUID or its string",
                    class_name=class_name,
                ) from None
        text = str(id)
        dict.__init__(self, class_name=class_name, id=text)
        self._toast_made_text = text
        self._toast_made_id = id

    @property
    def class_name(self) -> str:
        """The stored class name, the same as ``self["class_name"]``."""
        return self["class_name"]

    @property
    def uuid(self) -> UUID:
        """The id as a :class:`~uuid.UUID` (``self["id"]`` is the string form)."""
        return UUID(self["id"])

    def __repr__(self) -> str:
        return f"ExternalReference({dict.__repr__(self)})"


_new_dict = dict.__new__


def trusted_reference(class_name: str, id_text: str, id: UUID) -> ExternalReference:
    """An :class:`ExternalReference` of ``id`` whose text ``id_text`` is ``str(id)``.

    For the library's own ids: no check and no conversion (a save returns one every time).
    """
    reference: ExternalReference = _new_dict(ExternalReference)
    reference["class_name"] = class_name
    reference["id"] = id_text
    reference._toast_made_text = id_text
    reference._toast_made_id = id
    return reference


def made_with(reference: ExternalReference, text: object) -> UUID | None:
    """The id ``reference`` was made with, when ``text`` (its ``"id"`` now) is still the very
    text it was made with (``str(id)``, canonical); else ``None`` (parse ``text``)."""
    try:
        if reference._toast_made_text is text:
            return reference._toast_made_id
    except AttributeError:  # made without __init__ (copy.copy of one made so, a subclass's)
        pass
    return None


class RoutedReference(dict[str, Any]):
    """A reference with a discriminated union's tag added, so the union picks its member.

    Built only by the union router in ``_unions``; the member's validator reads the reference
    back from :attr:`parsed` and ignores the added key.
    """

    __slots__ = ("parsed",)

    def __init__(
        self, reference: Mapping[str, Any], key: str, tag: object, parsed: ParsedReference
    ):
        dict.__init__(self, reference)
        self[key] = tag
        self.parsed = parsed


class RoutedAsSent(dict[str, Any]):
    """A mapping with ``class_name`` and ``id`` and other keys besides (a signed reference, or
    one with keys added), with a discriminated union's tag added, so the union picks the member
    that checks it.

    Built only by the union router in ``_unions``; :func:`unexpected_keys` and
    ``_signing.parse_signed`` read it as :attr:`sent`, without the added key (not a
    reference to :func:`parse_reference`, as what was sent is not).
    """

    __slots__ = ("sent",)

    def __init__(self, sent: Mapping[str, Any], key: str, tag: object):
        dict.__init__(self, sent)
        self[key] = tag
        self.sent = sent


def parse_reference(value: object, ids: dict[str, UUID] | None = None) -> ParsedReference | None:
    """Return ``(class_name, id)`` when ``value`` is a reference, ``None`` when it is data.

    A reference is a mapping with exactly the keys ``class_name`` and ``id`` (an
    :class:`ExternalReference` is one). One with other keys besides is ``None`` here, for the
    walks over nested data; where a model's validation starts, :func:`unexpected_keys`
    refuses it. ``ids`` memoizes id strings already parsed (a load
    session's, where every reference is parsed once for the prefetch and once by its
    validator): the same text gives the same ``UUID`` object, which also makes the session's
    key comparisons identity checks.

    Raises:
        InvalidReferenceError: It has the shape of a reference but a malformed value.
    """
    if type(value) is RoutedReference:
        return value.parsed
    # A plain dict or the library's own reference skips the ABC check (a batch parses one
    # reference per record, a load one).
    kind = type(value)
    if kind is not dict and kind is not ExternalReference and not isinstance(value, Mapping):
        return None
    value = cast("Mapping[str, Any]", value)
    # Two keys, both of them: keys() == {"class_name", "id"} without its set comparison.
    if len(value) != 2 or "class_name" not in value or "id" not in value:
        return None
    class_name: Any = value["class_name"]
    raw_id: Any = value["id"]
    if not isinstance(class_name, str) or not class_name:
        raise InvalidReferenceError(
            "a reference's 'class_name' must be a non-empty string, "
            f"got {type(class_name).__name__}"
        )
    if type(raw_id) is str:
        if kind is ExternalReference:  # the library's own: the id it was made with, unparsed
            made = made_with(value, raw_id)  # type: ignore[arg-type]
            if made is not None:
                return class_name, made
        known = ids.get(raw_id) if ids is not None else None
        if known is not None:
            return class_name, known
        try:
            id = uuid_from_text(raw_id)
        except ValueError:
            pass
        else:
            if ids is not None:
                ids[raw_id] = id
            return class_name, id
    elif isinstance(raw_id, UUID):
        return class_name, raw_id
    elif isinstance(raw_id, str):
        try:
            return class_name, UUID(raw_id)
        except ValueError:
            pass
    raise InvalidReferenceError(
        f"the {class_name} reference's 'id' is not a UUID (got a {type(raw_id).__name__} that "
        "does not parse as one): pass the id exactly as model_dump() returned it",
        class_name=class_name,
        id=raw_id if isinstance(raw_id, str) else None,
    )


def unexpected_keys(value: object) -> list[str] | None:
    """The keys of a mapping holding both ``class_name`` and ``id`` besides those two (as their
    names, shortened), ``None`` for any other value.

    For a value :func:`parse_reference` did not take for a reference: such a mapping is a
    reference sent back with keys added (or a signed one where signatures are not checked),
    never a model's data, since no field may be named or aliased ``class_name``. Validated as
    data, it would make a blank new record. (Only where a model's validation starts: nested
    data of any kind, a dict field, may hold such a mapping.)
    """
    if type(value) is not dict and not isinstance(value, Mapping):
        return None
    if "class_name" not in value or "id" not in value:
        return None
    if type(value) is RoutedAsSent:
        value = value.sent  # as it was sent, without the union's tag
    return [shorten(repr(key), 40) for key in value if key != "class_name" and key != "id"]


_SIGNED_PARTS = frozenset(("'signature'", "'expires_at'"))


def extra_keys_problem(class_name: str, keys: list[str], *, client: bool, signing: bool) -> str:
    """Why a reference with ``keys`` added (:func:`unexpected_keys`) is refused, and the fix.

    ``client``: the reference came from a client (an integration's request), which can only
    send it again; else from the application's code. ``signing``: signed references are
    checked where it came from, so their two keys are no explanation for the others.
    """
    if signing:
        keys = [key for key in keys if key not in _SIGNED_PARTS] or keys
    names = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    if client:
        return (
            f"unexpected keys {names}: send the reference exactly as it was issued (a mapping "
            f"with 'class_name' and 'id' is a reference, never {class_name} data)"
        )
    if _SIGNED_PARTS.issuperset(keys):
        return (
            f"the {class_name} reference is signed (it has the keys {names}): check it with "
            "verify_reference(value, keys) and validate the reference it returns (a mapping "
            f"with 'class_name' and 'id' is a reference, never {class_name} data)"
        )
    return (
        f"the {class_name} reference has unexpected keys {names}: a mapping with 'class_name' "
        f"and 'id' is a reference, never {class_name} data. Pass the reference exactly as it "
        "was issued ({'class_name', 'id'}), or the data without 'class_name'"
    )


def uuid_from_text(text: str) -> UUID:
    """``UUID(text)``: the same parse, without ``UUID.__init__``'s argument dispatch.

    Half the cost of ``UUID(text)`` (a batch load parses one id per record).

    Raises:
        ValueError: ``text`` is not a UUID, exactly when ``UUID(text)`` raises.
    """
    digits = text.replace("-", "")
    if len(digits) != 32:
        # Not the canonical form: UUID()'s prefixes and braces. (Digits of the right length
        # that still hold any of them fail int() below, as they fail UUID().)
        digits = text.replace("urn:", "").replace("uuid:", "").strip("{}").replace("-", "")
        if len(digits) != 32:
            raise ValueError("badly formed hexadecimal UUID string")
    value = int(digits, 16)
    parsed = _new_object(UUID)
    _set_int(parsed, value)  # the slots UUID.__init__ sets (through object.__setattr__)
    _set_is_safe(parsed, _UNKNOWN_SAFETY)
    return parsed


def uuids_from_canonical(texts: list[str]) -> list[UUID] | None:
    """``[UUID(text) for text in texts]`` when every text is :data:`CANONICAL_ID`, else ``None``.

    The whole list is checked (:func:`_packed_ids`) and converted at once, each step a builtin
    over all of it: each id's 16 bytes read as its int, set into a new ``UUID`` as
    ``UUID.__init__`` would. Parsing them one by one (:func:`uuid_from_text`) cost a batch
    load 6,000 instructions an id, this 4,500 (callgrind, 1,000 ids).
    """
    packed = _packed_ids(texts)
    if packed is None:
        return None
    count = len(texts)
    halves = array(_HALF, packed)  # each id's 16 bytes as two 64-bit halves, high one first
    if _LITTLE_ENDIAN:
        halves.byteswap()
    values = map(or_, map(lshift, halves[0::2], repeat(64)), halves[1::2])
    ids: list[UUID] = list(map(_new_object, repeat(UUID, count)))
    _consume(map(_set_int, ids, values), maxlen=0)
    _consume(map(_set_is_safe, ids, repeat(_UNKNOWN_SAFETY, count)), maxlen=0)
    return ids


def all_canonical(texts: list[str]) -> bool:
    """Whether every text is :data:`CANONICAL_ID`: ``str(UUID(text)) == text`` for each."""
    return _packed_ids(texts) is not None


def _packed_ids(texts: list[str]) -> bytes | None:
    """The 16 bytes of each id, joined, when every text is :data:`CANONICAL_ID`, else ``None``.

    The texts are joined and encoded once; the hyphens must stand where ``str(UUID)`` puts them
    and nowhere else, the rest be lower-case hex (``unhexlify`` refuses any other character).
    A regular expression over the joined texts cost 2,000 instructions an id.
    """
    if not _ID_LENGTH.issuperset(map(len, texts)):  # else one could borrow from the next
        return None
    count = len(texts)
    joined = "".join(texts).encode()
    hyphens = b"-" * count
    if len(joined) != 36 * count or any(joined[at::36] != hyphens for at in _HYPHENS_AT):
        return None
    digits = joined.translate(None, b"-")
    if len(digits) != 32 * count or digits != digits.lower():
        return None
    try:
        return unhexlify(digits)
    except BinasciiError:
        return None


_HYPHENS_AT = (8, 13, 18, 23)  # where str(UUID) puts them
_ID_LENGTH = frozenset((36,))
_HALF = next(code for code in "QL" if array(code).itemsize == 8)  # a 64-bit unsigned int
_LITTLE_ENDIAN = sys.byteorder == "little"  # ids' bytes are big-endian (as UUID(bytes=...))
_consume = deque  # deque(iterator, maxlen=0) runs an iterator for its effects, keeping nothing
_new_object = object.__new__
# The slots' own setters: object.__setattr__ looks each name up first (callgrind: 7,138 ->
# 6,224 instructions per parsed id).
_set_int = UUID.__dict__["int"].__set__
_set_is_safe = UUID.__dict__["is_safe"].__set__
_UNKNOWN_SAFETY = SafeUUID.unknown  # looked up once: an enum member's lookup costs 0.5 µs
