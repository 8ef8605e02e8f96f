"""The three payloads: 10 fields (~300 B), 100 mixed fields (~3 KB), and ~100 KB."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, create_model


@dataclass(frozen=True)
class Workload:
    """A payload shape: the plain Pydantic model and a factory of field values."""

    name: str
    fields: dict[str, tuple[type, Any]]
    batch: int  # records in the batch test (full run)

    def plain_model(self) -> type[BaseModel]:
        return create_model(f"Plain_{self.name}", **self.fields)  # type: ignore[call-overload, no-any-return]

    def external_model(self, class_name: str, storage: str, external_name: str) -> Any:
        """An ``ExternalBaseModel`` of the same fields, stored at ``storage``."""
        # Imported here: workloads is also imported where another tree's pydantic_toast (or
        # none) is on the path.
        from pydantic_toast import ExternalBaseModel, ExternalConfigDict

        annotations = {name: kind for name, (kind, _) in self.fields.items()}
        defaults = {name: value for name, (_, value) in self.fields.items()}
        config = ExternalConfigDict(storage=storage, external_name=external_name)
        return type(
            class_name,
            (ExternalBaseModel,),
            {"__annotations__": annotations, **defaults, "model_config": config},
        )

    def values(self, i: int) -> dict[str, Any]:
        values = {name: default for name, (_, default) in self.fields.items()}
        first = next(iter(values))
        values[first] = f"{values[first]}-{i}" if isinstance(values[first], str) else i
        return values


NOW = datetime(2026, 11, 23, 9, 0, 0, 123456, tzinfo=UTC)


def _ten() -> dict[str, tuple[type, Any]]:
    return {
        "name": (str, "a customer name of some length"),
        "email": (str, "someone@example.com"),
        "street": (str, "12 Long Street Name"),
        "city": (str, "Springfield"),
        "age": (int, 42),
        "balance": (float, 1234.5678),
        "active": (bool, True),
        "created": (datetime, NOW),
        "tags": (list[str], ["alpha", "beta", "gamma"]),
        "notes": (str, "x" * 120),
    }


def _hundred() -> dict[str, tuple[type, Any]]:
    fields: dict[str, tuple[type, Any]] = {}
    for i in range(100):
        kind = i % 6
        if kind == 0:
            fields[f"s{i}"] = (str, f"value number {i:03d}")
        elif kind == 1:
            fields[f"i{i}"] = (int, i * 1000)
        elif kind == 2:
            fields[f"f{i}"] = (float, i / 7)
        elif kind == 3:
            fields[f"b{i}"] = (bool, i % 2 == 0)
        elif kind == 4:
            fields[f"d{i}"] = (datetime, NOW)
        else:
            fields[f"l{i}"] = (list[int], [i, i + 1, i + 2])
    return fields


def _large() -> dict[str, tuple[type, Any]]:
    return {
        "title": (str, "a large document"),
        "body": (str, "lorem ipsum dolor sit amet " * 3700),
        "sizes": (list[int], list(range(50))),
    }


WORKLOADS = [
    Workload("10 fields", _ten(), batch=10_000),
    Workload("100 fields", _hundred(), batch=10_000),
    Workload("100 KB", _large(), batch=500),
]
