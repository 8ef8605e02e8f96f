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
