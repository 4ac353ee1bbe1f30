"""The seed's choreography on the documented API, fan-out, context and sync/async mixing."""

import asyncio
import threading
from typing import Any

import pytest

import eventbook as eb
from eventbook.testing import Recorder
from tests.conftest import SELO, Customer


def build_seed_book(calls: list[tuple[str, str, str]]) -> tuple[eb.EventBook, Any]:
    book = eb.EventBook("shop")
    SIGNUP = book.topic("customer.signup", Customer)
    UPDATE = book.topic("customer.update", Customer)

    @book.service
    class CustomerService:
        @eb.pub(SIGNUP)
        def signup(self, customer: Customer) -> Customer:
            return customer

        @eb.pub(UPDATE)
        async def update(self, customer: Customer) -> Customer:
            return customer

    @book.service
    class BankService:
        @eb.sub(SIGNUP)
        def create_account(self, customer: Customer) -> None:
            calls.append((type(self).__name__, "create_account", customer.name))

    @book.service
    class MailService:
        @eb.sub(SIGNUP)
        @eb.sub(UPDATE)
        async def send(self, customer: Customer) -> None:
            calls.append((type(self).__name__, "send", customer.email))

    @book.service
    class PostService:
        @eb.sub(SIGNUP)
        def send(self, customer: Customer) -> None:
            calls.append((type(self).__name__, "send", customer.address))

    @eb.sub(SIGNUP)
    async def audit(customer: Customer) -> None:
        calls.append(("audit", "audit", customer.name))

    return book, CustomerService


SIGNUP_CALLS = {
    ("BankService", "create_account", "SELO"),
    ("MailService", "send", "rochan87@gmail.com"),
    ("PostService", "send", "Seoul, Korea"),
    ("audit", "audit", "SELO"),
}


def test_seed_choreography_from_a_plain_script() -> None:
    calls: list[tuple[str, str, str]] = []
    book, customer_service = build_seed_book(calls)
    with book.start():
        customer_service().signup(SELO)
        assert set(calls) == SIGNUP_CALLS  # memory:// delivers before publish returns
        assert len(calls) == 4
    assert book.services["BankService"].instance.__class__.__name__ == "BankService"


async def test_seed_choreography_from_async_code() -> None:
    calls: list[tuple[str, str, str]] = []
    book, customer_service = build_seed_book(calls)
    async with book.start():
        await book.publish(book.topics["customer.signup"], SELO)
        await customer_service().update(SELO)
    assert set(calls) == SIGNUP_CALLS | {("MailService", "send", "rochan87@gmail.com")}
    assert len(calls) == 5
    assert calls[-1] == ("MailService", "send", "rochan87@gmail.com")


def test_each_handler_runs_with_its_own_service_instance() -> None:
    seen: dict[str, Any] = {}
    book = eb.EventBook("shop")
    signup = book.topic("customer.signup", Customer)

    class Base:
        @eb.sub(signup)
        def on_signup(self, customer: Customer) -> None:
            seen[type(self).__name__] = self

    mail = book.service(type("MailService", (Base,), {})())
    post = book.service(type("PostService", (Base,), {})())
    with book.start():
        book.emit(signup, SELO)
    assert seen == {"MailService": mail, "PostService": post}


def test_a_dict_payload_is_validated_into_the_topic_type() -> None:
    got: list[Customer] = []
    book = eb.EventBook("shop")
    signup = book.topic("customer.signup", Customer)

    @eb.sub(signup)
    def on_signup(customer: Customer) -> None:
        got.append(customer)

    with book.start():
        book.emit(signup, SELO.model_dump())
    assert got == [SELO]


def test_wrong_payload_names_the_topic_and_the_field() -> None:
    book = eb.EventBook("shop")
    signup = book.topic("customer.signup", Customer)
    with book.start(), pytest.raises(eb.PayloadError) as info:
        book.emit(signup, {"name": "SELO", "address": "Seoul"})
    assert info.value.topic == "customer.signup"
    assert info.value.field == "email"
    assert "customer.signup" in str(info.value)
    assert "'email'" in str(info.value)


def test_publishing_while_not_running_says_how_to_start() -> None:
    book = eb.EventBook("shop")
    signup = book.topic("customer.signup", Customer)
    with pytest.raises(eb.NotRunningError, match=r"start\(\)"):
        book.emit(signup, SELO)


async def test_emit_from_the_event_loop_is_refused_with_the_async_alternative() -> None:
    book = eb.EventBook("shop")
    signup = book.topic("customer.signup", Customer)
    async with book.start():
        with pytest.raises(eb.NotRunningError, match=r"await book.publish"):
            book.emit(signup, SELO)


def test_returning_none_from_a_publisher_publishes_nothing() -> None:
    recorder = Recorder()
    book = eb.EventBook("shop")
    signup = book.topic("customer.signup", Customer)
    book.observe(recorder)

    @eb.pub(signup)
    def maybe(customer: Customer | None) -> Customer | None:
        return customer

    with book.start():
        maybe(None)
        maybe(SELO)
    assert [e.data for e in recorder.published] == [SELO]


def test_events_published_while_handling_inherit_correlation_and_causation() -> None:
    recorder = Recorder()
    book = eb.EventBook("shop")
    signup = book.topic("customer.signup", Customer)
    welcome = book.topic("mail.welcome", Customer)
    package = book.topic("post.package", Customer)
    book.observe(recorder)

    @book.service
    class MailService:
        @eb.sub(signup)
        @eb.pub(welcome)
        async def send(self, customer: Customer) -> Customer:  # async publisher
            return customer

    @book.service
    class PostService:
        @eb.sub(welcome)
        def send(self, customer: Customer) -> None:  # sync, in a worker thread
            book.emit(package, customer)

    @eb.sub(package)
    def done(customer: Customer) -> None: ...

    with book.start():
        root = book.emit(signup, SELO)
    by_type = {e.type: e for e in recorder.published}
    assert set(by_type) == {"customer.signup", "mail.welcome", "post.package"}
    assert by_type["mail.welcome"].source == "/shop/MailService"
    assert by_type["mail.welcome"].causationid == root.id
    assert by_type["post.package"].causationid == by_type["mail.welcome"].id
    assert {e.correlationid for e in recorder.published} == {root.id}
    assert recorder.handled_by("done")[0].correlationid == root.id


async def test_sync_handlers_do_not_block_the_event_loop() -> None:
    book = eb.EventBook("shop")
    signup = book.topic("customer.signup", Customer)
    loop_ran = threading.Event()

    @eb.sub(signup)
    def slow(customer: Customer) -> None:
        # Only a live event loop can set this; a handler run on the loop would hang.
        assert loop_ran.wait(timeout=10), "the event loop was blocked by a sync handler"

    async def tick() -> None:
        await asyncio.sleep(0.01)
        loop_ran.set()

    async with book.start():
        ticker = asyncio.create_task(tick())
        await book.publish(signup, SELO)
        await ticker
    assert loop_ran.is_set()


async def test_publish_from_another_event_loop_reaches_the_books_loop() -> None:
    got: list[str] = []
    book = eb.EventBook("shop")
    signup = book.topic("customer.signup", Customer)

    @eb.sub(signup)
    async def on_signup(customer: Customer) -> None:
        got.append(customer.name)

    with book.start():  # the book runs on its own loop, in a background thread
        await book.publish(signup, SELO)  # from this test's loop
    assert got == ["SELO"]
