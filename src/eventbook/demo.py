"""The seed's sign-up, in both styles, as runnable books (`eventbook demo`).

Choreography: CustomerService publishes `customer.signup`; Bank, Mail and Post
subscribe (Mail also to `customer.update`). Orchestration: CustomerService drives
the same three services in turn with requests, and waits for each answer.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from typing import Any

from rich.console import Console

import eventbook as eb

SELO = {"name": "SELO", "address": "Seoul, Korea", "email": "rochan87@gmail.com"}


class Customer(eb.Event):
    name: str
    address: str
    email: str


class Account(eb.Event):
    number: str
    holder: str


class Trace(eb.Observer):
    """Prints who published what and who handled it."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.count = 0
        self._changed = threading.Condition()

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        """Wait until `count` events were handled (a durable broker delivers after publish)."""
        with self._changed:
            self._changed.wait_for(lambda: self.count >= count, timeout)

    def publishing(self, envelope: eb.Envelope) -> None:
        if envelope.type.startswith("_"):
            return
        who = envelope.source.rsplit("/", 1)[-1]
        verb = "requested" if envelope.replyto else "published"
        self.console.print(f"[bold cyan]{who}[/] {verb} [bold]{envelope.type}[/]")

    def handled(self, handler: Any, envelope: eb.Envelope, attempt: int) -> None:
        if envelope.type.startswith("_"):
            return
        self.console.print(f"  [green]✓[/] {handler.name} handled {envelope.type}")
        with self._changed:
            self.count += 1
            self._changed.notify_all()

    def failed(
        self,
        handler: Any,
        envelope: eb.Envelope,
        attempt: int,
        error: BaseException,
        retry_in: float | None,
    ) -> None:
        then = f"retry in {retry_in:.1f}s" if retry_in is not None else "dead-lettered"
        self.console.print(f"  [red]✗[/] {handler.name} failed ({error}); {then}")


def choreography(console: Console) -> tuple[eb.EventBook, Any]:
    """Build the choreographed book; return it and the action that runs the sign-up."""
    book = eb.EventBook("signup-choreography")
    SIGNUP = book.topic("customer.signup", Customer)
    UPDATE = book.topic("customer.update", Customer)

    @book.service
    class CustomerService:
        @eb.pub(SIGNUP)
        def signup(self, customer: Customer) -> Customer:
            return customer

        @eb.pub(UPDATE)
        def update(self, customer: Customer) -> Customer:
            return customer

    @book.service
    class BankService:
        @eb.sub(SIGNUP)
        def create_account(self, customer: Customer) -> None:
            console.print(
                f"    Service Name: {type(self).__name__}, Customer Name: {customer.name}"
            )

    @book.service
    class MailService:
        @eb.sub(SIGNUP)
        @eb.sub(UPDATE)
        async def send(self, customer: Customer) -> None:
            console.print(f"    Service Name: {type(self).__name__}, To: {customer.email}")

    @book.service
    class PostService:
        @eb.sub(SIGNUP)
        def send(self, customer: Customer) -> None:
            console.print(f"    Service Name: {type(self).__name__}, Address: {customer.address}")

    def act() -> None:
        customer = Customer(**SELO)
        CustomerService().signup(customer)
        CustomerService().update(customer)

    return book, act


def orchestration(console: Console, fail: str | None = None) -> tuple[eb.EventBook, Any]:
    """Build the orchestrated book: the sign-up as a durable saga.

    With `fail` ('bank', 'mail' or 'post') that service's step fails on every try,
    and the saga undoes the completed steps in reverse order.
    """
    book = eb.EventBook("signup-orchestration")
    SIGNUP = book.topic("customer.signup", Customer)

    def failing(service: str) -> None:
        if fail == service:
            console.print(f"    [red]{service.capitalize()}Service is down[/]")
            raise RuntimeError(f"{service} is down")

    @book.service
    class CustomerService:
        async def signup(self, customer: Customer) -> str:
            """Publish the sign-up; return the id of the saga it starts."""
            envelope = await book.publish(SIGNUP, customer, source=f"/{book.name}/CustomerService")
            return f"customer.onboarding:{envelope.id}"

    @book.service
    class BankService:
        def create_account(self, customer: Customer) -> Account:
            failing("bank")
            console.print(
                f"    Service Name: {type(self).__name__}, Customer Name: {customer.name}"
            )
            return Account(number="ACC-0001", holder=customer.name)

        def close_account(self, customer: Customer) -> None:
            console.print(
                f"    Service Name: {type(self).__name__}, closed the account of {customer.name}"
            )

    @book.service
    class MailService:
        async def send(self, customer: Customer) -> None:
            failing("mail")
            console.print(f"    Service Name: {type(self).__name__}, To: {customer.email}")

        async def apologize(self, customer: Customer) -> None:
            console.print(
                f"    Service Name: {type(self).__name__}, sorry mail to {customer.email}"
            )

    @book.service
    class PostService:
        def send(self, customer: Customer) -> None:
            failing("post")
            console.print(f"    Service Name: {type(self).__name__}, Address: {customer.address}")

    @book.saga("customer.onboarding", start_on=SIGNUP)
    async def onboard(saga: eb.Saga, customer: Customer) -> None:
        await saga.step(BankService.create_account, customer, undo=BankService.close_account)
        await saga.step(MailService.send, customer, undo=MailService.apologize)
        await saga.step(PostService.send, customer, retry=1, timeout=30)

    async def act() -> None:
        saga_id = await CustomerService().signup(Customer(**SELO))
        record, steps = await _finished(book, saga_id)
        for step in steps:
            verdict = {"done": "[green]done[/]", "failed": "[red]failed[/]"}.get(
                step.status, step.status
            )
            what = "undo" if step.kind == "undo" else "step"
            detail = f" ({step.error})" if step.error else ""
            console.print(f"  saga {what} {step.name}: {verdict}{detail}")
        colour = "green" if record.state == "completed" else "yellow"
        console.print(f"[bold cyan]saga customer.onboarding[/] [{colour}]{record.state}[/]")

    return book, act


async def _finished(book: eb.EventBook, saga_id: str, timeout: float = 60.0) -> Any:
    """Wait until the saga ended; return its record and journal."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = await book.journal.get(saga_id)
        if found is not None and found[0].state in ("completed", "compensated", "failed"):
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise eb.EventbookError(f"saga {saga_id} did not finish within {timeout:g}s")
        await asyncio.sleep(0.02)


#: Bank, Mail and Post get the sign-up; Mail gets the update.
CHOREOGRAPHY_DELIVERIES = 4

STYLES = {"choreography": choreography, "orchestration": orchestration}


def run(
    style: str,
    broker: str | None,
    console: Console,
    fail: str | None = None,
    store: str | None = None,
) -> None:
    """Run the sign-up in `style` ('choreography', 'orchestration' or 'both').

    `store` is the saga journal's URL (default: the broker's own file, for sqlite://).
    """
    for name in STYLES if style == "both" else [style]:
        console.rule(f"[bold]{name}")
        book, act = (
            orchestration(console, fail) if name == "orchestration" else choreography(console)
        )
        trace = Trace(console)
        book.observe(trace)
        if inspect.iscoroutinefunction(act):
            # The saga's journal tells the story; its retry warnings would only repeat it.
            logging.getLogger("eventbook.saga").setLevel(logging.ERROR)
            asyncio.run(_run_async(book, act, broker, store))
        else:
            with book.start(broker):
                act()
                trace.wait_for(CHOREOGRAPHY_DELIVERIES)


async def _run_async(book: eb.EventBook, act: Any, broker: str | None, store: str | None) -> None:
    async with book.start(broker, store=store):
        await act()
