"""Storage URLs: parsed once, and never shown with their secrets.

A password can hide in a URL in several places: the user-info part (even unencoded, holding
``@``, ``/``, ``#``, ``?``, ``&``, ``;`` or ``:``), a query option such as ``?password=`` or
``?sentinel_password=``, or a string that is not a URL at all (``postgres:secret@host/db``).
One layout function (:func:`_layout`) decides where each part of a URL starts; parsing and
:func:`mask_url` both use it, so what the parser hands a driver as a password is exactly what
the mask hides. Every message, ``repr`` and log line of the library shows URLs through it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, unquote_plus, urlsplit

from pydantic_toast._exceptions import StorageConfigurationError, shorten

__all__ = [
    "ENV_PREFIX",
    "MaskedURL",
    "StorageURL",
    "check_env_spec",
    "host_list",
    "is_secret_option",
    "mask_url",
    "resolve_storage",
    "rewrite_url",
    "url_without_options",
]

ENV_PREFIX = "env:"
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*$")
_SCHEME_PREFIX = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-]*://")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Query options whose values are secrets wherever they appear (sslpassword, sentinel_password,
# aws_secret_access_key, token, ...). Masking a harmless one (sslkey, a path) costs nothing.
_SECRET_NAME = re.compile(r"(?i)pass|pwd|secret|token|credential|key|auth")
_OPTION_START = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*=")
# A secret value runs to the next '&name=' (so an unencoded '&', ';', '#' or '@' in it stays
# hidden); any other value runs to the next '&'.
_NEXT_OPTION = re.compile(r"&(?=[A-Za-z_][A-Za-z0-9_.\-]*=)")
# A host part: one host, or a comma-separated list (cluster seeds, sentinels, replicas).
_HOST = re.compile(r"[A-Za-z0-9.\-\[\]:_%,]*")
_ONE_HOST = r"(?:[A-Za-z0-9.\-_%]+|\[[0-9A-Fa-f:.%]*\])(?::[0-9]+)?"
_CLEAN_HOSTS = re.compile(rf"(?:{_ONE_HOST}(?:,{_ONE_HOST})*)?")
_MASK = "***"


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where the parts of a URL string start (indices into it; -1 for an absent part)."""

    start: int  # after 'scheme://' (0 without one): user information or host
    at: int  # the '@' ending the user information
    host_end: int  # the first '/', '?' or '#' after the host part, or len(raw)
    query: int  # the '?' starting the query options


@dataclass(frozen=True, slots=True)
class _Option:
    name: str
    value: str
    item: tuple[int, int]  # (start, end) of 'name=value' in the URL string
    value_span: tuple[int, int]  # (start, end) of the raw value
    secret: bool


def _host_end(raw: str, begin: int, shape: re.Pattern[str] = _HOST) -> int | None:
    """Where a host part starting at ``begin`` ends, if a host part is what starts there."""
    end = shape.match(raw, begin)
    assert end is not None  # '*' always matches
    stop = end.end()
    return stop if stop == len(raw) or raw[stop] in "/?#" else None


def _layout(raw: str) -> _Layout:
    """Split ``raw`` into user information, host part and query, tolerating unencoded secrets.

    The user information ends at the last ``@`` followed by something shaped like a host,
    unless that ``@`` sits in a query option (``?name=...``) of an earlier such ``@``: a query
    value may hold an ``@`` too (``?sentinel_password=a@b``). Ambiguous only for a password
    that itself holds ``@host?name=``, which must then be percent-encoded.
    """
    scheme = _SCHEME_PREFIX.match(raw)
    start = scheme.end() if scheme else 0
    # 'scheme:///path' has no host, hence no user information (an '@' is the path's).
    no_host = raw.startswith("/", start)
    candidates = [
        i
        for i in range(start, len(raw))
        if raw[i] == "@" and not no_host and _host_end(raw, i + 1) is not None
    ]
    # Without user information the host part would start at 'start': when that reads as a
    # clean host list, an '@' in its query options is no user information's end.
    clean = _host_end(raw, start, _CLEAN_HOSTS)
    host_ends = [] if clean is None else [clean]
    at = -1
    for position in candidates:
        if not any(_in_query(raw, host_end, position) for host_end in host_ends):
            at = position
        host_ends.append(_host_end(raw, position + 1) or position)
    host_begin = at + 1 if at >= 0 else start
    ends = [i for i in (raw.find(c, host_begin) for c in "/?#") if i >= 0]
    host_end = min(ends, default=len(raw))
    return _Layout(start, at, host_end, raw.find("?", host_end))


def _in_query(raw: str, host_end: int, position: int) -> bool:
    """Whether ``position`` lies in query options (``?name=...``) after ``host_end``."""
    mark = raw.find("?", host_end, position)
    return mark >= 0 and bool(_OPTION_START.match(raw, mark + 1))


def _options(raw: str, layout: _Layout) -> list[_Option]:
    """The query options of ``raw``, with where each value sits."""
    if layout.query < 0:
        return []
    options: list[_Option] = []
    position = layout.query + 1
    while position < len(raw):
        amp = raw.find("&", position)
        item_end = len(raw) if amp < 0 else amp
        equals = raw.find("=", position, item_end)
        if equals < 0:  # 'name' alone (blank value)
            if item_end > position:
                name = unquote_plus(raw[position:item_end])
                span = (item_end, item_end)
                secret = is_secret_option(name)
                options.append(_Option(name, "", (position, item_end), span, secret))
            position = item_end + 1
            continue
        name = unquote_plus(raw[position:equals])
        secret = is_secret_option(name)
        if secret:
            following = _NEXT_OPTION.search(raw, equals + 1)
            item_end = following.start() if following else len(raw)
        value = raw[equals + 1 : item_end]
        span = (equals + 1, item_end)
        options.append(_Option(name, unquote_plus(value), (position, item_end), span, secret))
        position = item_end + 1
    return options


def mask_url(raw: str) -> str:
    """``raw`` with every password it may hold replaced by ``***``.

    Works on malformed input too: the password in the user information (even with unencoded
    ``@/#?&;:``), every secret-named query option (``password``, ``sslpassword``,
    ``sentinel_password``, ``*secret*``, ``*token*``, ``*key*``, ...), and a string without
    ``scheme://``, whose user information runs from its start.
    """
    if not isinstance(raw, str):
        return f"<{type(raw).__name__}>"
    layout = _layout(raw)
    pieces: list[tuple[int, int]] = [
        option.value_span for option in _options(raw, layout) if option.secret
    ]
    if layout.at >= 0:
        colon = raw.find(":", layout.start, layout.at)
        if colon >= 0:
            pieces.append((colon + 1, layout.at))
    masked, kept = [], 0
    for begin, end in sorted(pieces):
        masked += [raw[kept:begin], _MASK]
        kept = end
    return "".join([*masked, raw[kept:]])


def url_without_options(raw: str, names: Collection[str]) -> str:
    """``raw`` without the query options in ``names`` (the others kept exactly as written)."""
    layout = _layout(raw)
    if layout.query < 0:
        return raw
    options = _options(raw, layout)
    kept = [raw[o.item[0] : o.item[1]] for o in options if o.name not in names]
    head = raw[: layout.query]
    return f"{head}?{'&'.join(kept)}" if kept else head


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
        if not _SCHEME_PREFIX.match(raw):  # what precedes '://' may hold a password: not shown
            raise StorageConfigurationError(
                f"storage URL {_describe(raw)} has an invalid scheme: a scheme is a letter "
                "followed by letters, digits, '+', '-' or '.', as in postgresql://"
            )
        layout = _layout(raw)
        scheme = raw[: layout.start - 3]
        user, colon, password = raw[layout.start : max(layout.at, layout.start)].partition(":")
        hosts = raw[layout.at + 1 if layout.at >= 0 else layout.start : layout.host_end]
        path = raw[layout.host_end : layout.query if layout.query >= 0 else len(raw)]
        try:
            # A host list (cluster seeds) keeps its first entry for host and port; backends
            # that take several read them all with host_list().
            parts = urlsplit(f"//{hosts.split(',', 1)[0]}")
            port = parts.port
        except ValueError:
            raise StorageConfigurationError(
                f"storage URL {_describe(raw)} has an invalid port (or host): use a number from 1 "
                "to 65535"
            ) from None
        return cls(
            raw=raw,
            scheme=scheme.lower(),
            host=parts.hostname,
            port=port,
            username=unquote(user) if user else None,
            password=unquote(password) if colon else None,
            path=path.split("#", 1)[0],
            query={option.name: option.value for option in _options(raw, layout)},
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
        """The URL without its query options, its user information percent-encoded.

        For drivers that know none of the options: they parse the password right even when
        it was written unencoded.
        """
        layout = _layout(self.raw)
        userinfo = ""
        if self.username is not None or self.password is not None:
            userinfo = quote(self.username or "", safe="")
            if self.password is not None:
                userinfo += f":{quote(self.password, safe='')}"
            userinfo += "@"
        rest = self.raw[layout.host_end : layout.query if layout.query >= 0 else len(self.raw)]
        hosts = self.raw[layout.at + 1 if layout.at >= 0 else layout.start : layout.host_end]
        return f"{self.raw[: layout.start]}{userinfo}{hosts}{rest}"

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
    return bool(_SECRET_NAME.search(name))


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


def host_list(raw: str) -> list[str]:
    """The ``host:port`` entries of a URL whose host part lists several, comma-separated.

    ``redis+cluster://a:7000,b:7001/`` gives ``["a:7000", "b:7001"]``; a URL with one host
    gives that one (``[]`` when it has none).
    """
    layout = _layout(raw)
    hosts = raw[layout.at + 1 if layout.at >= 0 else layout.start : layout.host_end]
    return [host for host in hosts.split(",") if host]


def rewrite_url(
    raw: str, *, scheme: str | None = None, path: str | None = None, drop: Collection[str] = ()
) -> str:
    """``raw`` with another scheme, path, or without some query options; the rest as written."""
    raw = url_without_options(raw, drop)
    layout = _layout(raw)
    tail = raw[layout.query :] if layout.query >= 0 else ""
    if path is None:
        path = raw[layout.host_end : layout.query if layout.query >= 0 else len(raw)]
    head = raw[: layout.host_end]
    if scheme is not None and layout.start >= 3:
        head = f"{scheme}{head[layout.start - 3 :]}"
    return f"{head}{path}{tail}"


def _describe(raw: object) -> str:
    if isinstance(raw, str):
        return repr(shorten(mask_url(raw))) if raw else "''"
    return f"of type {type(raw).__name__}"
