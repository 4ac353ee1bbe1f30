"""Retries, dead letters, bad input and request/reply, on the in-process broker."""

import json

import pytest

import eventbook as eb
from eventbook.delivery import FAILED, INVALID, Dispatcher
from eventbook.envelope import Envelope, encode
from eventbook.retry import Backoff, RetryPolicy
from eventbook.testing import Recorder
from tests.conftest import SELO, Customer

FAST = Backoff(initial=0.001, factor=2.0, jitter=0.0)


def test_backoff_grows_exponentially_up_to_its_maximum() -> None:
    backoff = Backoff(initial=0.5, factor=2.0, maximum=3.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    jittered = Backoff(initial=1.0, jitter=0.1)
    assert all(0.9 <= jittered.delay(1) <= 1.1 for _ in range(200))
    assert RetryPolicy.of(2, 0.25) == RetryPolicy(2, Backoff(initial=0.25))
    with pytest.raises(ValueError, match="factor"):
        Backoff(factor=0.5)


def test_failing_handler_is_retried_with_backoff_then_dead_lettered_while_others_run() -> None:
    recorder = Recorder()
    book = eb.EventBook("shop")
    signup = book.topic("customer.signup", Customer)
    book.observe(recorder)
    tries: list[int] = []
    good: list[str] = []

    @eb.sub(signup, retries=3, backoff=Backoff(initial=0.002, factor=3.0, jitter=0.0))
    def flaky(customer: Customer) -> None:
        tries.append(len(tries) + 1)
        raise RuntimeError("bank is down")

    @eb.sub(signup)
    async def mail(customer: Customer) -> None:
        good.append(customer.name)

    @eb.sub(signup)
    def post(customer: Customer) -> None:
        good.append(customer.address)

    with book.start():
        envelope = book.emit(signup, SELO)  # the failure never reaches the publisher
        assert good == ["SELO", "Seoul, Korea"]
    # Leaving start() waited for the retries to end.
    assert tries == [1, 2, 3, 4]
    assert [(a, r) for _, a, _, r in recorder.failures] == [
        (1, pytest.approx(0.002)),
        (2, pytest.approx(0.006)),
        (3, pytest.approx(0.018)),
        (4, None),
    ]
    letters = _dead_letters(book)
    assert len(letters) == 1
    letter = letters[0]
    assert (letter.topic, letter.handler, letter.reason, letter.attempts) == (
        "customer.signup",
        "flaky",
        FAILED,
        4,
    )
    assert letter.event_id == envelope.id
    assert "RuntimeError: bank is down" in letter.error
    assert "raise RuntimeError" in letter.error  # the user's line, not eventbook's
    assert json.loads(letter.body)["data"] == SELO.model_dump()
    assert good == ["SELO", "Seoul, Korea"]  # the others ran once each


def test_each_handler_keeps_its_own_retry_state() -> None:
    book = eb.EventBook("shop")
    signup = book.topic("customer.signup", Customer)
    a_tries: list[int] = []
    b_tries: list[int] = []

    @eb.sub(signup, retries=1, backoff=FAST)
    def a(customer: Customer) -> None:
        a_tries.append(1)
        raise ValueError("a")

    @eb.sub(signup, retries=4, backoff=FAST)
    def b(customer: Customer) -> None:
        b_tries.append(1)
        if len(b_tries) < 3:
            raise ValueError("b")

    with book.start():
        book.emit(signup, SELO)
    assert (len(a_tries), len(b_tries)) == (2, 3)
    assert [letter.handler for letter in _dead_letters(book)] == ["a"]


def test_bad_payload_is_dead_lettered_with_its_reason_and_the_next_event_is_handled() -> None:
    recorder = Recorder()
    book = eb.EventBook("shop")
    signup = book.topic("customer.signup", Customer)
    book.observe(recorder)
    got: list[str] = []

    @eb.sub(signup)
    def on_signup(customer: Customer) -> None:
        got.append(customer.name)

    async def publish_raw(data: object) -> None:
        # A producer that skipped validation: the consumer must still cope.
        runtime = book._running()
        await runtime.broker.publish(Envelope("customer.signup", data, "/rogue"), None)

    import asyncio

    async def scenario() -> None:
        async with book.start():
            await publish_raw({"name": "X"})
            await book.publish(signup, SELO)

    asyncio.run(scenario())
    assert got == ["SELO"]
    [letter] = _dead_letters(book)
    assert letter.reason == INVALID
    assert "field 'address'" in letter.error
    assert recorder.rejections[0][1] == INVALID


async def test_dispatcher_dead_letters_bytes_it_cannot_use() -> None:
    book = eb.EventBook("shop", max_payload=600)
    signup = book.topic("customer.signup", Customer)
    got: list[Customer] = []

    @eb.sub(signup)
    async def on_signup(customer: Customer) -> None:
        got.append(customer)

    async with book.start():
        runtime = book._running()
        dispatcher = Dispatcher(runtime.handlers[0], runtime)
        good = Envelope("customer.signup", SELO, "/s")
        cases = {
            "undecodable": b"{not json",
            "unknown-type": encode(Envelope("order.placed", {}, "/s"), b"{}"),
            "invalid": encode(Envelope("customer.signup", {}, "/s"), b'{"name": 1}'),
            "oversize": b"x" * 601,
        }
        for reason, body in cases.items():
            verdict = await dispatcher.handle(None, body, attempt=1)
            assert verdict is not None
            assert verdict.reason == reason, verdict
            assert verdict.retry_in is None
        assert (
            await dispatcher.handle(None, encode(good, SELO.model_dump_json().encode()), 1) is None
        )
    assert got == [SELO]


async def test_dead_letters_can_be_replayed_and_purged() -> None:
    book = eb.EventBook("shop")
    signup = book.topic("customer.signup", Customer)
    healthy = False
    handled: list[str] = []

    @eb.sub(signup, retries=0)
    def fragile(customer: Customer) -> None:
        if not healthy:
            raise RuntimeError("not yet")
        handled.append(customer.name)

    async with book.start():
        await book.publish(signup, SELO)
        await book.publish(signup, SELO)
        letters = await book.dead_letters()
        assert len(letters) == 2
        healthy = True
        assert await book.replay([letters[0].id]) == 1
    assert handled == ["SELO"]
    assert len(await book.dead_letters()) == 1
    assert await book.purge() == 1
    assert await book.dead_letters() == []


async def test_request_returns_the_handlers_typed_answer() -> None:
    class Account(eb.Event):
        number: str

    book = eb.EventBook("bank")
    open_account = book.topic("bank.open_account", Customer, reply=Account)
    plain = book.topic("bank.plain", Customer)

    @eb.sub(open_account)
    def create(customer: Customer) -> Account:
        return Account(number=f"ACC-{customer.name}")

    @eb.sub(plain)
    async def echo(customer: Customer) -> dict[str, str]:
        return {"name": customer.name}

    async with book.start():
        assert await book.request(open_account, SELO) == Account(number="ACC-SELO")
        assert await book.request(plain, SELO) == {"name": "SELO"}


async def test_request_times_out_cleanly_when_nobody_answers() -> None:
    book = eb.EventBook("bank")
    nobody = book.topic("bank.nobody", Customer)
    async with book.start():
        with pytest.raises(eb.RequestTimeoutError, match=r"bank.nobody.*within 0.05s"):
            await book.request(nobody, SELO, timeout=0.05)
        assert book._running()._waiting == {}  # nothing left behind


async def test_request_fails_fast_when_the_handler_is_dead_lettered() -> None:
    book = eb.EventBook("bank")
    broken = book.topic("bank.broken", Customer)

    @eb.sub(broken, retries=1, backoff=FAST)
    def explode(customer: Customer) -> None:
        raise ValueError("no such branch")

    async with book.start():
        with pytest.raises(eb.RequestFailedError, match="ValueError: no such branch"):
            await book.request(broken, SELO, timeout=30)


def _dead_letters(book: eb.EventBook) -> list[eb.DeadLetter]:
    import asyncio

    return asyncio.run(book.dead_letters())


def test_sync_publisher_with_only_sync_handlers_retries_and_dead_letters_too() -> None:
    book = eb.EventBook("shop")
    signup = book.topic("customer.signup", Customer)
    tries: list[str] = []
    others: list[str] = []

    @eb.sub(signup, retries=2, backoff=FAST)
    def flaky(customer: Customer) -> None:
        tries.append(customer.name)
        raise RuntimeError("down")

    @eb.sub(signup)
    def steady(customer: Customer) -> None:
        others.append(customer.name)

    with book.start():
        book.emit(signup, SELO)  # delivered in this thread: every handler is sync
        assert others == ["SELO"]
    assert tries == ["SELO"] * 3
    [letter] = _dead_letters(book)
    assert (letter.handler, letter.attempts) == ("flaky", 3)
