"""How a book's topics, groups and dead letters are named on NATS: a stable public contract.

Other programs read and write these subjects and streams, so a change here is a
breaking change of the wire contract (see docs/brokers.md).

* The book `shop` is the stream `shop`, capturing the subjects `shop.>`. Stream and
  consumer names cannot contain '.', so a dot in a name becomes '_' there
  (book `acme.shop`: stream `acme_shop`, subjects `acme.shop.>`).
* Topic `customer.signup` is the subject `shop.customer.signup`.
* Handler (consumer group) `MailService.send` on that topic is the durable pull
  consumer `MailService_send@customer_signup`: a handler can subscribe to several
  topics, and each (handler, topic) pair keeps its own position and retry state.
* Dead letters are kept in the stream `shop_dead`, one message per dead letter on
  the subject `_eventbook.dead.shop.<consumer>` (the book's name flattened as in the
  stream's name).
* Books whose names nest at a dot (`acme` and `acme.shop`) cannot share a server:
  their subjects overlap, and the server refuses the second stream.
* The process-local reply topic `_reply.<id>` gets the consumer `_reply_<id>`,
  deleted when the process stops (or by the server, after a crash).
"""

from __future__ import annotations

from ...errors import ConfigurationError

#: Longest stream or consumer name we create: they are file names on the server too.
MAX_NAME = 200

#: Headers eventbook sets on the messages it writes.
MSG_ID = "Nats-Msg-Id"
REPLAY_FOR = "Eventbook-Replay-For"
TOPIC = "Eventbook-Topic"
HANDLER = "Eventbook-Handler"
REASON = "Eventbook-Reason"
ERROR = "Eventbook-Error"
ATTEMPTS = "Eventbook-Attempts"
EVENT_ID = "Eventbook-Event-Id"
FAILED_AT = "Eventbook-Failed-At"


def _flat(name: str) -> str:
    return name.replace(".", "_")


def _checked(kind: str, name: str, why: str) -> str:
    if len(name) > MAX_NAME:
        raise ConfigurationError(
            f"the NATS {kind} name for {why} would be {len(name)} characters, over {MAX_NAME}: "
            "use shorter names"
        )
    return name


def stream(book: str) -> str:
    """The stream that holds the book's events."""
    return _checked("stream", _flat(book), f"book {book!r}")


def dead_stream(book: str) -> str:
    """The stream that holds the book's dead letters."""
    return _checked("stream", f"{_flat(book)}_dead", f"the dead letters of book {book!r}")


def subject(book: str, topic: str) -> str:
    """The subject a topic's events are published on."""
    return f"{book}.{topic}"


def dead_subjects(book: str) -> str:
    """The subjects (a wildcard) of the book's dead letters."""
    return f"_eventbook.dead.{_flat(book)}.>"


def dead_subject(book: str, consumer: str) -> str:
    return f"_eventbook.dead.{_flat(book)}.{consumer}"


def is_reply(topic: str) -> bool:
    """True for a process's own reply topic, which nobody else reads."""
    return topic.startswith("_reply.")


def consumer(group: str, topic: str) -> str:
    """The durable consumer of handler `group` on `topic`."""
    if is_reply(topic):
        return _checked("consumer", _flat(topic), f"reply topic {topic!r}")
    return _checked(
        "consumer", f"{_flat(group)}@{_flat(topic)}", f"handler {group!r} on topic {topic!r}"
    )


def describe(group: str, topic: str) -> str:
    """The consumer's description: its group and topic as named in the book."""
    return f"eventbook handler {group} on topic {topic}"
