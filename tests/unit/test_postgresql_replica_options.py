"""postgresql:// replicas= and read_your_writes options, checked without a server."""

from __future__ import annotations

import pytest

from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageConfigurationError
from pydantic_toast._url import StorageURL
from pydantic_toast.backends.postgresql_replicas import _replica_url, replica_options


def test_replicas_and_window_are_read() -> None:
    """A comma-separated replica list and the read-your-writes window in seconds."""
    url = StorageURL.parse(
        "postgresql://u:p@db:5432/app?replicas=r1:5432,r2:6432&read_your_writes=2.5"
    )
    assert replica_options(url) == (["r1:5432", "r2:6432"], 2.5)
    assert replica_options(StorageURL.parse("postgresql://u@db/app")) == ([], 5.0)


def test_a_replica_url_keeps_credentials_database_and_options() -> None:
    """A replica is reached with the primary's user, password, database and other options."""
    url = StorageURL.parse(
        "postgresql://app:s%2Fecret@db:5432/shop?sslmode=require&replicas=r1:5433&read_your_writes=1"
    )
    replica = StorageURL.parse(_replica_url(url, "r1:5433"))
    assert (replica.host, replica.port, replica.path) == ("r1", 5433, "/shop")
    assert (replica.username, replica.password) == ("app", "s/ecret")
    assert replica.query == {"sslmode": "require"}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://u@db/app?replicas=r1", "host:port"),
        ("postgresql://u@db/app?replicas=r1:99999", "host:port"),
        ("postgresql://u@db/app?replicas=r1:5432&read_your_writes=soon", "seconds"),
        ("postgresql://u@db/app?replicas=r1:5432&read_your_writes=-1", "seconds"),
        ("postgresql://u@db/app?replicas=r1:5432&read_your_writes=nan", "seconds"),
        ("postgresql://u@db/app?read_your_writes=3", "add replicas="),
    ],
)
def test_bad_options_are_refused_at_class_definition(url: str, message: str) -> None:
    """A model with bad replica options fails when its class is defined, naming the fix."""
    with pytest.raises(StorageConfigurationError, match=message):

        class Broken(ExternalBaseModel):
            model_config = ExternalConfigDict(storage=url)
            total: int
