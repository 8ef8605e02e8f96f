"""The quickstart end to end on the embedded default: no server needed.

Run it with ``make demo``: it migrates a SQLite file (``demo.db``) with the packaged Alembic
migrations, then stores models there, dumps them to references, and loads them back.
Without ``DEMO_STORAGE_URL`` it runs on ``memory://``.
"""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, RecordNotFoundError

STORAGE = os.environ.get("DEMO_STORAGE_URL", "memory://demo")


class UserProfile(ExternalBaseModel):
    name: str
    email: str
    age: int

    model_config = ExternalConfigDict(storage=STORAGE)


class Team(BaseModel):
    name: str
    members: list[UserProfile]


def sync_part() -> None:
    user = UserProfile(name="Alice", email="alice@example.com", age=30)
    reference = user.model_dump()
    print("stored:", reference)
    restored = UserProfile.model_validate(reference)
    print("loaded:", restored)
    assert restored == user

    user.age = 31
    assert user.model_dump() == reference, "dumping again keeps the id"
    print("updated in place, same id:", UserProfile.model_validate(reference).age)

    team = Team(name="core", members=[user, UserProfile(name="Bob", email="b@x.org", age=41)])
    team_data = pydantic_toast.dump(team)
    print("a plain model holding external ones:", team_data)
    print("loaded back:", pydantic_toast.validate(Team, team_data))

    try:
        UserProfile.model_validate({"class_name": "UserProfile", "id": "0" * 32})
    except RecordNotFoundError as exc:
        print("a missing record is reported:", exc)


async def async_part() -> None:
    user = UserProfile(name="Carol", email="carol@example.com", age=25)
    reference = await user.asave()
    print("async stored:", reference)
    print("async loaded:", await UserProfile.aload(reference))


if __name__ == "__main__":
    print(f"storage: {STORAGE}")
    sync_part()
    asyncio.run(async_part())
