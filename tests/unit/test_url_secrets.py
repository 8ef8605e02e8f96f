"""Passwords written any way into any storage URL never show: a property test.

Generated passwords hold ``@ / # ? & ; :`` unencoded, between tokens that appear nowhere else;
each goes into every URL shape the built-in backends take (user information, secret-named
options, host lists, Sentinel's own password, S3 keys, replicas, malformed URLs), with and
without a problem that makes the URL fail. No token of the password may appear in
:func:`mask_url`, in ``str``/``repr`` of the parsed URL, in the reprs of a model's settings and
``model_config``, or anywhere in the exception chain of the error the URL raises. Where the
URL parses, the parser must also read the password back exactly (what the mask hides is what
the driver gets).
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from pydantic_toast._url import StorageURL, mask_url
from pydantic_toast.testing import isolated_storage

SPECIALS = "@/#?&;:"

# {pw}: the password; {problem}: nothing, or something that makes the URL fail.
SHAPES: dict[str, tuple[str, str | None]] = {
    # name: (URL, where the parser must find the password: "userinfo" or an option name)
    "postgresql": ("postgresql://app:{pw}@db.example:5432/shop{problem}", "userinfo"),
    "postgresql-query": (
        "postgresql://app@db.example:5432/shop?password={pw}{problem}",
        "password",
    ),
    "postgresql-sslpassword": (
        "postgresql://app:{pw}@db.example/shop?sslmode=require&sslpassword={pw}{problem}",
        "sslpassword",
    ),
    "postgresql-replicas": (
        "postgresql://app:{pw}@primary:5432/shop?replicas=r1:5432,r2:5433"
        "&read_your_writes=1{problem}",
        "userinfo",
    ),
    "redis": ("redis://:{pw}@cache:6379/0{problem}", "userinfo"),
    "redis-user-and-query": ("redis://app:{pw}@cache:6379/0?password={pw}{problem}", "userinfo"),
    "rediss": ("rediss://app:{pw}@cache:6380/0?ssl_cert_reqs=none{problem}", "userinfo"),
    "redis-cluster": (
        "redis+cluster://app:{pw}@n1:7000,n2:7001,n3:7002/?buckets=8{problem}",
        "userinfo",
    ),
    "redis-sentinel": (
        "redis+sentinel://app:{pw}@s1:26379,s2:26380/mymaster/0"
        "?sentinel_password={pw}&sentinel_username=watch{problem}",
        "sentinel_password",
    ),
    "redis-sentinel-only": (
        "redis+sentinel://s1:26379/mymaster?sentinel_password={pw}{problem}",
        "sentinel_password",
    ),
    "s3-userinfo": (
        "s3://AKIAEXAMPLE:{pw}@bucket/prefix?endpoint_url=http://127.0.0.1:9000{problem}",
        "userinfo",
    ),
    "s3-options": (
        "s3://bucket/prefix?aws_secret_access_key={pw}&endpoint_url=http://127.0.0.1:9{problem}",
        "aws_secret_access_key",
    ),
    "sqlite-query": ("sqlite:///tmp/x.db?password={pw}{problem}", "password"),
    "no-slashes": ("postgres:{pw}@db.example/shop{problem}", None),
    "no-scheme": ("app:{pw}@db.example/shop{problem}", None),
    "scheme-no-slashes": ("postgresql:app:{pw}@db.example/shop{problem}", None),
}
PROBLEMS = ("", "&bogus=1", "&pool_size=-3", "&batch_size=x")


@st.composite
def passwords(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A password of tokens and unencoded special characters, and its tokens."""
    parts = draw(
        st.lists(
            st.one_of(st.just("token"), st.text(alphabet=SPECIALS, min_size=1, max_size=3)),
            min_size=1,
            max_size=7,
        ).filter(lambda items: "token" in items)
    )
    tokens: list[str] = []
    text = ""
    for part in parts:
        if part == "token":
            tokens.append(f"Zq{len(tokens)}Tok{len(tokens)}w")  # deterministic: replayable
            text += tokens[-1]
        else:
            text += part
    return text, tokens


def url_of(template: str, password: str, problem: str) -> str:
    # 'app:' + '//x@host' is a well-formed URL (scheme app, user x): not a password to find.
    assume(not (template.startswith(("postgres:{pw}", "app:{pw}")) and password[:2] == "//"))
    if problem and "?" not in template:
        problem = f"?{problem[1:]}"
    return template.format(pw=password, problem=problem)


def chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack = [error]
    while stack:
        link = stack.pop()
        if id(link) not in seen:
            seen.add(id(link))
            yield link
            stack += [e for e in (link.__cause__, link.__context__) if e is not None]


def shown_for(url: str) -> list[str]:
    """Every string the library makes of ``url``: mask, parse, class statement, errors."""
    texts = [mask_url(url)]
    try:
        parsed = StorageURL.parse(url)
    except Exception as exc:
        texts += [f"{link}{link!r}{link.args!r}" for link in chain(exc)]
    else:
        texts += [str(parsed), repr(parsed), parsed.masked]
    with isolated_storage():
        try:
            model = type(
                "Vault",
                (ExternalBaseModel,),
                {
                    "__annotations__": {"note": str},
                    "model_config": ExternalConfigDict(storage=url, concurrency="last-write-wins"),
                },
            )
        except Exception as exc:
            texts += [f"{link}{link!r}{link.args!r}" for link in chain(exc)]
            texts += [str(getattr(link, "__notes__", "")) for link in chain(exc)]
            texts.append("".join(traceback.format_exception_only(exc)))
        else:
            texts += [repr(model.model_config), repr(model.__toast_settings__)]  # type: ignore[attr-defined]
    return texts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    password=passwords(), shape=st.sampled_from(sorted(SHAPES)), problem=st.sampled_from(PROBLEMS)
)
def test_no_token_of_any_password_shows(
    password: tuple[str, list[str]], shape: str, problem: str
) -> None:
    """No piece of the password in any string made of the URL; the parser reads it exactly."""
    text, tokens = password
    template, where = SHAPES[shape]
    url = url_of(template, text, problem)
    shown = shown_for(url)
    leaks = [(token, s) for s in shown for token in tokens if token in s]
    assert not leaks, leaks[:3]
    if where is not None:
        parsed = StorageURL.parse(url)
        assert (parsed.password if where == "userinfo" else parsed.query[where]) == text


@settings(max_examples=200, deadline=None)
@given(
    password=passwords(), shape=st.sampled_from(sorted(SHAPES)), problem=st.sampled_from(PROBLEMS)
)
def test_mask_url_hides_every_token(
    password: tuple[str, list[str]], shape: str, problem: str
) -> None:
    """The mask alone, many more examples: no token of the password survives it."""
    text, tokens = password
    template, _ = SHAPES[shape]
    masked = mask_url(url_of(template, text, problem))
    assert "***" in masked
    assert not [token for token in tokens if token in masked], masked


def test_the_mask_keeps_what_is_not_secret() -> None:
    """Host lists, options and paths stay readable: only the secrets go."""
    url = (
        "redis+sentinel://app:p@ss/w#rd?&;:x@s1:26379,s2:26380/mymaster/0"
        "?sentinel_password=a&b;c@d&prefix=shop"
    )
    assert mask_url(url) == (
        "redis+sentinel://app:***@s1:26379,s2:26380/mymaster/0?sentinel_password=***&prefix=shop"
    )
    assert StorageURL.parse(url).password == "p@ss/w#rd?&;:x"
    assert StorageURL.parse(url).query["sentinel_password"] == "a&b;c@d"
    assert mask_url("sqlite:///data/a@b.db") == "sqlite:///data/a@b.db"
    assert StorageURL.parse("sqlite:///data/a@b.db").path == "/data/a@b.db"
