"""eventbook: typed events between Python services, choreographed or orchestrated.

import eventbook as eb

book = eb.EventBook("shop")
SIGNUP = book.topic("customer.signup", Customer)

@book.service
class MailService:
    @eb.sub(SIGNUP)
    async def send(self, customer: Customer) -> None: ...
"""

from .book import EventBook
from .brokers.base import DeadLetter
from .context import current_event
from .decorators import pub, sub
from .envelope import Envelope
from .errors import (
    BrokerError,
    ConfigurationError,
    DecodeError,
    EventbookError,
    HandlerSignatureError,
    NotRunningError,
    PayloadError,
    PayloadTooLargeError,
    RequestFailedError,
    RequestTimeoutError,
    UnknownBrokerError,
)
from .event import Event
from .observe import Observer
from .retry import Backoff
from .saga import Saga, SagaDeterminismError, StepFailedError
from .topic import Topic

__all__ = [
    "Backoff",
    "BrokerError",
    "ConfigurationError",
    "DeadLetter",
    "DecodeError",
    "Envelope",
    "Event",
    "EventBook",
    "EventbookError",
    "HandlerSignatureError",
    "NotRunningError",
    "Observer",
    "PayloadError",
    "PayloadTooLargeError",
    "RequestFailedError",
    "RequestTimeoutError",
    "Saga",
    "SagaDeterminismError",
    "StepFailedError",
    "Topic",
    "UnknownBrokerError",
    "current_event",
    "pub",
    "sub",
]

__version__ = "0.1.0"
