"""`@pub` and `@sub`: the seed's two decorators, typed and bound to a book's topics."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import ConfigurationError
from .retry import Backoff, RetryPolicy
from .service import PUBS_ATTR, SUBS_ATTR, Subscription, check_handler, is_method, owner_name
from .topic import Topic

F = TypeVar("F", bound=Callable[..., Any])


def pub(topic: Topic[Any]) -> Callable[[F], F]:
    """Publish the decorated function's return value to `topic`.

    Works on sync and async functions and methods alike; the publish is done the
    function's own way (awaited, or blocking until the broker accepted it). A
    return value of None publishes nothing.

    Args:
        topic: the topic to publish to, from `EventBook.topic`.
    """

    def decorate(fn: F) -> F:
        book = topic.book
        source = f"/{book.name}/{owner_name(fn)}"
        wrapper: Callable[..., Any]
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def publish_async(*args: Any, **kwargs: Any) -> Any:
                result = await fn(*args, **kwargs)
                if result is not None:
                    await book.publish(topic, result, source=source)
                return result

            wrapper = publish_async
        else:

            @functools.wraps(fn)
            def publish_sync(*args: Any, **kwargs: Any) -> Any:
                result = fn(*args, **kwargs)
                if result is not None:
                    book.emit(topic, result, source=source)
                return result

            wrapper = publish_sync
        setattr(wrapper, PUBS_ATTR, [*getattr(fn, PUBS_ATTR, ()), topic])
        return wrapper  # type: ignore[return-value]

    return decorate


def sub(
    topic: Topic[Any],
    *,
    retries: int = 3,
    backoff: Backoff | float | None = None,
    concurrency: int = 1,
) -> Callable[[F], F]:
    """Call the decorated function with every event of `topic`.

    On a method it only marks it, and `@book.service` binds it to the service's
    instance; on a plain function it registers at once, as a service named after
    the function. Stack several `@sub` to subscribe one function to several topics.

    Args:
        topic: the topic to subscribe to, from `EventBook.topic`.
        retries: how many more times a failing call is tried before the event is
            dead-lettered.
        backoff: the wait between tries: a `Backoff`, or its initial seconds.
        concurrency: how many of this handler's events one process handles at
            once; with 1 (the default), a topic's events are handled in order.

    Raises:
        HandlerSignatureError: the function's parameter type does not accept the
            topic's type, or it needs more than the payload.
    """
    if concurrency < 1:
        raise ConfigurationError(f"concurrency must be at least 1, got {concurrency}")
    subscription = Subscription(topic, RetryPolicy.of(retries, backoff), concurrency)

    def decorate(fn: F) -> F:
        method = is_method(fn)
        check_handler(fn, topic, method=method)
        subs: list[Subscription] = fn.__dict__.setdefault(SUBS_ATTR, [])
        subs.append(subscription)
        if not method:
            topic.book._add_function(fn, subscription)
        return fn

    return decorate
