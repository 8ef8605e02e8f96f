"""Property test: on every backend, a stored model comes back exactly, or is refused unwritten.

Each example defines a model from a random choice of Pydantic field types, fills it with
generated values, dumps it and loads it back. Every example ends in one of:

* ``same``: the loaded model equals the original, value for value and type for type;
* ``refused``: the dump raised :class:`StorageValidationError` naming a field, and nothing was
  written;
* ``changed``: it loaded, but a value or a type differs (must never happen);
* ``unreadable``: it was saved, but loading it failed (must never happen);
* ``bad_error``: the dump failed with another exception (must never happen).

CI runs a bounded run with a fixed seed; ``make fuzz`` runs ``TOAST_FUZZ_EXAMPLES`` (5,000) per
backend with a random seed (or ``TOAST_FUZZ_SEED``) and prints, per backend, the seed, the
examples, changed, refused and saved-but-unreadable counts and the duration.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
import math
import os
import random
import time as clock
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, Json
from typing_extensions import TypedDict

from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    RecordNotFoundError,
    StorageValidationError,
)

EXAMPLES = int(os.environ.get("TOAST_FUZZ_EXAMPLES", "60"))
FUZZING = "TOAST_FUZZ_EXAMPLES" in os.environ
# CI: a fixed seed; make fuzz: a random one, printed, unless TOAST_FUZZ_SEED gives it.
SEED = int(os.environ.get("TOAST_FUZZ_SEED") or (random.randrange(2**32) if FUZZING else 0))


class Color(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


class Wide(enum.IntEnum):
    SMALL = 1
    HUGE = 2**64  # outside the signed 64-bit range, next to a member inside it


class Point(BaseModel):
    x: float
    y: float | None = None  # NaN and infinities came back None (written as null)
    tags: list[str] = []


class Spelled(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="strings")
    value: float | str


class Derived(Point):
    z: float = 0.0


@dataclasses.dataclass
class Span:
    width: float
    label: str = ""


class Box(TypedDict):
    side: float
    name: str


class Cat(BaseModel):
    kind: Literal["cat"] = "cat"
    lives: int


class Dog(BaseModel):
    kind: Literal["dog"] = "dog"
    name: str


# -- values ---------------------------------------------------------------------------------------

_SPECIAL_FLOATS = [
    -0.0,
    0.0,
    1e16,
    1e22,
    1e300,
    5e-324,
    2.2250738585072014e-308,
    1.5e-7,
    math.inf,
    -math.inf,
    math.nan,
]
floats = st.one_of(st.floats(), st.sampled_from(_SPECIAL_FLOATS))
big_ints = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    # Around the 4,300-digit limit of Pydantic's JSON parser (built lazily: their repr fails).
    st.builds(
        lambda digits, sign: sign * (10**digits - 1),
        st.sampled_from([4299, 4300, 4301]),
        st.sampled_from([1, -1]),
    ),
)
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
text_with_surrogates = st.text(st.characters(exclude_categories=[]), max_size=8)
# Lone surrogates are rare in text_with_surrogates (1 string in 500): keys made of them and of
# the U+FFFD characters Pydantic wrote them as.
replaced_keys = st.text(st.sampled_from("a\ufffd\ud800\udfff"), max_size=3)
# Offsets of whole minutes, of seconds (Pydantic writes +HH:MM: refused) and IANA zones (local
# mean time before about 1900 has offsets of seconds).
offsets = st.one_of(
    st.builds(lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-1439, 1439)),
    st.builds(lambda seconds: timezone(timedelta(seconds=seconds)), st.integers(-86399, 86399)),
    st.timezones(),
)
json_values = st.recursive(
    st.none() | st.booleans() | big_ints | floats | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)


@dataclass(frozen=True)
class Kind:
    """A field type and a strategy for the values it takes (as keyword arguments)."""

    annotation: Any
    values: st.SearchStrategy[Any]
    field: Any = None  # a pydantic Field(...) for aliases
    key: str | None = None  # the keyword the value is passed under (an alias)


def kinds(
    child: type[ExternalBaseModel], left: type[ExternalBaseModel], right: type[ExternalBaseModel]
) -> dict[str, Kind]:
    """Every field kind the property test draws from; the arguments are external models."""
    points = st.builds(Point, x=floats, y=st.none() | floats, tags=st.lists(text, max_size=2))
    children = st.builds(child, value=st.one_of(big_ints, floats), note=text)
    return {
        "text": Kind(str, text),
        "text_surrogates": Kind(str, text_with_surrogates),
        "integer": Kind(int, big_ints),
        "real": Kind(float, floats),
        "int_or_float": Kind(int | float, st.one_of(big_ints, floats)),
        "anything": Kind(Any, json_values),
        "mapping": Kind(dict[str, Any], st.dictionaries(text, json_values, max_size=3)),
        # A lone surrogate in a key was written as U+FFFD characters, two keys merged into one.
        "keys_surrogates": Kind(dict[str, int], st.dictionaries(replaced_keys, st.integers())),
        "decimal": Kind(
            Annotated[Decimal, Field(allow_inf_nan=True)],
            st.decimals(allow_nan=True, allow_infinity=True).filter(lambda d: not d.is_snan()),
        ),
        "raw": Kind(bytes, st.binary(max_size=12)),
        "day": Kind(date, st.dates()),
        "clock": Kind(time, st.times(timezones=st.none() | offsets)),
        "moment": Kind(datetime, st.datetimes(timezones=st.none() | offsets)),
        "duration": Kind(timedelta, st.timedeltas()),
        "uuid": Kind(UUID, st.uuids()),
        "color": Kind(Color, st.sampled_from(Color)),
        "wide": Kind(Wide, st.sampled_from(Wide)),
        "literal": Kind(Literal["a", "b", 3], st.sampled_from(["a", "b", 3])),
        "items": Kind(list[int | float], st.lists(st.one_of(big_ints, floats), max_size=4)),
        "pair": Kind(tuple[int, str, float], st.tuples(big_ints, text, floats)),
        "numbers": Kind(set[int], st.sets(big_ints, max_size=4)),
        # A deque's maxlen came back None. (A Sequence comes back a list, as documented: only
        # lists are drawn for it.)
        "sequence": Kind(Sequence[int], st.lists(big_ints, max_size=3)),
        "bounded": Kind(
            deque[int],
            st.builds(deque, st.lists(st.integers(), max_size=3), st.none() | st.integers(3, 5)),
        ),
        "labels": Kind(frozenset[str], st.frozensets(text, max_size=4)),
        "maybe": Kind(float | None, st.none() | floats),
        "point": Kind(Point, points),
        "points": Kind(dict[str, list[Point]], st.dictionaries(text, st.lists(points, max_size=2))),
        "maybe_point": Kind(Point | None, st.none() | points),
        "family": Kind(Point | Derived, st.one_of(points, st.builds(Derived, x=floats, z=floats))),
        "spelled": Kind(Spelled, st.builds(Spelled, value=floats)),
        "span": Kind(Span, st.builds(Span, width=floats, label=text)),
        "box": Kind(Box, st.fixed_dictionaries({"side": floats, "name": text})),
        "child": Kind(child, children),
        "children": Kind(list[child], st.lists(children, max_size=3)),  # type: ignore[valid-type]
        "maybe_child": Kind(child | None, st.none() | children),
        "side": Kind(
            Annotated[left | right, Field(discriminator="kind")],
            st.one_of(
                st.builds(left, amount=st.one_of(big_ints, floats)),
                st.builds(right, label=text),
            ),
        ),
        "aliased": Kind(int, big_ints, Field(alias="Aliased-Name"), "Aliased-Name"),
        "split_alias": Kind(
            float,
            floats,
            Field(validation_alias="in_name", serialization_alias="out_name"),
            "in_name",
        ),
        "json_list": Kind(
            Json[list[int | float]],
            st.lists(st.one_of(st.integers(), floats), max_size=4).map(json.dumps),
        ),
        "pet": Kind(
            Annotated[Cat | Dog, Field(discriminator="kind")],
            st.one_of(st.builds(Cat, lives=big_ints), st.builds(Dog, name=text)),
        ),
    }


# -- the models, one class per backend and choice of fields --------------------------------------

_names = itertools.count()


class Models:
    """Model classes for one storage URL, made on demand and reused."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.child = self._external("Child", {"value": int | float, "note": str})
        left = self._external("Left", {"kind": Literal["left"], "amount": int | float})
        right = self._external("Right", {"kind": Literal["right"], "label": str})
        self.kinds = kinds(self.child, left, right)
        self._classes: dict[tuple[str, ...], type[ExternalBaseModel]] = {}

    def _external(self, name: str, annotations: dict[str, Any]) -> type[ExternalBaseModel]:
        config = ExternalConfigDict(storage=self.url, external_name=f"Fuzz{name}{next(_names)}")
        namespace: dict[str, Any] = {"__annotations__": annotations, "model_config": config}
        if "kind" in annotations:
            namespace["kind"] = annotations["kind"].__args__[0]
        return type(name, (ExternalBaseModel,), namespace)

    def model(self, chosen: tuple[str, ...]) -> type[ExternalBaseModel]:
        cls = self._classes.get(chosen)
        if cls is None:
            annotations = {}
            namespace: dict[str, Any] = {
                "model_config": ExternalConfigDict(
                    storage=self.url, external_name=f"Fuzz{next(_names)}"
                )
            }
            for name in chosen:
                kind = self.kinds[name]
                annotations[name] = kind.annotation
                if kind.field is not None:
                    namespace[name] = kind.field
            namespace["__annotations__"] = annotations
            cls = self._classes[chosen] = type("Fuzzed", (ExternalBaseModel,), namespace)
        return cls


# -- comparing ------------------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types; NaN equals NaN, -0.0 differs from 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, Decimal):
        return a.compare_total(b) == 0
    if isinstance(a, datetime | time):
        return a.replace(tzinfo=None) == b.replace(tzinfo=None) and a.utcoffset() == b.utcoffset()
    if isinstance(a, BaseModel):
        return all(same(getattr(a, n), getattr(b, n)) for n in type(a).model_fields)
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, deque) and a.maxlen != b.maxlen:
        return False
    if isinstance(a, list | tuple | deque):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


# -- the property ---------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the examples of one backend came to, with the first few problems."""

    counts: Counter[str]
    problems: list[str]
    refused_fields: Counter[str]

    def add(self, outcome: str, detail: str | None = None) -> None:
        self.counts[outcome] += 1
        if detail is not None and len(self.problems) < 10:
            self.problems.append(f"{outcome}: {detail[:500]}")


TALLIES: dict[str, Tally] = {}


def run_example(models: Models, chosen: tuple[str, ...], data: st.DataObject, tally: Tally) -> None:
    """Dump one generated model, load it back and tally the outcome."""
    cls = models.model(chosen)
    values = {
        models.kinds[name].key or name: data.draw(models.kinds[name].values, label=name)
        for name in chosen
    }
    instance = cls.model_validate(values)
    try:
        reference = instance.model_dump()
    except StorageValidationError as exc:
        if not exc.field:
            tally.add("bad_error", f"{chosen}: the refusal names no field: {exc}")
            return
        written = [m for m in externals(instance) if is_written(m)]
        if written:
            names = sorted({type(m).__name__ for m in written})
            tally.add("bad_error", f"{chosen}: refused but written ({names}): {exc}")
            return
        tally.add("refused")
        where = exc.field.split(".")[0]
        if exc.class_name != reference_name(cls):  # a nested external model's field
            where = f"{(exc.class_name or '').rstrip('0123456789')}.{where}"
        tally.refused_fields[where] += 1
        return
    except Exception as exc:
        tally.add("bad_error", f"{chosen}: {type(exc).__name__}: {exc}")
        return
    try:
        loaded = cls.model_validate(reference)
    except Exception as exc:
        tally.add("unreadable", f"{chosen}: {type(exc).__name__}: {exc}")
        return
    if same(instance, loaded):
        tally.add("same")
    else:
        tally.add(
            "changed",
            f"{chosen}: "
            + "; ".join(
                f"{n}: {short(getattr(instance, n))} -> {short(getattr(loaded, n))}"
                for n in cls.model_fields
                if not same(getattr(instance, n), getattr(loaded, n))
            ),
        )


def externals(value: Any) -> list[ExternalBaseModel]:
    """The external models in ``value`` (itself included), each once."""
    found: dict[int, ExternalBaseModel] = {}

    def walk(item: Any) -> None:
        if isinstance(item, ExternalBaseModel):
            if id(item) in found:
                return
            found[id(item)] = item
        if isinstance(item, BaseModel):
            for name in type(item).model_fields:
                walk(getattr(item, name))
        elif isinstance(item, dict):
            for each in item.values():
                walk(each)
        elif isinstance(item, list | tuple | set | frozenset):
            for each in item:
                walk(each)

    walk(value)
    return list(found.values())


def is_written(model: ExternalBaseModel) -> bool:
    """Whether a record of ``model`` exists in its store."""
    if model.external_id is None:
        return False
    cls = type(model)
    try:
        cls.model_validate({"class_name": reference_name(cls), "id": model.external_id})
    except RecordNotFoundError:
        return False
    return True


def short(value: object) -> str:
    """A repr cut to 80 characters (integers beyond the str conversion limit included)."""
    try:
        return repr(value)[:80]
    except ValueError:
        return f"<int of {value.bit_length() if isinstance(value, int) else '?'} bits>"


def reference_name(cls: type[ExternalBaseModel]) -> str:
    settings_ = cls.__toast_settings__
    assert settings_ is not None
    return settings_.external_name


def test_stored_models_come_back_exactly_or_are_refused(
    storage_url: str, request: pytest.FixtureRequest
) -> None:
    """Generated models of every field type load back equal and of the same types, or are
    refused with a StorageValidationError before anything is written."""
    backend = request.node.callspec.id
    models = Models(storage_url)
    tally = TALLIES.setdefault(backend, Tally(Counter(), [], Counter()))
    names = sorted(models.kinds)

    @seed(SEED)
    @settings(
        max_examples=EXAMPLES,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        chosen=st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True).map(
            lambda c: tuple(sorted(c))
        ),
        data=st.data(),
    )
    def examples(chosen: tuple[str, ...], data: st.DataObject) -> None:
        run_example(models, chosen, data, tally)

    started = clock.monotonic()
    examples()
    seconds = clock.monotonic() - started
    counts = tally.counts
    summary = (
        f"{backend}: seed {SEED}, {sum(counts.values())} examples, {counts['changed']} changed, "
        f"{counts['refused']} refused, {counts['unreadable']} saved-but-unreadable "
        f"({counts['same']} same, {counts['bad_error']} other errors) in {seconds:.0f} s; "
        f"refused by field: {dict(tally.refused_fields.most_common())}"
    )
    print(f"\n{summary}")
    assert counts["changed"] == counts["unreadable"] == counts["bad_error"] == 0, (
        summary + "\n" + "\n".join(tally.problems)
    )
