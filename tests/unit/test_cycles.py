"""Cycles and deep chains of external models: stored once, loaded once, without recursion."""

from __future__ import annotations

import sys

from pydantic import BaseModel, TypeAdapter

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from tests.conftest import CALL_LOGS, memory_store_of


def node_class(url: str) -> type[ExternalBaseModel]:
    class Node(ExternalBaseModel):
        value: int
        next: Node | None = None
        model_config = ExternalConfigDict(storage=url)

    Node.model_rebuild(_types_namespace={"Node": Node})
    return Node


def pair_classes(url: str) -> tuple[type[ExternalBaseModel], type[ExternalBaseModel]]:
    class Author(ExternalBaseModel):
        name: str
        books: list[Book] = []
        model_config = ExternalConfigDict(storage=url)

    class Book(ExternalBaseModel):
        title: str
        author: Author | None = None
        model_config = ExternalConfigDict(storage=url)

    namespace = {"Author": Author, "Book": Book}
    Author.model_rebuild(_types_namespace=namespace)
    Book.model_rebuild(_types_namespace=namespace)
    return Author, Book


def test_two_node_cycle_round_trips_as_the_same_objects(counting_url: str) -> None:
    """a.next = b; b.next = a stores two records in one batch and loads back as a cycle."""
    node = node_class(counting_url)
    a = node(value=1)
    b = node(value=2, next=a)
    a.next = b  # type: ignore[attr-defined]
    reference = a.model_dump()
    log = CALL_LOGS[counting_url]
    assert [call.size for call in log.of("save")] == [2]
    loaded = node.model_validate(reference)
    assert loaded.value == 1  # type: ignore[attr-defined]
    assert loaded.next.value == 2  # type: ignore[attr-defined]
    assert loaded.next.next is loaded  # type: ignore[attr-defined]
    assert sum(call.size for call in log.of("load")) == 2  # each record read once


def test_self_reference_round_trips(memory_url: str) -> None:
    """A node whose next is itself loads back pointing at itself."""
    node = node_class(memory_url)
    a = node(value=7)
    a.next = a  # type: ignore[attr-defined]
    loaded = node.model_validate(a.model_dump())
    assert loaded.next is loaded  # type: ignore[attr-defined]
    assert loaded.external_id == a.external_id


async def test_mutual_references_between_classes_round_trip_async(memory_url: str) -> None:
    """An author holding books that point back to it loads with shared identities (aload)."""
    author_cls, book_cls = pair_classes(memory_url)
    author = author_cls(name="Le Guin")
    author.books = [book_cls(title="A", author=author), book_cls(title="B", author=author)]  # type: ignore[attr-defined]
    reference = await author.asave()
    loaded = await author_cls.aload(reference)
    assert [book.title for book in loaded.books] == ["A", "B"]  # type: ignore[attr-defined]
    assert all(book.author is loaded for book in loaded.books)  # type: ignore[attr-defined]
    book = await book_cls.aload(author.books[0].external_id)  # type: ignore[attr-defined]
    assert book.author.books[0] is book  # type: ignore[attr-defined]


def test_a_record_referenced_twice_loads_as_one_instance(memory_url: str) -> None:
    """Two references to one record inside a tree give the same object, stored once."""
    node = node_class(memory_url)

    class Pair(BaseModel):
        left: node  # type: ignore[valid-type]
        right: node  # type: ignore[valid-type]

    shared = node(value=3)
    data = pydantic_toast.dump(Pair(left=shared, right=shared))
    assert len(memory_store_of(memory_url).records()) == 1
    loaded = pydantic_toast.validate(Pair, data)
    assert loaded.left is loaded.right


def test_ten_thousand_deep_chain_dumps_and_loads_without_recursion(memory_url: str) -> None:
    """A 10,000-deep linked list stores in one batch and loads back whole, iteratively."""
    node = node_class(memory_url)
    head = None
    for value in range(10_000):
        head = node(value=value, next=head)
    assert head is not None
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(400)  # proves the depth does not grow with the chain
    try:
        reference = head.model_dump()
    finally:
        sys.setrecursionlimit(limit)
    assert len(memory_store_of(memory_url).records()) == 10_000
    loaded = node.model_validate(reference)
    length, item = 0, loaded
    while item is not None:
        assert item.value == 9_999 - length  # type: ignore[attr-defined]
        length, item = length + 1, item.next  # type: ignore[attr-defined]
    assert length == 10_000


def test_deep_chain_loads_inside_a_list_and_a_page(memory_url: str) -> None:
    """Deep chains load through TypeAdapter-style validation and page() as well."""
    node = node_class(memory_url)
    head = None
    for value in range(2_000):
        head = node(value=value, next=head)
    reference = pydantic_toast.dump([head])
    (loaded,) = pydantic_toast.validate(list[node], reference)  # type: ignore[valid-type]
    assert loaded.value == 1_999
    page = pydantic_toast.page(node, limit=5)
    # A parent gets its id (and creation time) before its children: the tail is newest.
    assert [item.value for item in page.items] == [0, 1, 2, 3, 4]  # type: ignore[attr-defined]
    assert page.items[1].next is page.items[0]  # type: ignore[attr-defined]


def test_cycle_through_a_plain_model_dump_is_stored(memory_url: str) -> None:
    """A cycle dumped through TypeAdapter stores both records and loads back as a cycle."""
    node = node_class(memory_url)
    a = node(value=1)
    b = node(value=2, next=a)
    a.next = b  # type: ignore[attr-defined]
    adapter = TypeAdapter(list[node])  # type: ignore[valid-type]
    references = adapter.dump_python([a, b])
    loaded = pydantic_toast.validate(list[node], references)  # type: ignore[valid-type]
    assert loaded[0].next is loaded[1]
    assert loaded[1].next is loaded[0]
