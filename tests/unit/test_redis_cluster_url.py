"""redis+cluster:// URLs: seed lists, options and key layout, checked without a server."""

from __future__ import annotations

from uuid import UUID

import pytest

from pydantic_toast import StorageConfigurationError
from pydantic_toast._url import StorageURL, host_list
from pydantic_toast.backends.redis_cluster import RedisClusterBackend
from pydantic_toast.backends.registry import BackendRegistry


def test_a_host_list_parses_with_the_first_host_as_host() -> None:
    """A comma-separated host list parses: host/port are the first seed, host_list gives all."""
    url = StorageURL.parse("redis+cluster://u:p%40ss@a:7000,b:7001/?prefix=x")
    assert (url.host, url.port, url.password) == ("a", 7000, "p@ss")
    assert host_list(url.raw) == ["a:7000", "b:7001"]
    assert host_list("redis://h:1/0") == ["h:1"]


def test_the_schemes_are_built_in() -> None:
    """redis+cluster and rediss+cluster name the cluster backend."""
    registry = BackendRegistry()
    assert registry.class_for("redis+cluster") is RedisClusterBackend
    assert registry.class_for("rediss+cluster") is RedisClusterBackend


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://a:7000/0", "only database 0"),
        ("redis+cluster://a:7000/?buckets=0", "buckets must be from 1"),
        ("redis+cluster://a:7000/?buckets=x", "whole number"),
        ("redis+cluster://a:7000/?wait_replicas=-1", "wait_replicas"),
        ("redis+cluster://a:7000/?colour=red", "unknown option"),
        ("redis+cluster://a:7000,b/", "host:port"),
    ],
)
def test_bad_urls_are_refused_with_the_fix(url: str, message: str) -> None:
    """Bad cluster URLs fail when checked, naming the problem."""
    with pytest.raises(StorageConfigurationError, match=message):
        RedisClusterBackend.check_url(StorageURL.parse(url))


def test_keys_share_the_bucket_hash_tag() -> None:
    """A record's key and its bucket's index key carry the same hash tag."""
    backend = RedisClusterBackend("redis+cluster://a:7000,b:7001/?prefix=shop&buckets=8")
    id = UUID(int=8 * 5 + 3)
    assert backend.key("Order", id) == f"{{shop:Order:3}}:{id}"
    assert backend.index_key("Order", 3) == "{shop:Order:3}:index"


def test_store_identity_ignores_options_and_seed_order() -> None:
    """Two spellings of the same cluster and prefix are the same store."""
    one = StorageURL.parse("redis+cluster://a:1,b:2/?prefix=p&wait_replicas=1")
    two = StorageURL.parse("redis+cluster://b:2,a:1/?prefix=p")
    other = StorageURL.parse("redis+cluster://b:2,a:1/?prefix=q")
    identity = RedisClusterBackend.store_identity
    assert identity(one) == identity(two) != identity(other)


def test_a_password_before_a_host_list_is_masked() -> None:
    """The password of a URL naming several hosts is masked like a one-host URL's."""
    url = StorageURL.parse("redis+cluster://u:hunter2@a:7000,b:7001/?prefix=x")
    assert "hunter2" not in str(url)
    assert "hunter2" not in repr(RedisClusterBackend(url.raw))
