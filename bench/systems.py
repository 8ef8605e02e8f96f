"""The systems under test, each behind the same small interface.

Every system saves and loads the same field values; Pydantic encoding and decoding is inside
the timing for all of them (the raw drivers get a plain Pydantic model and its JSON).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from workloads import Workload

import pydantic_toast
from pydantic_toast import ExternalBaseModel

# Records in the batch of a slow system (ORM, SQLModel, redis-om, SQLite): their throughput
# is per record either way, and a 10,000-record batch would dominate the run's time.
SLOW_BATCH = 1000


class System:
    """One way of storing and loading records. Keys are whatever ``save`` returns."""

    name: ClassVar[str]
    backend: ClassVar[str]  # the raw driver its ratios are taken against
    sync: ClassVar[bool] = False
    only_small: ClassVar[bool] = False  # implemented for the 10-field workload only
    # Slow systems time their batches on fewer records (throughput is per record either way).
    batch_cap: ClassVar[int | None] = None

    def __init__(self, workload: Workload, urls: dict[str, str]) -> None:
        self.workload = workload
        self.urls = urls
        self.plain = workload.plain_model()

    def make(self, i: int) -> Any:
        """Record ``i``'s input (default: the plain Pydantic model the raw drivers store)."""
        return self.plain(**self.workload.values(i))

    async def setup(self) -> None:
        """Open connections (not timed)."""

    async def teardown(self) -> None:
        """Close them."""

    async def begin_sequential(self) -> None:
        """Before a phase of sequential operations: take what they run on (not timed)."""

    async def end_sequential(self) -> None:
        """After it: give that back (not timed)."""

    async def save(self, obj: Any) -> Any:
        raise NotImplementedError

    async def load(self, key: Any) -> Any:
        raise NotImplementedError

    async def save_many(self, objs: Sequence[Any]) -> list[Any]:
        return [await self.save(obj) for obj in objs]

    async def load_many(self, keys: Sequence[Any]) -> list[Any]:
        return [await self.load(key) for key in keys]

    async def save_concurrent(self, obj: Any) -> Any:
        """A save made by one of many concurrent tasks (default: :meth:`save`)."""
        return await self.save(obj)

    async def load_concurrent(self, key: Any) -> Any:
        """A load made by one of many concurrent tasks (default: :meth:`load`)."""
        return await self.load(key)


# -- pydantic-toast -----------------------------------------------------------------------------


class Toast(System):
    """pydantic-toast's async API on one backend."""

    storage_kind: ClassVar[str]

    def __init__(self, workload: Workload, urls: dict[str, str]) -> None:
        super().__init__(workload, urls)
        self.model: type[ExternalBaseModel] = workload.external_model(
            "BenchRecord", urls[self.storage_kind], f"bench_{uuid.uuid4().hex[:8]}"
        )
        self.list_adapter = list[self.model]  # type: ignore[name-defined]

    def make(self, i: int) -> Any:
        return self.model(**self.workload.values(i))

    async def save(self, obj: Any) -> Any:
        return await obj.asave()

    async def load(self, key: Any) -> Any:
        return await self.model.aload(key)

    async def save_many(self, objs: Sequence[Any]) -> list[Any]:
        return list(await pydantic_toast.adump(list(objs)))

    async def load_many(self, keys: Sequence[Any]) -> list[Any]:
        return await pydantic_toast.avalidate(self.list_adapter, list(keys))

    async def teardown(self) -> None:
        await pydantic_toast.aclose_storage()


class ToastSync(Toast):
    """pydantic-toast's sync API from plain code (main thread, no running loop)."""

    sync = True

    def save_sync(self, obj: Any) -> Any:
        return obj.model_dump()

    def load_sync(self, key: Any) -> Any:
        return self.model.model_validate(key)

    def save_many_sync(self, objs: Sequence[Any]) -> list[Any]:
        return list(pydantic_toast.dump(list(objs)))

    def load_many_sync(self, keys: Sequence[Any]) -> list[Any]:
        return pydantic_toast.validate(self.list_adapter, list(keys))


def toast_on(kind: str, *, sync: bool = False, name: str = "", **attributes: Any) -> type[Toast]:
    """pydantic-toast's async (``sync``: sync) API on the store ``urls[kind]``, named ``name``."""
    base = ToastSync if sync else Toast
    made: type[Toast] = type(
        f"{base.__name__}_{kind}",
        (base,),
        {"name": name, "backend": kind, "storage_kind": kind, **attributes},
    )
    return made


def toast_systems() -> list[type[System]]:
    systems: list[type[System]] = []
    for kind, label in (
        ("postgresql", "PostgreSQL"),
        ("redis", "Redis"),
        ("sqlite", "SQLite"),
        ("memory", "memory"),
    ):
        for api in ("async", "sync"):
            systems.append(
                toast_on(
                    kind,
                    sync=api == "sync",
                    name=f"pydantic-toast {api} ({label})",
                    batch_cap=SLOW_BATCH if kind == "sqlite" else None,
                )
            )
    return systems


# -- raw asyncpg --------------------------------------------------------------------------------

UPSERT = (
    "INSERT INTO external_records (class_name, id, schema_version, data, created_at, updated_at) "
    "VALUES ($1, $2, 1, $3::jsonb, $4, $4) ON CONFLICT (class_name, id) DO UPDATE "
    "SET data = excluded.data, updated_at = excluded.updated_at"
)
SELECT = "SELECT data::text FROM external_records WHERE class_name = $1 AND id = $2"
SELECT_MANY = "SELECT data::text FROM external_records WHERE class_name = $1 AND id = ANY($2)"


# pydantic-toast's PostgreSQL pool: pool_size 20 + max_overflow 0 (connections opened as
# needed, the one returned last reused first, as asyncpg's pool does); its Redis pool: 50.
PG_POOL_MIN, PG_POOL_MAX = 10, 20
REDIS_POOL = 50


class RawAsyncpg(System):
    """asyncpg with prepared statements: one connection sequentially, a pool concurrently.

    The pool is sized like pydantic-toast's (10 kept, up to 20) for the concurrency test, and
    each sequential phase takes its connection from it, as pydantic-toast's do from its own (the
    one returned last): a connection kept for the whole run ran every batch, which leaves its
    server process faster at sending large rows (see ``stores.WARM_MALLOC``), and it left the
    concurrency test 19 connections.
    """

    name = "raw asyncpg"
    backend = "postgresql"

    async def setup(self) -> None:
        import asyncpg

        self.class_name = f"raw_{uuid.uuid4().hex[:8]}"
        self.pool = await asyncpg.create_pool(
            self.urls["postgresql"], min_size=PG_POOL_MIN, max_size=PG_POOL_MAX
        )
        self.connection: Any = None
        await self.begin_sequential()  # for scripts that call save and load directly

    async def teardown(self) -> None:
        await self.end_sequential()
        await self.pool.close()

    async def begin_sequential(self) -> None:
        if self.connection is None:
            self.connection = await self.pool.acquire()

    async def end_sequential(self) -> None:
        if self.connection is not None:
            await self.pool.release(self.connection)
            self.connection = None

    async def save(self, obj: Any) -> Any:
        key = uuid.uuid4()
        data = obj.__pydantic_serializer__.to_json(obj).decode()
        await self.connection.execute(UPSERT, self.class_name, key, data, datetime.now(UTC))
        return key

    async def load(self, key: Any) -> Any:
        return self.plain.model_validate_json(
            await self.connection.fetchval(SELECT, self.class_name, key)
        )

    async def save_many(self, objs: Sequence[Any]) -> list[Any]:
        keys = [uuid.uuid4() for _ in objs]
        now = datetime.now(UTC)
        rows = [
            (self.class_name, key, obj.__pydantic_serializer__.to_json(obj).decode(), now)
            for key, obj in zip(keys, objs, strict=True)
        ]
        await self.connection.executemany(UPSERT, rows)
        return keys

    async def load_many(self, keys: Sequence[Any]) -> list[Any]:
        rows = await self.connection.fetch(SELECT_MANY, self.class_name, list(keys))
        return [self.plain.model_validate_json(row[0]) for row in rows]

    async def save_concurrent(self, obj: Any) -> Any:
        key = uuid.uuid4()
        data = obj.__pydantic_serializer__.to_json(obj).decode()
        await self.pool.execute(UPSERT, self.class_name, key, data, datetime.now(UTC))
        return key

    async def load_concurrent(self, key: Any) -> Any:
        return self.plain.model_validate_json(
            await self.pool.fetchval(SELECT, self.class_name, key)
        )


# -- raw redis.asyncio -------------------------------------------------------------------------


class RawRedis(System):
    """redis.asyncio SET/GET, a pipeline of SETs and MGET for batches.

    A blocking pool sized like pydantic-toast's (50) for the concurrency test.
    """

    name = "raw redis.asyncio"
    backend = "redis"

    async def setup(self) -> None:
        import redis.asyncio as aioredis

        self.prefix = f"{self.urls['redis_prefix']}_raw_{uuid.uuid4().hex[:8]}"
        pool = aioredis.BlockingConnectionPool.from_url(
            self.urls["redis"], max_connections=REDIS_POOL
        )
        self.client = aioredis.Redis(connection_pool=pool)

    async def teardown(self) -> None:
        keys = [key async for key in self.client.scan_iter(match=f"{self.prefix}:*", count=1000)]
        for start in range(0, len(keys), 1000):
            await self.client.delete(*keys[start : start + 1000])
        await self.client.aclose()

    async def save(self, obj: Any) -> Any:
        key = f"{self.prefix}:{uuid.uuid4()}"
        await self.client.set(key, obj.__pydantic_serializer__.to_json(obj))
        return key

    async def load(self, key: Any) -> Any:
        return self.plain.model_validate_json(await self.client.get(key))

    async def save_many(self, objs: Sequence[Any]) -> list[Any]:
        keys = [f"{self.prefix}:{uuid.uuid4()}" for _ in objs]
        async with self.client.pipeline(transaction=False) as pipe:
            for key, obj in zip(keys, objs, strict=True):
                pipe.set(key, obj.__pydantic_serializer__.to_json(obj))
            await pipe.execute()
        return keys

    async def load_many(self, keys: Sequence[Any]) -> list[Any]:
        return [self.plain.model_validate_json(v) for v in await self.client.mget(list(keys))]


# -- the alternatives a user might pick instead --------------------------------------------------


class SQLAlchemyORM(System):
    """The ORM with an AsyncSession per operation, on the same mapped table."""

    name = "SQLAlchemy ORM AsyncSession"
    backend = "postgresql"
    batch_cap = SLOW_BATCH

    async def setup(self) -> None:
        from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

        self.class_name = f"orm_{uuid.uuid4().hex[:8]}"
        url = self.urls["postgresql"].replace("postgresql://", "postgresql+asyncpg://")
        self.engine = create_async_engine(url, pool_size=PG_POOL_MIN, max_overflow=10)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def teardown(self) -> None:
        await self.engine.dispose()

    def _row(self, obj: Any) -> Any:
        from pydantic_toast.backends.sql_table import ExternalRecord

        now = datetime.now(UTC)
        return ExternalRecord(
            class_name=self.class_name,
            id=uuid.uuid4(),
            schema_version=1,
            data=obj.model_dump(mode="json"),
            created_at=now,
            updated_at=now,
        )

    async def save(self, obj: Any) -> Any:
        async with self.sessions() as session, session.begin():
            row = self._row(obj)
            session.add(row)
        return row.id

    async def load(self, key: Any) -> Any:
        from pydantic_toast.backends.sql_table import ExternalRecord

        async with self.sessions() as session:
            row = await session.get(ExternalRecord, (self.class_name, key))
            assert row is not None
            return self.plain.model_validate(row.data)

    async def save_many(self, objs: Sequence[Any]) -> list[Any]:
        async with self.sessions() as session, session.begin():
            rows = [self._row(obj) for obj in objs]
            session.add_all(rows)
        return [row.id for row in rows]

    async def load_many(self, keys: Sequence[Any]) -> list[Any]:
        from sqlalchemy import select

        from pydantic_toast.backends.sql_table import ExternalRecord

        async with self.sessions() as session:
            result = await session.scalars(
                select(ExternalRecord).where(
                    ExternalRecord.class_name == self.class_name, ExternalRecord.id.in_(list(keys))
                )
            )
            return [self.plain.model_validate(row.data) for row in result]


class SQLModelSystem(System):
    """SQLModel table models (fields as columns), an AsyncSession per operation."""

    name = "SQLModel"
    backend = "postgresql"
    only_small = True
    batch_cap = SLOW_BATCH

    async def setup(self) -> None:
        from sqlalchemy import JSON, Column, DateTime
        from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
        from sqlmodel import Field, SQLModel

        table = f"bench_sqlmodel_{uuid.uuid4().hex[:8]}"

        class Customer(SQLModel, table=True):
            __tablename__ = table
            id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
            name: str
            email: str
            street: str
            city: str
            age: int
            balance: float
            active: bool
            created: datetime = Field(sa_column=Column(DateTime(timezone=True)))
            tags: list[str] = Field(sa_column=Column(JSON))
            notes: str

        self.row_class = Customer
        url = self.urls["postgresql"].replace("postgresql://", "postgresql+asyncpg://")
        self.engine = create_async_engine(url, pool_size=PG_POOL_MIN, max_overflow=10)
        async with self.engine.begin() as connection:
            await connection.run_sync(Customer.__table__.create)  # type: ignore[attr-defined]
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def make(self, i: int) -> Any:
        return self.workload.values(i)

    async def teardown(self) -> None:
        async with self.engine.begin() as connection:
            await connection.run_sync(self.row_class.__table__.drop)  # type: ignore[attr-defined]
        await self.engine.dispose()

    async def save(self, obj: Any) -> Any:
        row = self.row_class.model_validate(obj)
        async with self.sessions() as session, session.begin():
            session.add(row)
        return row.id

    async def load(self, key: Any) -> Any:
        async with self.sessions() as session:
            return await session.get(self.row_class, key)

    async def save_many(self, objs: Sequence[Any]) -> list[Any]:
        rows = [self.row_class.model_validate(obj) for obj in objs]
        async with self.sessions() as session, session.begin():
            session.add_all(rows)
        return [row.id for row in rows]

    async def load_many(self, keys: Sequence[Any]) -> list[Any]:
        from sqlmodel import col, select

        async with self.sessions() as session:
            result = await session.scalars(
                select(self.row_class).where(col(self.row_class.id).in_(list(keys)))
            )
            return list(result)


class RedisOM(System):
    """redis-om-python's async HashModel (tags joined into one string: hashes are flat)."""

    name = "redis-om HashModel"
    backend = "redis"
    only_small = True
    batch_cap = SLOW_BATCH

    async def setup(self) -> None:
        from aredis_om import HashModel, get_redis_connection

        database = get_redis_connection(url=self.urls["redis"])
        prefix = f"{self.urls['redis_prefix']}_om_{uuid.uuid4().hex[:8]}"

        class Customer(HashModel, index=True):
            name: str
            email: str
            street: str
            city: str
            age: int
            balance: float
            active: int
            created: datetime
            tags: str
            notes: str

            class Meta:
                global_key_prefix = prefix

        Customer.Meta.database = database  # type: ignore[attr-defined]
        self.row_class = Customer
        self.prefix = prefix
        self.database = database

    def make(self, i: int) -> Any:
        values = self.workload.values(i)
        return values | {"tags": ",".join(values["tags"]), "active": int(values["active"])}

    async def teardown(self) -> None:
        keys = [k async for k in self.database.scan_iter(match=f"{self.prefix}:*", count=1000)]
        for start in range(0, len(keys), 1000):
            await self.database.delete(*keys[start : start + 1000])
        await self.database.aclose()

    async def save(self, obj: Any) -> Any:
        row = self.row_class(**obj)
        await row.save()
        return row.pk

    async def load(self, key: Any) -> Any:
        return await self.row_class.get(key)

    async def save_many(self, objs: Sequence[Any]) -> list[Any]:
        rows = [self.row_class(**obj) for obj in objs]
        await self.row_class.add(rows)  # one pipeline
        return [row.pk for row in rows]


SYSTEMS: list[type[System]] = [
    RawAsyncpg,
    RawRedis,
    *toast_systems(),
    SQLAlchemyORM,
    SQLModelSystem,
    RedisOM,
]
