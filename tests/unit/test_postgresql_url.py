"""postgresql:// URL options refused with the spelling to write instead (no server needed)."""

from __future__ import annotations

import pytest

from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageConfigurationError


@pytest.mark.parametrize(
    ("query", "fix"),
    [
        ("ssl=require", "write sslmode=require instead"),
        ("ssl=true", "write sslmode=verify-full instead"),
        ("ssl=verify_full", "write sslmode=verify-full instead"),
        ("ssl=sometimes", "write sslmode= instead, one of disable, allow"),
        ("ssl=require&sslmode=verify-ca", "remove ssl= (the URL's sslmode= applies)"),
    ],
)
def test_asyncpg_ssl_option_names_libpq_sslmode(query: str, fix: str) -> None:
    """asyncpg's ssl= (as in SQLAlchemy asyncpg URLs) is refused at class definition with the
    sslmode= to write instead, and never the password."""
    url = f"postgresql+asyncpg://app:s3cret@db:5432/shop?{query}"
    with pytest.raises(StorageConfigurationError) as info:
        type(
            "Secure",
            (ExternalBaseModel,),
            {"__annotations__": {"x": int}, "model_config": ExternalConfigDict(storage=url)},
        )
    message = str(info.value)
    assert "asyncpg's spelling" in message
    assert fix in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("command_timeout=0", "command_timeout must be a number of seconds above 0, got '0'"),
        ("connect_timeout=0", "connect_timeout must be a number of seconds above 0, got '0'"),
        ("command_timeout=nan", "command_timeout must be a number of seconds above 0"),
        ("connect_timeout=inf", "connect_timeout must be a number of seconds above 0"),
        ("command_timeout=-1", "command_timeout must be a number of seconds above 0"),
        ("command_timeout=soon", "command_timeout must be a number of seconds above 0"),
        ("pool_size=2.5", "pool_size must be a whole number of 1 or more, got '2.5'"),
        ("pool_size=0", "pool_size must be a whole number of 1 or more"),
        ("max_overflow=-1", "max_overflow must be a whole number of 0 or more"),
    ],
)
def test_numbers_the_driver_cannot_use_are_refused_at_class_definition(
    query: str, message: str
) -> None:
    """A timeout of 0 (asyncpg refused it only when connecting, as a bare ValueError), nan or
    inf, and a pool size that is not a whole number are refused with what to write, and never
    the password."""
    url = f"postgresql://app:s3cret@db:5432/shop?{query}"
    with pytest.raises(StorageConfigurationError, match=message) as info:
        type(
            "Timed",
            (ExternalBaseModel,),
            {"__annotations__": {"x": int}, "model_config": ExternalConfigDict(storage=url)},
        )
    assert "s3cret" not in str(info.value)


def test_fractional_timeouts_and_whole_pool_sizes_are_accepted() -> None:
    """What the options documentation promises still defines the class."""
    url = "postgresql://app@db:5432/shop?command_timeout=0.5&connect_timeout=2&pool_size=3"
    type(
        "Timed",
        (ExternalBaseModel,),
        {
            "__annotations__": {"x": int},
            "model_config": ExternalConfigDict(storage=url + "&max_overflow=0"),
        },
    )
