"""Parsing, masking and environment resolution of storage URLs."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from pydantic_toast._exceptions import StorageConfigurationError

__all__ = ["ENV_PREFIX", "StorageURL", "check_env_spec", "mask_url", "resolve_storage"]

ENV_PREFIX = "env:"
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class StorageURL:
    """A parsed storage URL.

    ``str()`` and ``repr()`` give the URL with its password masked; ``raw`` keeps the original.
    """

    raw: str
    scheme: str
    host: str | None
    port: int | None
    username: str | None
    password: str | None
    path: str
    query: dict[str, str]

    @classmethod
    def parse(cls, raw: str) -> StorageURL:
        """Parse ``raw``, raising :class:`StorageConfigurationError` when it is malformed."""
        if not isinstance(raw, str) or "://" not in raw:
            raise StorageConfigurationError(
                f"storage URL {_describe(raw)} is not a URL: write it as scheme://..., for example "
                "'sqlite:///data.db', 'postgresql://user@host:5432/db' or 'redis://host:6379/0'"
            )
        scheme = raw.split("://", 1)[0]
        if not _SCHEME.match(scheme):
            raise StorageConfigurationError(
                f"storage URL {mask_url(raw)!r} has an invalid scheme {scheme!r}"
            )
        parts: SplitResult = urlsplit(raw)
        try:
            port = parts.port
        except ValueError:
            raise StorageConfigurationError(
                f"storage URL {mask_url(raw)!r} has an invalid port: use a number from 1 to 65535"
            ) from None
        return cls(
            raw=raw,
            scheme=scheme.lower(),
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            path=parts.path,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
        )

    @property
    def masked(self) -> str:
        """The URL with its password replaced by ``***``."""
        return mask_url(self.raw)

    @property
    def address(self) -> str:
        """``host:port`` for messages (empty parts left out)."""
        host = self.host or "localhost"
        return f"{host}:{self.port}" if self.port else host

    def __str__(self) -> str:
        return self.masked

    def __repr__(self) -> str:
        return f"StorageURL({self.masked!r})"


def mask_url(raw: str) -> str:
    """Return ``raw`` with the password of its user-info part replaced by ``***``."""
    scheme_end = raw.find("://")
    if scheme_end < 0:
        return raw
    rest_start = scheme_end + 3
    netloc_end = len(raw)
    for sep in "/?#":
        found = raw.find(sep, rest_start)
        if found >= 0:
            netloc_end = min(netloc_end, found)
    netloc = raw[rest_start:netloc_end]
    at = netloc.rfind("@")
    if at < 0:
        return raw
    userinfo = netloc[:at]
    colon = userinfo.find(":")
    if colon < 0:
        return raw
    masked_netloc = f"{userinfo[:colon]}:***{netloc[at:]}"
    return raw[:rest_start] + masked_netloc + raw[netloc_end:]


def resolve_storage(spec: str) -> str:
    """Turn a storage setting into a URL, reading ``env:NAME`` from the environment.

    Raises:
        StorageConfigurationError: The variable named by ``env:NAME`` is unset or empty.
    """
    if not spec.startswith(ENV_PREFIX):
        return spec
    name = spec[len(ENV_PREFIX) :]
    value = os.environ.get(name, "")
    if not value:
        raise StorageConfigurationError(
            f"storage is {spec!r} but the environment variable {name} is not set: set it to a "
            "storage URL, for example export "
            f"{name}=postgresql://user@host:5432/db"
        )
    return value


def check_env_spec(spec: str) -> None:
    """Check the variable name of an ``env:NAME`` setting (the value is read at first use)."""
    name = spec[len(ENV_PREFIX) :]
    if not _ENV_NAME.match(name):
        raise StorageConfigurationError(
            f"storage {spec!r} does not name an environment variable: write env:NAME, "
            "for example storage='env:DATABASE_URL'"
        )


def _describe(raw: object) -> str:
    if isinstance(raw, str):
        return repr(mask_url(raw)) if raw else "''"
    return f"of type {type(raw).__name__}"
