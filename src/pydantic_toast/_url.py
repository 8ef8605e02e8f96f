"""Storage URLs: parsed once, and never shown with their secrets.

A password can hide in a URL in several places: the user-info part (even unencoded, holding
``/``, ``#`` or ``?``), a query option such as ``?password=``, or a string that is not a URL
at all (``postgres:secret@host/db``). :func:`mask_url` covers all of them, and every message,
``repr`` and log line of the library shows URLs through it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from pydantic_toast._exceptions import StorageConfigurationError, shorten

__all__ = [
    "ENV_PREFIX",
    "MaskedURL",
    "StorageURL",
    "check_env_spec",
    "mask_url",
    "resolve_storage",
]

ENV_PREFIX = "env:"
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Query options whose values are secrets wherever they appear.
_SECRET_OPTION = re.compile(r"(?i)(pass|secret|token|key=|sslpassword)")
# A secret option's value runs to the next option: an unencoded '#' or '@' in it is still secret.
_QUERY_SECRET = re.compile(r"(?i)([?&;][^=&;#]*(?:pass|secret|token|credential)[^=&;#]*=)[^&;]*")
_MASK = "***"
# A host part: one host, or a comma-separated list (cluster seeds, sentinels).
_HOST_AFTER_AT = re.compile(r"[A-Za-z0-9.\-\[\]:_%,]*(?:[/?#]|$)")


def mask_url(raw: str) -> str:
    """``raw`` with every password it may hold replaced by ``***``.

    Works on malformed input too: user information ends at the last ``@`` that is followed by
    something shaped like a host, so unencoded ``/#?@`` in a password are masked as well; a
    string without ``://`` is treated as user information up to that ``@``.
    """
    if not isinstance(raw, str):
        return f"<{type(raw).__name__}>"
    span = _userinfo_span(raw)
    if span is not None:
        start, at = span
        user, colon, _ = raw[start:at].partition(":")
        if colon:
            raw = f"{raw[:start]}{user}:{_MASK}{raw[at:]}"
    return _QUERY_SECRET.sub(rf"\1{_MASK}", raw)


def _userinfo_span(raw: str) -> tuple[int, int] | None:
    """Where the user information of ``raw`` starts and ends (at its ``@``), if it has one."""
    scheme_end = raw.find("://")
    start = scheme_end + 3 if scheme_end >= 0 else 0
    # User information comes before any secret query option (whose value may hold an '@').
    secret = _QUERY_SECRET.search(raw, start)
    at = secret.start() if secret else len(raw)
    while True:
        at = raw.rfind("@", start, at)
        if at < 0:
            return None
        if _HOST_AFTER_AT.match(raw, at + 1):
            return start, at


class MaskedURL(str):
    """A storage setting whose ``repr`` masks its password (kept in ``model_config``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(mask_url(str.__str__(self)))


@dataclass(frozen=True, slots=True, eq=False)
class StorageURL:
    """A parsed storage URL.

    ``str()`` and ``repr()`` give the URL with its password masked; ``raw`` keeps the original
    (never put it in a message). Two URLs are equal when their text is.
    """

    raw: str = field(repr=False)
    scheme: str
    host: str | None
    port: int | None
    username: str | None
    password: str | None = field(repr=False)
    path: str
    query: dict[str, str] = field(repr=False)

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
                f"storage URL {_describe(raw)} has an invalid scheme {shorten(scheme, 30)!r}"
            )
        parts = urlsplit(_first_host(_quote_userinfo(raw)))
        try:
            port = parts.port
        except ValueError:
            raise StorageConfigurationError(
                f"storage URL {_describe(raw)} has an invalid port: use a number from 1 to 65535 "
                "(a password with '/', '#', '?' or '@' must be percent-encoded)"
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
        """The URL with its passwords replaced by ``***``, cut to 200 characters."""
        return shorten(mask_url(self.raw), 200)

    @property
    def address(self) -> str:
        """``host:port`` for messages (empty parts left out)."""
        host = shorten(self.host or "localhost", 100)
        return f"{host}:{self.port}" if self.port else host

    @property
    def without_query(self) -> str:
        """The raw URL without its query options (for drivers that know none of them)."""
        return self.raw.split("?", 1)[0]

    def __str__(self) -> str:
        return self.masked

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorageURL) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"StorageURL({self.masked!r})"


def is_secret_option(name: str) -> bool:
    """Whether a query option's value must never be shown."""
    return bool(_SECRET_OPTION.search(f"{name}="))


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
            f"storage is {shorten(spec)!r} but the environment variable {shorten(name)} is not "
            f"set: set it to a storage URL, for example export {shorten(name)}="
            "postgresql://user@host:5432/db"
        )
    return value


def check_env_spec(spec: str) -> None:
    """Check the variable name of an ``env:NAME`` setting (the value is read at first use)."""
    name = spec[len(ENV_PREFIX) :]
    if not _ENV_NAME.match(name):
        raise StorageConfigurationError(
            f"storage {shorten(spec)!r} does not name an environment variable: write env:NAME, "
            "for example storage='env:DATABASE_URL'"
        )


def _quote_userinfo(raw: str) -> str:
    """``raw`` with its user information percent-encoded, so ``/#?@`` in a password parse."""
    span = _userinfo_span(raw)
    if span is None:
        return raw
    start, at = span
    user, colon, password = raw[start:at].partition(":")
    return f"{raw[:start]}{quote(user, safe='%')}{colon}{quote(password, safe='%')}{raw[at:]}"


def host_list(raw: str) -> list[str]:
    """The ``host:port`` entries of a URL whose host part lists several, comma-separated.

    ``redis+cluster://a:7000,b:7001/`` gives ``["a:7000", "b:7001"]``; a URL with one host
    gives that one (``[]`` when it has none).
    """
    rest = _quote_userinfo(raw).partition("://")[2]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    hosts = rest[:end].rpartition("@")[2]
    return [host for host in hosts.split(",") if host]


def _first_host(quoted: str) -> str:
    # A host list (cluster seeds) keeps its first entry for host and port; backends that
    # take several read them all with host_list().
    head, sep, rest = quoted.partition("://")
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo, at, hosts = rest[:end].rpartition("@")
    if "," not in hosts:
        return quoted
    return f"{head}{sep}{userinfo}{at}{hosts.split(',', 1)[0]}{rest[end:]}"


def _describe(raw: object) -> str:
    if isinstance(raw, str):
        return repr(shorten(mask_url(raw))) if raw else "''"
    return f"of type {type(raw).__name__}"
