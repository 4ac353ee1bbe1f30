"""The contract on `amqp://` (RabbitMQ quorum queues, the machine's shared server), and
what only this broker has: its URL, its channel mapping, its dead-letter queue."""

import socket
from collections.abc import AsyncIterator

import pytest

import eventbook as eb
from eventbook.brokers.rabbitmq import RabbitBroker
from eventbook.envelope import Envelope
from eventbook.errors import BrokerError, ConfigurationError
from eventbook.retry import Backoff
from eventbook.service import Handler
from eventbook.testing import eventually
from eventbook.testing.contract import (
    DEADLINE,
    WireBrokerContract,
    dead_letter_count,
    unique_book,
)
from tests._rabbitmq import URL, Created, channel, local_server

pytestmark = pytest.mark.rabbitmq


class TestRabbitBroker(WireBrokerContract):
    @pytest.fixture
    async def broker_url(self, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
        url = local_server()
        created = Created().watch(monkeypatch)
        yield url
        await created.delete(url)

    # A killed consumer's connection closes with it, and RabbitMQ gives its unacked
    # events back at once: the default URL redelivers fast already.


# -- what is specific to amqp:// ------------------------------------------------------


class Note(eb.Event):
    text: str


@pytest.fixture
async def created(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Created]:
    local_server()
    created = Created().watch(monkeypatch)
    yield created
    await created.delete()


async def test_an_unreachable_server_is_a_prompt_clear_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    broker = RabbitBroker(f"amqp://app:s3cret@127.0.0.1:{port}/?connect_timeout=2", "nowhere")
    with pytest.raises(BrokerError) as caught:
        await broker.connect()
    message = str(caught.value)
    assert f"amqp://app:***@127.0.0.1:{port}/" in message
    assert "s3cret" not in message


def test_an_unknown_url_parameter_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="prefetchh"):
        RabbitBroker("amqp://guest:guest@127.0.0.1/?prefetchh=5", "book")


async def test_a_handler_of_two_topics_has_one_queue_and_gets_each_event_once(
    created: Created,
) -> None:
    book = unique_book("rabbit")
    signup, update = book.topic("customer.signup", Note), book.topic("customer.update", Note)
    seen: list[tuple[str, str]] = []

    @book.service
    class MailService:
        @eb.sub(signup)
        @eb.sub(update)
        async def send(self, note: Note) -> None:
            envelope = eb.current_event()
            assert envelope is not None
            seen.append((envelope.type, note.text))

    async with book.start(URL):
        for n in range(5):
            await book.publish(signup, Note(text=f"s{n}"))
            await book.publish(update, Note(text=f"u{n}"))
        await eventually(lambda: len(seen) == 10, DEADLINE)
        assert await book.dead_letters() == []
    assert sorted(seen) == sorted(
        [("customer.signup", f"s{n}") for n in range(5)]
        + [("customer.update", f"u{n}") for n in range(5)]
    )
    assert created.queues == {f"{book.name}.MailService.send"}


async def test_a_publish_whose_queue_was_deleted_is_an_error_naming_the_topic(
    created: Created,
) -> None:
    book = unique_book("rabbit")
    notes = book.topic("notes", Note)

    @eb.sub(notes)
    async def keep(note: Note) -> None: ...

    async with book.start(URL):
        async with channel() as ch:
            await ch.queue_delete(f"{book.name}.keep")
        with pytest.raises(BrokerError, match="'notes'"):
            await book.publish(notes, Note(text="lost?"))


async def test_an_event_no_queue_would_keep_is_an_error_not_a_silent_drop(
    created: Created,
) -> None:
    book = unique_book("rabbit")
    notes = book.topic("notes", Note)
    orphans = book.topic("orphans", Note)

    @eb.sub(notes)
    async def keep(note: Note) -> None: ...

    async with book.start(URL):
        with pytest.raises(BrokerError, match=r"'orphans'.*no queue is bound"):
            await book.publish(orphans, Note(text="to no one"))
        await book.publish(notes, Note(text="kept"))  # the connection is still usable


async def test_dead_letters_are_listed_kept_and_replayed_from_a_fresh_connection(
    created: Created,
) -> None:
    book = unique_book("rabbit")
    notes = book.topic("notes", Note)
    healthy = False
    handled: list[tuple[str, str, int]] = []

    class Tries(eb.Observer):
        def handled(self, handler: Handler, envelope: Envelope, attempt: int) -> None:
            handled.append((handler.name, envelope.data.text, attempt))

    book.observe(Tries())

    @eb.sub(notes, retries=0)
    async def fragile(note: Note) -> None:
        if not healthy:
            raise ValueError("not today")

    @eb.sub(notes)
    async def steady(note: Note) -> None: ...

    async with book.start(URL):
        await book.publish(notes, Note(text="hello"))
        await eventually(lambda: dead_letter_count(book, 1), DEADLINE)

    # Like `eventbook dlq`: a broker of its own, consuming nothing.
    tooling = RabbitBroker(URL, book.name)
    await tooling.connect()
    try:
        first = await tooling.dead_letters()
        again = await tooling.dead_letters()  # listing takes nothing away
        assert first == again
        [letter] = first
        assert (letter.handler, letter.topic, letter.reason, letter.attempts) == (
            "fragile",
            "notes",
            "failed",
            1,
        )
        assert "ValueError: not today" in letter.error
        healthy = True
        async with book.start(URL):
            assert await tooling.replay([letter.id]) == 1
            await eventually(lambda: ("fragile", "hello", 1) in handled, DEADLINE)
        assert await tooling.dead_letters() == []
    finally:
        await tooling.close()
    # Replayed to its own group only, as a first attempt: `steady` had it once.
    assert sorted(handled) == [("fragile", "hello", 1), ("steady", "hello", 1)]


async def test_an_event_given_out_past_the_delivery_limit_is_dead_lettered_by_the_queue(
    created: Created,
) -> None:
    book = unique_book("rabbit")
    notes = book.topic("notes", Note)

    @eb.sub(notes, retries=5, backoff=Backoff(initial=0.01, jitter=0.0))
    async def hopeless(note: Note) -> None:
        raise RuntimeError("never")

    async with book.start(f"{URL}?delivery_limit=1"):
        await book.publish(notes, Note(text="loop"))
        await eventually(lambda: dead_letter_count(book, 1), DEADLINE)
        [letter] = await book.dead_letters()
    assert (letter.handler, letter.topic, letter.reason) == ("hopeless", "notes", "delivery-limit")
    assert '"loop"' in letter.body
