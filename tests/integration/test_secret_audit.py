"""The secret audit: every error path, every string it produces, no password and no user data.

Each scenario triggers one failure (bad URLs of every shape, bad class statements, connect and
authentication failures, stored data that no longer validates, saves the store refuses, custom
backends that crash, command-line errors) and collects, for the exception and every exception in
its chain (``__cause__``, ``__context__``, recursively): ``str``, ``repr``, each of ``.args`` and
the repr of its attributes; the reprs of every model's settings and ``model_config``; every log
record at DEBUG (message and formatted traceback); and the command line's output. None may hold
a piece of the password or the sentinel field value.

With ``TOAST_AUDIT_REPORT=<file>`` each scenario appends ``{"id", "strings", "hits"}`` as a JSON
line there (for the audit figures in the issue).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote
from uuid import UUID, uuid4

import pytest
import redis

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    RecordKey,
    StoredRecord,
)
from pydantic_toast.backends.memory import MemoryBackend
from pydantic_toast.integrations.cli import main as toast_cli
from tests import servers
from tests.integration.conftest import _admin, _with_database

# Every character a password may hold unencoded: / # ? @ & ; :
PASSWORD = "Alpha7/Bravo7#Charlie7?Delta7@Echo7&Foxtrot7;Golf7:Hotel7"
PIECES = ("Alpha7", "Bravo7", "Charlie7", "Delta7", "Echo7", "Foxtrot7", "Golf7", "Hotel7")
SENTINEL = "S3ntinel-Value-42"
NEEDLES = (*PIECES, SENTINEL)
ENCODED = quote(PASSWORD, safe="")


# -- what the audit reads --------------------------------------------------------------------


def chain_of(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception reachable by __cause__/__context__, once each."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        stack.extend(e for e in current.args if isinstance(e, BaseException))
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)


def strings_of(error: BaseException) -> list[str]:
    texts: list[str] = []
    for link in chain_of(error):
        texts += [str(link), repr(link), *(repr(arg) for arg in link.args)]
        texts += [repr(value) for value in getattr(link, "__dict__", {}).values()]
        texts += [str(note) for note in getattr(link, "__notes__", ())]
    return texts


@dataclass
class Audit:
    """The strings one scenario produced."""

    strings: list[str] = field(default_factory=list)
    models: list[type[ExternalBaseModel]] = field(default_factory=list)

    def model(self, url: str, name: str = "Vault", **fields: Any) -> type[ExternalBaseModel]:
        """Define a model on ``url`` (its settings' reprs are audited too)."""
        annotations = {"secret_note": str, **{k: type(v) for k, v in fields.items()}}
        model = type(
            name,
            (ExternalBaseModel,),
            {
                "__annotations__": annotations,
                "model_config": ExternalConfigDict(
                    storage=url, external_name=f"{name}{uuid4().hex[:10]}"
                ),
            },
        )
        self.models.append(model)
        return model

    def expect_failure(self, call: Callable[[], object]) -> None:
        """Run ``call``, which must raise; audit the exception's whole chain."""
        try:
            call()
        except Exception as exc:
            self.strings += strings_of(exc)
            self.strings.append("".join(traceback.format_exception_only(exc)))
        else:
            pytest.fail("the scenario raised nothing")


@dataclass
class Servers:
    """URLs of the servers the scenarios use (built lazily: a scenario asks for what it needs)."""

    request: pytest.FixtureRequest

    def pg(self) -> tuple[str, int]:
        """(host:port, a database) of a cluster where user ``auditor`` has PASSWORD."""
        audited: tuple[str, int] = self.request.getfixturevalue("audited_postgres")
        return audited

    def redis_port(self) -> int:
        port: int = self.request.getfixturevalue("audited_redis")
        return port

    def s3(self) -> tuple[Any, str]:
        """(the SeaweedFS server, a bucket on it)."""
        return self.request.getfixturevalue("seaweedfs"), self.request.getfixturevalue("bucket")

    def redis_base(self) -> str:
        url: str = self.request.getfixturevalue("redis_base_url")
        return url


Scenario = Callable[[Audit, Servers], None]
SCENARIOS: dict[str, tuple[Scenario, tuple[str, ...]]] = {}


def scenario(name: str, *marks: str) -> Callable[[Scenario], Scenario]:
    def register(function: Scenario) -> Scenario:
        assert name not in SCENARIOS
        SCENARIOS[name] = (function, marks)
        return function

    return register


# -- scenarios: URLs and class statements ------------------------------------------------------

SHAPES = {  # name: (URL, whether it has query options already)
    "encoded": ("{scheme}://app:" + ENCODED + "@{host}/{db}{extra}", False),
    "unencoded": ("{scheme}://app:" + PASSWORD + "@{host}/{db}{extra}", False),
    "query": ("{scheme}://app@{host}/{db}?password=" + ENCODED + "{extra}", True),
    "query-unencoded": ("{scheme}://app@{host}/{db}?password=" + PASSWORD + "{extra}", True),
    # The reviewer's case: a password with '?&;' in the user information AND a secret option.
    "combined": (
        "{scheme}://app:" + PASSWORD + "@{host}/{db}?{secret}=" + PASSWORD + "{extra}",
        True,
    ),
    "no-slashes": ("{scheme}:app:" + PASSWORD + "@{host}/{db}{extra}", False),
    "no-scheme": ("app:" + PASSWORD + "@{host}/{db}{extra}", False),
}
PROBLEMS = {  # what is wrong besides the password: appended to the URL, or a host
    "bad-port": ("127.0.0.1:notaport", ""),
    "unknown-option": ("127.0.0.1:1", "bogus=1"),
    "bad-number": ("127.0.0.1:1", "{number}=-3"),
    "bad-ssl": ("127.0.0.1:1", "{ssl}=sometimes"),
    "closed-port": ("127.0.0.1:{free}", ""),
}
BACKEND_OPTIONS = {  # scheme: options; 'hosts' and 'extra' shape the URL further
    "postgresql": {"number": "pool_size", "ssl": "sslmode", "db": "shop", "secret": "sslpassword"},
    "postgresql-replicas": {
        "scheme": "postgresql",
        "number": "pool_size",
        "ssl": "sslmode",
        "db": "shop",
        "secret": "sslpassword",
        "extra": "replicas=127.0.0.1:{free},127.0.0.1:{free}&read_your_writes=1",
    },
    "redis": {"number": "max_connections", "ssl": "ssl_cert_reqs", "db": "0", "secret": "password"},
    "redis+sentinel": {
        "number": "max_connections",
        "ssl": "ssl_cert_reqs",
        "db": "mymaster/0",
        "secret": "sentinel_password",
        "hosts": "{host},127.0.0.1:{free}",
        "extra": f"sentinel_username=watch&sentinel_password={PASSWORD}",
    },
    "redis+cluster": {
        "number": "max_connections",
        "ssl": "ssl_cert_reqs",
        "db": "",
        "secret": "password",
        "hosts": "{host},127.0.0.1:{free}",
    },
    "s3": {  # the bucket is the host: the closed port is the endpoint's
        "number": "max_concurrency",
        "ssl": "addressing_style",
        "db": "prefix",
        "secret": "aws_secret_access_key",
        "extra": "endpoint_url=http://{host}&connect_timeout=1&region=us-east-1",
        "bucket": "audit-bucket",
    },
}


def url_for(scheme: str, shape: str, problem: str) -> str:
    host, option = PROBLEMS[problem]
    options = BACKEND_OPTIONS[scheme]
    host = host.format(free=servers.free_port())
    template, has_query = SHAPES[shape]
    extra = options.get("extra", "").format(host=host, free=servers.free_port())
    hosts = options.get("hosts", "{host}").format(host=host, free=servers.free_port())
    if "bucket" in options and problem != "bad-port":
        hosts = options["bucket"]
    url = template.format(
        scheme=options.get("scheme", scheme),
        host=hosts,
        db=options["db"],
        secret=options["secret"],
        extra=("&" if has_query else "?") + extra if extra else "",
    )
    if option:
        option = option.format(**options)
        url += ("&" if has_query or extra else "?") + option
    return url


def _class_statement(scheme: str, shape: str, problem: str) -> Scenario:
    def run(audit: Audit, _: Servers) -> None:
        url = url_for(scheme, shape, problem)

        def define_and_use() -> None:
            model = audit.model(url)
            model(secret_note=SENTINEL).model_dump()

        audit.expect_failure(define_and_use)

    return run


for _scheme in BACKEND_OPTIONS:
    for _shape in SHAPES:
        for _problem in PROBLEMS:
            scenario(f"url-{_scheme}-{_shape}-{_problem}")(
                _class_statement(_scheme, _shape, _problem)
            )


@scenario("env-variable-holding-a-bad-url")
def _env_bad_url(audit: Audit, _: Servers) -> None:
    variable = f"TOAST_AUDIT_{uuid4().hex[:8].upper()}"
    os.environ[variable] = f"postgresql://app:{PASSWORD}@127.0.0.1:notaport/shop"
    try:
        audit.expect_failure(
            lambda: audit.model(f"env:{variable}")(secret_note=SENTINEL).model_dump()
        )
    finally:
        del os.environ[variable]


@scenario("unknown-scheme-with-password")
def _unknown_scheme(audit: Audit, _: Servers) -> None:
    audit.expect_failure(lambda: audit.model(f"postgrse://app:{PASSWORD}@127.0.0.1/shop"))


@scenario("bad-ttl-in-class-statement")
def _bad_ttl(audit: Audit, _: Servers) -> None:
    def define() -> None:
        type(
            "Vault",
            (ExternalBaseModel,),
            {
                "__annotations__": {"secret_note": str},
                "model_config": ExternalConfigDict(
                    storage=f"postgresql://app:{ENCODED}@127.0.0.1/shop",
                    ttl=-1,  # refused: negative
                ),
            },
        )

    audit.expect_failure(define)


@scenario("bad-external-name-in-class-statement")
def _bad_name(audit: Audit, _: Servers) -> None:
    def define() -> None:
        type(
            "Vault",
            (ExternalBaseModel,),
            {
                "__annotations__": {"secret_note": str},
                "model_config": ExternalConfigDict(
                    storage=f"redis://:{ENCODED}@127.0.0.1/0", external_name=""
                ),
            },
        )

    audit.expect_failure(define)


# -- scenarios: authentication -----------------------------------------------------------------


@scenario("pg-wrong-password-encoded", "postgresql")
def _pg_wrong(audit: Audit, found: Servers) -> None:
    host, _ = found.pg()
    model = audit.model(f"postgresql://auditor:{ENCODED}x@{host}/audit")
    audit.expect_failure(lambda: model(secret_note=SENTINEL).model_dump())


@scenario("pg-wrong-user-with-the-password", "postgresql")
def _pg_wrong_user(audit: Audit, found: Servers) -> None:
    host, _ = found.pg()
    model = audit.model(f"postgresql://nobody:{ENCODED}@{host}/audit")
    audit.expect_failure(lambda: model(secret_note=SENTINEL).model_dump())


@scenario("pg-missing-database-with-the-password", "postgresql")
def _pg_no_db(audit: Audit, found: Servers) -> None:
    host, _ = found.pg()
    model = audit.model(f"postgresql://auditor:{ENCODED}@{host}/nowhere")
    audit.expect_failure(lambda: model(secret_note=SENTINEL).model_dump())


@scenario("pg-password-in-query", "postgresql")
def _pg_query(audit: Audit, found: Servers) -> None:
    host, _ = found.pg()
    audit.expect_failure(
        lambda: audit.model(f"postgresql://auditor@{host}/audit?password={ENCODED}")
    )


for _creds in ("", ":{pw}x@", "app:{pw}@", "nobody:{pw}@"):

    def _redis_auth(audit: Audit, found: Servers, creds: str = _creds) -> None:
        userinfo = creds.format(pw=ENCODED)
        model = audit.model(f"redis://{userinfo}127.0.0.1:{found.redis_port()}/0")
        audit.expect_failure(lambda: model(secret_note=SENTINEL).model_dump())

    scenario(f"redis-auth-{_creds.format(pw='pw') or 'none'}", "redis")(_redis_auth)


@scenario("redis-database-out-of-range-with-password", "redis")
def _redis_db(audit: Audit, found: Servers) -> None:
    model = audit.model(f"redis://:{ENCODED}@127.0.0.1:{found.redis_port()}/99")
    audit.expect_failure(lambda: model(secret_note=SENTINEL).model_dump())


# -- scenarios: stored data, refusals, custom backends ------------------------------------------


def _pg_url(found: Servers) -> str:
    host, _ = found.pg()
    return f"postgresql://auditor:{ENCODED}@{host}/audit"


def _redis_url(found: Servers) -> str:
    return f"redis://:{ENCODED}@127.0.0.1:{found.redis_port()}/0"


def _damage_sql(url: str, name: str, data: str) -> None:
    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(
                "UPDATE external_records SET data = $2::jsonb WHERE class_name = $1", name, data
            )
        finally:
            await connection.close()

    asyncio.run(run())


DAMAGES = {
    "wrong-type": json.dumps({"secret_note": SENTINEL, "count": "not a number"}),
    "missing-field": json.dumps({"count": 1, "other": SENTINEL}),
    "extra-nesting": json.dumps({"secret_note": {"deep": SENTINEL}, "count": 1}),
    "huge-number": f'{{"secret_note": "{SENTINEL}", "count": 1{"0" * 5000}}}',
}

for _damage, _data in DAMAGES.items():

    def _pg_damaged(audit: Audit, found: Servers, data: str = _data) -> None:
        model = audit.model(_pg_url(found), count=0)
        reference = model(secret_note=SENTINEL, count=1).model_dump()
        _damage_sql(_pg_url(found), model.__toast_settings__.external_name, data)  # type: ignore[attr-defined]
        audit.expect_failure(lambda: model.model_validate(reference))

    def _redis_damaged(audit: Audit, found: Servers, data: str = _data) -> None:
        model = audit.model(_redis_url(found), count=0)
        reference = model(secret_note=SENTINEL, count=1).model_dump()
        client = redis.Redis(port=found.redis_port(), password=PASSWORD)
        key = f"pydantic_toast:{reference['class_name']}:{reference['id']}"
        document = client.get(key) or b""
        head = document[: document.index(b'"data":') + len(b'"data":')]
        client.set(key, head + data.encode() + b"}")
        client.close()
        audit.expect_failure(lambda: model.model_validate(reference))

    def _memory_damaged(audit: Audit, _: Servers, data: str = _data) -> None:
        name = uuid4().hex
        model = audit.model(f"memory://{name}", count=0)
        reference = model(secret_note=SENTINEL, count=1).model_dump()
        store = pydantic_toast.current_storage().memory_store(name)
        key = (reference["class_name"], UUID(reference["id"]))
        import dataclasses

        with store.lock:
            old = store.get(key)
            assert old is not None
            store.put(dataclasses.replace(old, data=data.encode()), None)
        audit.expect_failure(lambda: model.model_validate(reference))

    scenario(f"pg-stored-{_damage}", "postgresql")(_pg_damaged)
    scenario(f"redis-stored-{_damage}", "redis")(_redis_damaged)
    scenario(f"memory-stored-{_damage}")(_memory_damaged)


def _s3_url(found: Servers, secret: str | None = None, unencoded: bool = False) -> str:
    server, bucket = found.s3()
    prefix = f"audit{uuid4().hex[:8]}"
    if unencoded:
        return (
            f"s3://{server.ACCESS_KEY}:{secret}@{bucket}/{prefix}"
            f"?endpoint_url={server.endpoint}&region=us-east-1"
        )
    return str(server.url(bucket, prefix, secret=secret))


def _overwrite_s3(found: Servers, url: str, reference: dict[str, str], body: str) -> None:
    server, bucket = found.s3()
    prefix = url.split(f"@{bucket}/", 1)[1].split("?", 1)[0]
    key = f"{prefix}/{reference['class_name']}/{reference['id']}.json"

    async def put() -> None:
        async with server.admin_client() as client:
            head = await client.head_object(Bucket=bucket, Key=key)
            await client.put_object(
                Bucket=bucket, Key=key, Body=body.encode(), Metadata=head["Metadata"]
            )

    asyncio.run(put())


for _encoded in (True, False):

    def _s3_wrong_secret(audit: Audit, found: Servers, encoded: bool = _encoded) -> None:
        model = audit.model(_s3_url(found, secret=PASSWORD, unencoded=not encoded))
        audit.expect_failure(lambda: model(secret_note=SENTINEL).model_dump())

    scenario(f"s3-wrong-secret-key-{'encoded' if _encoded else 'unencoded'}", "s3")(
        _s3_wrong_secret
    )

for _damage, _data in DAMAGES.items():

    def _s3_damaged(audit: Audit, found: Servers, data: str = _data) -> None:
        url = _s3_url(found)
        model = audit.model(url, count=0)
        reference = model(secret_note=SENTINEL, count=1).model_dump()
        _overwrite_s3(found, url, reference, data)
        audit.expect_failure(lambda: model.model_validate(reference))

    scenario(f"s3-stored-{_damage}", "s3")(_s3_damaged)


@scenario("redis-value-not-a-record", "redis")
def _redis_garbage(audit: Audit, found: Servers) -> None:
    model = audit.model(_redis_url(found))
    reference = model(secret_note=SENTINEL).model_dump()
    client = redis.Redis(port=found.redis_port(), password=PASSWORD)
    client.set(f"pydantic_toast:{reference['class_name']}:{reference['id']}", SENTINEL * 3)
    client.close()
    audit.expect_failure(lambda: model.model_validate(reference))


for _refusal, _value in {"nul": f"{SENTINEL}\u0000", "nan": math.nan, "inf": math.inf}.items():

    def _pg_refused(audit: Audit, found: Servers, value: Any = _value) -> None:
        if isinstance(value, str):
            model = audit.model(_pg_url(found))
            audit.expect_failure(lambda: model(secret_note=value).model_dump())
        else:
            model = audit.model(_pg_url(found), ratio=0.5)
            audit.expect_failure(lambda: model(secret_note=SENTINEL, ratio=value).model_dump())

    scenario(f"pg-save-refused-{_refusal}", "postgresql")(_pg_refused)


@scenario("pg-save-refused-in-a-batch", "postgresql")
def _pg_batch(audit: Audit, found: Servers) -> None:
    model = audit.model(_pg_url(found))
    items = [model(secret_note=f"{SENTINEL}{n}") for n in range(3)]
    items.append(model(secret_note=f"{SENTINEL}\u0000"))
    audit.expect_failure(lambda: pydantic_toast.dump(items))


@scenario("pg-not-migrated-with-password", "postgresql")
def _pg_bare(audit: Audit, found: Servers) -> None:
    host, _ = found.pg()
    model = audit.model(f"postgresql://auditor:{ENCODED}@{host}/bare")
    audit.expect_failure(lambda: model(secret_note=SENTINEL).model_dump())


class LeakyBackend(MemoryBackend):
    """A user's backend whose errors carry the data they were given."""

    async def save_records(self, records: Sequence[StoredRecord]) -> list[int]:
        if b"save-" in records[0].data:
            raise KeyError(records[0].data.decode())
        return await super().save_records(records)

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        stored = await super().load_records(keys)
        text = stored[0].data.decode() if stored and stored[0] else ""
        if "load-value" in text:
            raise ValueError(f"cannot parse {text}")
        if "load-json" in text:
            json.loads(text[:-3])
        if "load-runtime" in text:
            raise RuntimeError(text)
        return stored


pydantic_toast.register_backend("leaky", LeakyBackend)

for _how in ("save-key", "load-value", "load-json", "load-runtime"):

    def _leaky(audit: Audit, _: Servers, how: str = _how) -> None:
        model = audit.model(f"leaky://{uuid4().hex}")
        instance = model(secret_note=f"{how} {SENTINEL}")
        if how.startswith("save"):
            audit.expect_failure(instance.model_dump)
        else:
            reference = instance.model_dump()
            audit.expect_failure(lambda: model.model_validate(reference))

    scenario(f"custom-backend-{_how}")(_leaky)


# -- scenarios: the command line ----------------------------------------------------------------

CLI_URLS = {
    "closed-port": "postgresql://app:{pw}@127.0.0.1:{free}/shop",
    "bad-port": "postgresql://app:{pw}@127.0.0.1:notaport/shop",
    "unknown-option": "postgresql://app:{pw}@127.0.0.1/shop?bogus=1",
    "query-password": "postgresql://app@127.0.0.1:{free}/shop?password={pw}",
    "typo-scheme": "postgrse://app:{pw}@127.0.0.1/shop",
    "redis-url": "redis://:{pw}@127.0.0.1:{free}/0",
    "no-scheme": "app:{pw}@127.0.0.1/shop",
}


def _cli(command: str, shape: str, verbose: bool) -> Scenario:
    def run(audit: Audit, _: Servers) -> None:
        capsys: pytest.CaptureFixture[str] = _CAPSYS[0]
        for password in (PASSWORD, ENCODED):
            url = CLI_URLS[shape].format(pw=password, free=servers.free_port())
            argv = [command, url, *(["--revision", "base"] if command == "downgrade" else [])]
            code = toast_cli([*argv, *(["--verbose"] if verbose else [])])
            out, err = capsys.readouterr()
            assert code != 0
            audit.strings += [out, err]

    return run


_CAPSYS: list[Any] = []
for _command in ("migrate", "check", "current", "downgrade"):
    for _url_shape in CLI_URLS:
        scenario(f"cli-{_command}-{_url_shape}")(_cli(_command, _url_shape, verbose=False))
for _url_shape in CLI_URLS:
    scenario(f"cli-check-verbose-{_url_shape}")(_cli("check", _url_shape, verbose=True))


# -- servers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audited_postgres() -> Iterator[tuple[str, int]]:
    """A throwaway cluster: database ``audit`` (migrated) and ``bare``, user ``auditor``."""
    try:
        cluster = servers.TempPostgres()
    except Exception as exc:
        if servers.IN_CI:
            pytest.fail(f"cannot start a local PostgreSQL cluster: {exc}")
        pytest.skip(f"no local PostgreSQL binaries: {exc}")
    cluster.start()
    try:
        admin = cluster.url()
        escaped = PASSWORD.replace("'", "''")
        _admin(admin, "CREATE DATABASE audit", "CREATE DATABASE bare")
        _admin(admin, f"CREATE ROLE auditor LOGIN PASSWORD '{escaped}'")
        assert toast_cli(["migrate", _with_database(admin, "audit")]) == 0
        _admin(
            _with_database(admin, "audit"),
            "GRANT SELECT, INSERT, UPDATE, DELETE ON external_records, external_record_counts"
            " TO auditor",
        )
        _admin(_with_database(admin, "bare"), "GRANT ALL ON SCHEMA public TO auditor")
        yield f"127.0.0.1:{cluster.port}", cluster.port
    finally:
        pydantic_toast.close_storage()
        cluster.destroy()


@pytest.fixture(scope="module")
def audited_redis() -> Iterator[int]:
    """A throwaway redis-server whose password is PASSWORD, with an ACL user ``app``."""
    try:
        server = servers.TempRedis("--requirepass", PASSWORD)
    except FileNotFoundError:
        if servers.IN_CI:
            pytest.fail("no redis-server binary")
        pytest.skip("no redis-server binary")
    admin = redis.Redis(port=server.port, password=PASSWORD)
    admin.execute_command("ACL", "SETUSER", "app", "on", f">{PASSWORD}x", "~*", "+@all")
    admin.close()
    try:
        yield server.port
    finally:
        pydantic_toast.close_storage()
        server.stop()


def _params() -> list[Any]:
    return [
        pytest.param(name, id=name, marks=[getattr(pytest.mark, mark) for mark in marks])
        for name, (_, marks) in SCENARIOS.items()
    ]


@pytest.mark.parametrize("name", _params())
def test_no_secret_or_data_on_any_error_path(
    name: str,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The scenario fails, and no string it produced holds the password or the field value."""
    caplog.set_level(logging.DEBUG)
    _CAPSYS[:] = [capsys]
    audit = Audit()
    run, _ = SCENARIOS[name]
    try:
        run(audit, Servers(request))
    finally:
        pydantic_toast.close_storage()
    for model in audit.models:
        audit.strings += [repr(model.__toast_settings__), repr(model.model_config)]  # type: ignore[attr-defined]
    for record in caplog.records:
        audit.strings.append(record.getMessage())
        if record.exc_info:
            audit.strings.append("".join(traceback.format_exception(*record.exc_info)))
    hits = [  # case-insensitive: a host parsed out of a password comes back lowercased
        (needle, text[max(0, text.lower().find(needle)) - 60 :][:120])
        for text in audit.strings
        for needle in (n.lower() for n in NEEDLES)
        if needle in text.lower()
    ]
    report = os.environ.get("TOAST_AUDIT_REPORT")
    if report:
        with open(report, "a") as file:
            line = {"id": name, "strings": len(audit.strings), "hits": len(hits)}
            file.write(json.dumps(line) + "\n")
    assert audit.strings
    assert not hits, hits[:5]


def test_long_inputs_give_bounded_messages(caplog: pytest.LogCaptureFixture) -> None:
    """1 MB class names, URLs, options and ids give messages and log lines under 1 KB."""
    huge = "x" * 1_000_000
    messages: list[str] = []
    for config in (
        {"storage": f"postgresql://app:pw@127.0.0.1:1/shop?{huge}=1"},
        {"storage": f"redis://127.0.0.1:1/0?max_connections={huge}"},
        {"storage": f"nosuchscheme{huge}://host"},
        {"storage": huge},
        {"storage": "memory://a", "schema_version": huge},
    ):
        with pytest.raises(pydantic_toast.ExternalStorageError) as info:
            type(
                "Big",
                (ExternalBaseModel,),
                {"__annotations__": {"text": str}, "model_config": ExternalConfigDict(**config)},  # type: ignore[typeddict-item]
            )
        messages.append(str(info.value))
    for storage in (
        f"postgresql://{huge}:pw@127.0.0.1:{servers.free_port()}/{huge}",
        f"redis://{huge}.invalid:{servers.free_port()}/0",
    ):
        model = type(
            "Far",
            (ExternalBaseModel,),
            {"__annotations__": {"text": str}, "model_config": ExternalConfigDict(storage=storage)},
        )
        with pytest.raises(pydantic_toast.ExternalStorageError) as info:
            model(text="x").model_dump()
        messages.append(str(info.value))
    model = type(
        "Small",
        (ExternalBaseModel,),
        {
            "__annotations__": {"text": str},
            "model_config": ExternalConfigDict(storage=f"memory://{uuid4().hex}"),
        },
    )
    for reference in (
        {"class_name": huge, "id": str(uuid4())},
        {"class_name": "Small", "id": huge},
    ):
        with pytest.raises(pydantic_toast.ExternalStorageError) as info:
            model.model_validate(reference)
        messages.append(str(info.value))
    messages += [record.getMessage() for record in caplog.records]
    assert len(messages) > 9
    assert all(len(message) < 1024 for message in messages), [
        m[:300] for m in messages if len(m) >= 1024
    ]
