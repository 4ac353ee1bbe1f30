"""Services and their handlers: what `@sub` records and what a running book calls."""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError, HandlerSignatureError
from .retry import RetryPolicy
from .topic import Topic

SUBS_ATTR = "__eventbook_subs__"
PUBS_ATTR = "__eventbook_pubs__"

AsyncCall = Callable[[Any], Awaitable[Any]]
SyncCall = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Subscription:
    """What one `@sub(topic, ...)` recorded on a function."""

    topic: Topic[Any]
    policy: RetryPolicy
    concurrency: int = 1


@dataclass(slots=True)
class Handler:
    """One subscription of one service, bound and ready to call.

    Every handler is its own consumer group on the broker: it receives each event
    of its topic once (replicas of its service share them) and keeps its own
    retry state, so a failing handler never holds back another one.
    """

    service: str
    name: str
    topic: Topic[Any]
    call: AsyncCall
    policy: RetryPolicy
    #: The handler itself when it is a plain `def`, callable off the event loop.
    sync_call: SyncCall | None = None
    concurrency: int = 1


def is_method(fn: Callable[..., Any]) -> bool:
    """Tell a function defined in a class body from a plain (module or local) function."""
    parent, _, _ = fn.__qualname__.rpartition(".")
    return bool(parent) and not parent.endswith("<locals>")


def owner_name(fn: Callable[..., Any]) -> str:
    """Return the class a method is defined in, or the function's own name."""
    parts = fn.__qualname__.split(".")
    return parts[-2] if is_method(fn) else parts[-1]


def check_handler(fn: Callable[..., Any], topic: Topic[Any], *, method: bool) -> bool:
    """Check that `fn` can handle `topic`'s events; return whether it takes the payload.

    Raises:
        HandlerSignatureError: it needs more than one argument, or its annotated
            parameter type does not accept the topic's type. An annotation that does
            not resolve (a forward reference, a TYPE_CHECKING import) is let be.
    """
    where = f"handler {fn.__qualname__!r} for topic {topic.name!r}"
    params = list(inspect.signature(fn).parameters.values())
    if method:
        params = params[1:]
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    required = [
        p
        for p in params
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if len(required) > 1:
        raise HandlerSignatureError(
            f"{where} must take one argument, the payload; it requires {len(required)}"
        )
    if not positional:
        return False
    try:
        hints = typing.get_type_hints(fn)
    except NameError:
        return True
    annotation = hints.get(positional[0].name, Any)
    if not _accepts(annotation, topic.type):
        raise HandlerSignatureError(
            f"{where} takes {_name(annotation)}, but the topic carries {_name(topic.type)}"
        )
    return True


def _accepts(annotation: Any, payload_type: Any) -> bool:
    if annotation in (Any, object) or annotation == payload_type:
        return True
    if isinstance(annotation, type) and isinstance(payload_type, type):
        return issubclass(payload_type, annotation)
    # Unions, generics and the like: accept when the payload type is one of the members.
    return payload_type in typing.get_args(annotation)


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


def callables(fn: Callable[..., Any], takes_payload: bool) -> tuple[AsyncCall, SyncCall | None]:
    """Return how to call `fn` with a payload: from the event loop, and directly if it is sync.

    From the loop, a sync handler runs in a worker thread, so it never blocks the
    event loop; the thread sees the same context (the event being handled). A
    caller already off the loop (a sync publisher) may call it directly.
    """
    if inspect.iscoroutinefunction(fn):
        if takes_payload:
            return fn, None

        async def call_async_without_payload(payload: Any) -> Any:
            return await fn()

        return call_async_without_payload, None

    sync_call: SyncCall = fn if takes_payload else (lambda payload: fn())

    async def call_in_thread(payload: Any) -> Any:
        return await asyncio.to_thread(sync_call, payload)

    return call_in_thread, sync_call


class Service:
    """A named set of handlers and publishers: a class, an instance or one function."""

    def __init__(self, name: str, target: Any) -> None:
        self.name = name
        self._target = target
        self._instance: Any = None
        self._members: dict[str, list[Subscription]] = {}
        self._function: Callable[..., Any] | None = None
        if inspect.isclass(target):
            self._collect(target)
        elif inspect.isfunction(target):
            self._function = target
            self._members[target.__name__] = []
        else:
            self._instance = target
            self._collect(type(target))

    def _collect(self, cls: type) -> None:
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                subs = getattr(value, SUBS_ATTR, None)
                if subs and callable(value):
                    for sub in subs:
                        check_handler(value, sub.topic, method=True)
                    self._members[attr] = list(subs)

    def add(self, attr: str, subscription: Subscription) -> None:
        """Record one more subscription of a function service."""
        self._members.setdefault(attr, []).append(subscription)

    @property
    def cls(self) -> type | None:
        """The service's class; None for a one-function service."""
        if self._function is not None:
            return None
        return self._target if inspect.isclass(self._target) else type(self._target)

    def handler_name(self, attr: str) -> str:
        """The name of a handler, which is also its consumer group on the broker."""
        return attr if self._function else f"{self.name}.{attr}"

    @property
    def groups(self) -> list[tuple[str, str]]:
        """(consumer group, topic name) of every handler, known without building the service."""
        return [(self.handler_name(attr), sub.topic.name) for attr, sub in self.subscriptions]

    @property
    def subscriptions(self) -> list[tuple[str, Subscription]]:
        """(handler name, subscription) pairs, in declaration order."""
        return [(attr, sub) for attr, subs in self._members.items() for sub in subs]

    @property
    def topics_published(self) -> list[Topic[Any]]:
        """Topics that this service's `@pub` methods publish to (for graphs and docs)."""
        owner = self._function or (
            self._target if inspect.isclass(self._target) else type(self._target)
        )
        members = [owner] if self._function else [getattr(owner, n) for n in dir(owner)]
        topics: list[Topic[Any]] = []
        for member in members:
            for topic in getattr(member, PUBS_ATTR, ()):
                if topic not in topics:
                    topics.append(topic)
        return topics

    @property
    def instance(self) -> Any:
        """The object whose methods handle events, built on first use with no arguments."""
        if self._instance is None and self._function is None:
            try:
                self._instance = self._target()
            except TypeError as exc:
                raise ConfigurationError(
                    f"service {self.name!r} cannot be built with no arguments ({exc}); "
                    f"register an instance instead: book.service({self.name}(...))"
                ) from None
        return self._instance

    def handlers(self) -> list[Handler]:
        """Bind every subscription to this service's instance (or function)."""
        bound: list[Handler] = []
        for attr, sub in self.subscriptions:
            fn = self._function or getattr(self.instance, attr)
            takes_payload = check_handler(fn, sub.topic, method=False)
            call, sync_call = callables(fn, takes_payload)
            bound.append(
                Handler(
                    self.name,
                    self.handler_name(attr),
                    sub.topic,
                    call,
                    sub.policy,
                    sync_call,
                    sub.concurrency,
                )
            )
        return bound
