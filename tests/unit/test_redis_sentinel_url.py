"""redis+sentinel:// URLs: sentinels, service, database, options and masking, without a server."""

from __future__ import annotations

import pytest

from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    StorageConfigurationError,
    UnknownSchemeError,
)
from pydantic_toast._url import StorageURL
from pydantic_toast.backends.redis_sentinel import RedisSentinelBackend
from pydantic_toast.backends.registry import BackendRegistry

URL = (
    "redis+sentinel://app:data-secret@s1:26379,s2:26380/mymaster/3"
    "?prefix=shop&sentinel_password=sentinel-secret&sentinel_username=watch"
)


def test_the_scheme_is_built_in() -> None:
    """redis+sentinel names the Sentinel backend."""
    assert BackendRegistry().class_for("redis+sentinel") is RedisSentinelBackend


def test_the_url_splits_into_sentinels_service_database_and_credentials() -> None:
    """The hosts are sentinels; the path is service then database; each side has its password."""
    backend = RedisSentinelBackend(URL)
    assert backend._sentinels == [("s1", 26379), ("s2", 26380)]
    assert (backend._service, backend._database, backend._prefix) == ("mymaster", 3, "shop")
    assert (backend._parsed.username, backend._parsed.password) == ("app", "data-secret")
    assert backend._sentinel_credentials == {"username": "watch", "password": "sentinel-secret"}
    assert backend.key("Order", backend_id()) == f"shop:Order:{backend_id()}"


def backend_id() -> object:
    from uuid import UUID

    return UUID(int=7)


def test_both_passwords_are_masked() -> None:
    """Neither the data nodes' nor the sentinels' password shows in the backend or the URL."""
    shown = [repr(RedisSentinelBackend(URL)), str(StorageURL.parse(URL))]
    for text in shown:
        assert "data-secret" not in text
        assert "sentinel-secret" not in text
        assert "***" in text


def test_the_database_defaults_to_0() -> None:
    """Without a database number in the path, database 0 is used."""
    assert RedisSentinelBackend("redis+sentinel://s1:26379/mymaster")._database == 0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://s1:26379/", "service name"),
        ("redis+sentinel://s1:26379/svc/0/extra", "service name"),
        ("redis+sentinel://s1:26379/svc/x", "database number"),
        ("redis+sentinel://s1:26379/svc?colour=red", "unknown option"),
        ("redis+sentinel://s1:26379,s2/svc", "host:port"),
        ("redis+sentinel://s1:26379/svc?max_connections=0", "positive"),
        # NaN compared false with 0 and passed: the pool then waited for ever.
        ("redis+sentinel://s1:26379/svc?pool_timeout=nan", "positive"),
        ("redis+sentinel://s1:26379/svc?socket_timeout=nan", "positive"),
    ],
)
def test_bad_urls_are_refused_at_class_definition(url: str, message: str) -> None:
    """A model with a bad Sentinel URL fails when its class is defined, naming the fix."""
    with pytest.raises(StorageConfigurationError, match=message):

        class Broken(ExternalBaseModel):
            model_config = ExternalConfigDict(storage=url)
            text: str


def test_store_identity_ignores_sentinel_order_and_credentials() -> None:
    """Two spellings of the same service, database and prefix are the same store."""
    identity = RedisSentinelBackend.store_identity
    one = StorageURL.parse("redis+sentinel://a:1,b:2/svc/0?prefix=p&sentinel_password=x")
    two = StorageURL.parse("redis+sentinel://b:2,a:1/svc?prefix=p")
    other = StorageURL.parse("redis+sentinel://b:2,a:1/svc/1?prefix=p")
    assert identity(one) == identity(two) != identity(other)


def test_tls_through_sentinel_is_refused_without_suggesting_plain_text() -> None:
    """rediss+sentinel:// is not served; the error says so instead of suggesting the
    unencrypted redis+sentinel:// as the closest spelling, and shows no password."""
    with pytest.raises(UnknownSchemeError) as info:

        class Secure(ExternalBaseModel):
            model_config = ExternalConfigDict(storage="rediss+sentinel://:pw9@s1:26379/svc")
            text: str

    message = str(info.value)
    assert "TLS through Redis Sentinel is not supported" in message
    assert "did you mean" not in message
    assert "pw9" not in message
