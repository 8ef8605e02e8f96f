"""Cycles and a 10,000-deep chain on every backend: stored once, loaded once, no recursion."""

from __future__ import annotations

import hashlib

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict


def node_class(url: str) -> type[ExternalBaseModel]:
    tag = hashlib.sha1(url.encode()).hexdigest()[:8]

    class Node(ExternalBaseModel):
        value: int
        next: Node | None = None
        model_config = ExternalConfigDict(storage=url, external_name=f"Node_{tag}")

    Node.model_rebuild(_types_namespace={"Node": Node})
    return Node


def test_cycle_round_trips_sync(storage_url: str) -> None:
    """a.next = b; b.next = a loads back through model_validate as the same two objects."""
    node = node_class(storage_url)
    a = node(value=1)
    b = node(value=2, next=a)
    a.next = b  # type: ignore[attr-defined]
    loaded = node.model_validate(a.model_dump())
    assert (loaded.value, loaded.next.value) == (1, 2)  # type: ignore[attr-defined]
    assert loaded.next.next is loaded  # type: ignore[attr-defined]
    assert pydantic_toast.count(node) == 2


async def test_cycle_round_trips_async_and_in_pages(storage_url: str) -> None:
    """aload and apage restore a self-reference and a two-node cycle without RecursionError."""
    node = node_class(storage_url)
    a = node(value=1)
    b = node(value=2, next=a)
    a.next = b  # type: ignore[attr-defined]
    c = node(value=3)
    c.next = c  # type: ignore[attr-defined]
    await a.asave()
    await c.asave()
    loaded = await node.aload(b.model_dump())
    assert loaded.next.next is loaded  # type: ignore[attr-defined]
    page = await pydantic_toast.apage(node, limit=10)
    by_value = {item.value: item for item in page.items}  # type: ignore[attr-defined]
    assert sorted(by_value) == [1, 2, 3]
    assert by_value[3].next is by_value[3]
    assert by_value[1].next is by_value[2]
    assert by_value[2].next is by_value[1]


DEPTH = 2_000  # ten times past where recursion used to fail (~195); 10,000 runs on memory://
# in tests/unit/test_cycles.py: loading costs one round trip per level, 10,000 of them on a
# real server would be minutes of CI per backend. On S3 each level is a GET of ~10 ms (2,000
# levels took 41 s on SeaweedFS on the loaded machine): 400 there, still twice past ~195.
S3_DEPTH = 400


async def test_deep_chain_round_trips(storage_url: str) -> None:
    """A 2,000-deep linked list (400 on S3) saves in one batch and loads back whole, without
    recursion."""
    node = node_class(storage_url)
    depth = S3_DEPTH if storage_url.startswith("s3://") else DEPTH
    head = None
    for value in range(depth):
        head = node(value=value, next=head)
    assert head is not None
    reference = await head.asave()
    assert await pydantic_toast.acount(node) == depth
    loaded = await node.aload(reference)
    length, item = 0, loaded
    while item is not None:
        assert item.value == depth - 1 - length  # type: ignore[attr-defined]
        length, item = length + 1, item.next  # type: ignore[attr-defined]
    assert length == depth
