"""The stored model and the API's request and response shapes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from pydantic_toast import ExternalBaseModel, ExternalConfigDict

# The limits apply to the text as sent, as the OpenAPI schema says: at most 500 characters, at
# least one that is not whitespace, and no NUL (PostgreSQL cannot store one in text or jsonb);
# surrounding whitespace is then stripped.
Description = Annotated[
    str,
    StringConstraints(min_length=1, max_length=500, pattern=r"^[^\x00]*[^\s\x00][^\x00]*$"),
    AfterValidator(str.strip),
]


def now() -> datetime:
    return datetime.now(UTC)


class Todo(ExternalBaseModel):
    """A todo, stored as a row of external_records (class_name 'Todo')."""

    description: Description
    completed: bool = False
    created_at: datetime = Field(default_factory=now)
    updated_at: datetime = Field(default_factory=now)

    model_config = ExternalConfigDict(storage="env:DATABASE_URL")


class TodoCreate(BaseModel):
    description: Description
    model_config = ConfigDict(extra="forbid", strict=True)


class TodoUpdate(BaseModel):
    description: Description | None = None
    completed: bool | None = None
    model_config = ConfigDict(extra="forbid", strict=True)


class TodoOut(BaseModel):
    id: UUID
    description: str
    completed: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, todo: Todo) -> TodoOut:
        assert todo.external_id is not None, "saved todos have an id"
        return cls(id=todo.external_id, **todo.__dict__)


class TodoPage(BaseModel):
    items: list[TodoOut]
    next_after: str | None = Field(
        description="Pass as ?after= for the next page (an opaque cursor; null on the last page)."
    )
