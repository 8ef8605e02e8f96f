"""A small shop on the FastAPI integration, served by uvicorn in the over-HTTP tests.

``DATABASE_URL=postgresql://... uvicorn tests.integration.fastapi_shop:app``. Customers belong
to a tenant; an order may name its customer by reference only when the customer is of the
caller's tenant (the ``X-Tenant`` header), through the authorization hook.

No ``from __future__ import annotations``: FastAPI resolves route annotations at runtime.
"""

from typing import Annotated

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel

import pydantic_toast
from pydantic_toast import AcceptReference, Expanded, ExternalBaseModel, ExternalConfigDict
from pydantic_toast.fastapi import (
    check_storage,
    conditional,
    install,
    storage_lifespan,
)


class Customer(ExternalBaseModel):
    """A customer of one tenant."""

    name: str
    tenant: str
    model_config = ExternalConfigDict(storage="env:DATABASE_URL")


class Order(ExternalBaseModel):
    """An order, holding its customer."""

    product: str
    quantity: int
    customer: Customer
    model_config = ExternalConfigDict(storage="env:DATABASE_URL")


async def same_tenant(reference: pydantic_toast.ExternalReference, request: Request) -> bool:
    """Only customers of the caller's tenant may be named by reference."""
    customer = await Customer.aload(reference.uuid)
    return customer.tenant == request.headers.get("X-Tenant")


class NewOrder(BaseModel):
    """An order whose customer is given as data, or as a reference of the caller's tenant."""

    product: str
    quantity: int
    customer: Annotated[Customer, AcceptReference(authorize=same_tenant)]


class Quantity(BaseModel):
    """A change of quantity."""

    quantity: int


app = FastAPI(title="shop", lifespan=storage_lifespan(Customer, Order))
install(app)


@app.post("/customers", status_code=201)
async def add_customer(customer: Customer) -> Customer:
    """Full data only: a reference here is refused (it would read someone else's record)."""
    return customer


@app.post("/orders", status_code=201)
async def add_order(order: Order) -> Order:
    """Full data only, the customer included; answers the order's reference."""
    return order


@app.post("/orders/by-reference", status_code=201)
async def place_order(body: NewOrder) -> Expanded[Order]:
    """The customer as data, or as a reference to a customer of the caller's tenant."""
    order = Order(product=body.product, quantity=body.quantity, customer=body.customer)
    await order.asave()
    return order


@app.get("/orders/{id}")
async def get_order(order: Annotated[Order, Depends(conditional(Order))]) -> Expanded[Order]:
    return order


@app.patch("/orders/{id}")
async def change_quantity(
    order: Annotated[Order, Depends(conditional(Order, require=True))], body: Quantity
) -> Expanded[Order]:
    """If-Match is required here (428 without it)."""
    order.quantity = body.quantity
    await order.asave()
    return order


@app.delete("/orders/{id}", status_code=204)
async def delete_order(order: Annotated[Order, Depends(conditional(Order, require=True))]) -> None:
    await pydantic_toast.adelete(Order, order.external_id, revision=order.external_revision)  # type: ignore[arg-type]


@app.get("/health")
async def health() -> dict[str, str]:
    await check_storage(Customer)
    return {"status": "ok"}
