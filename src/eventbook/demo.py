"""The seed's sign-up, in both styles, as runnable books (`eventbook demo`).

Choreography: CustomerService publishes `customer.signup`; Bank, Mail and Post
subscribe (Mail also to `customer.update`). Orchestration: CustomerService drives
the same three services in turn with requests, and waits for each answer.
"""

from __future__ import annotations

import asyncio
import inspect
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


def orchestration(console: Console) -> tuple[eb.EventBook, Any]:
    """Build the orchestrated book; return it and the action that runs the sign-up."""
    book = eb.EventBook("signup-orchestration")
    OPEN_ACCOUNT = book.topic("bank.open_account", Customer, reply=Account)
    SEND_MAIL = book.topic("mail.send_welcome", Customer)
    SEND_PACKAGE = book.topic("post.send_package", Customer)

    me = "/signup-orchestration/CustomerService"

    @book.service
    class CustomerService:
        async def signup(self, customer: Customer) -> Account:
            account: Account = await book.request(OPEN_ACCOUNT, customer, source=me)
            await book.request(SEND_MAIL, customer, source=me)
            await book.request(SEND_PACKAGE, customer, source=me)
            console.print(
                f"[bold cyan]CustomerService[/] signed up {customer.name}: {account.number}"
            )
            return account

    @book.service
    class BankService:
        @eb.sub(OPEN_ACCOUNT)
        def create_account(self, customer: Customer) -> Account:
            console.print(
                f"    Service Name: {type(self).__name__}, Customer Name: {customer.name}"
            )
            return Account(number="ACC-0001", holder=customer.name)

    @book.service
    class MailService:
        @eb.sub(SEND_MAIL)
        async def send(self, customer: Customer) -> None:
            console.print(f"    Service Name: {type(self).__name__}, To: {customer.email}")

    @book.service
    class PostService:
        @eb.sub(SEND_PACKAGE)
        def send(self, customer: Customer) -> None:
            console.print(f"    Service Name: {type(self).__name__}, Address: {customer.address}")

    async def act() -> None:
        await CustomerService().signup(Customer(**SELO))

    return book, act


#: Bank, Mail and Post get the sign-up; Mail gets the update.
CHOREOGRAPHY_DELIVERIES = 4

STYLES = {"choreography": choreography, "orchestration": orchestration}


def run(style: str, broker: str | None, console: Console) -> None:
    """Run the sign-up in `style` ('choreography', 'orchestration' or 'both')."""
    for name in STYLES if style == "both" else [style]:
        console.rule(f"[bold]{name}")
        book, act = STYLES[name](console)
        trace = Trace(console)
        book.observe(trace)
        if inspect.iscoroutinefunction(act):
            asyncio.run(_run_async(book, act, broker))
        else:
            with book.start(broker):
                act()
                trace.wait_for(CHOREOGRAPHY_DELIVERIES)


async def _run_async(book: eb.EventBook, act: Any, broker: str | None) -> None:
    async with book.start(broker):
        await act()
