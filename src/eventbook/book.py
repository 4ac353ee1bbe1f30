"""`EventBook`: the registry of a system's topics and services, and its lifecycle."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

from . import brokers, ids
from .brokers.base import Broker, DeadLetter
from .clock import Clock
from .context import _current
from .envelope import Envelope
from .errors import ConfigurationError, NotRunningError
from .lifecycle import Running
from .observe import Observer
from .runtime import DEFAULT_MAX_PAYLOAD, Runtime, SagaSettings
from .saga import SagaDefinition, define
from .service import Service, Subscription
from .store import SagaStore
from .topic import Topic, check_name

T = TypeVar("T")
S = TypeVar("S")
F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("eventbook")

#: The library's default broker; the CLI defaults to a SQLite file instead.
DEFAULT_BROKER = "memory://"


class EventBook:
    """A named system of services that talk through typed topics.

    Args:
        name: the book's name; broker channels are named under it.
        max_payload: the largest encoded event accepted, in bytes.
    """

    def __init__(self, name: str, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.name = check_name("book", name)
        self.source = f"/{name}"
        self.max_payload = max_payload
        self.topics: dict[str, Topic[Any]] = {}
        self.services: dict[str, Service] = {}
        self._functions: dict[Callable[..., Any], Service] = {}
        self._observers: list[Observer] = []
        self._runtime: Runtime | None = None
        self.sagas: list[SagaDefinition] = []
        self._last_broker: Broker | None = None

    def __repr__(self) -> str:
        return f"EventBook({self.name!r})"

    # -- declaring -------------------------------------------------------------------

    def topic(self, name: str, type: type[T], *, reply: Any = None) -> Topic[T]:
        """Declare a topic whose events carry payloads of `type`.

        Args:
            name: dot-separated words, like 'customer.signup'; also the CloudEvents type.
            type: an `Event` subclass, or any type pydantic validates.
            reply: for topics used with `request`, the type the answer is read as.

        Raises:
            ConfigurationError: the name is invalid, or already declared with another type.
        """
        if name.startswith("_"):
            raise ConfigurationError(f"topic names starting with '_' are eventbook's: {name!r}")
        check_name("topic", name)
        existing = self.topics.get(name)
        if existing is not None:
            if existing.type is not type or existing.reply is not reply:
                raise ConfigurationError(f"topic {name!r} is already declared with another type")
            return existing
        topic: Topic[T] = Topic(self, name, type, reply)
        self.topics[name] = topic
        return topic

    @overload
    def service(self, target: S, *, name: str | None = None) -> S: ...
    @overload
    def service(self, target: None = None, *, name: str | None = None) -> Callable[[S], S]: ...

    def service(self, target: Any = None, *, name: str | None = None) -> Any:
        """Register a service: a class (built with no arguments at start) or an instance.

        Its methods marked `@sub` are bound to that one instance, so each runs with
        its own service as `self`. Usable as `@book.service`, `@book.service(name=...)`
        or `book.service(MailService(smtp=...))`.

        Raises:
            ConfigurationError: another service already has this name.
        """
        if target is None:
            return lambda t: self.service(t, name=name)
        cls = target if inspect.isclass(target) else type(target)
        service = Service(check_name("service", name or cls.__name__), target)
        self._add_service(service)
        return target

    def _add_function(self, fn: Callable[..., Any], subscription: Subscription) -> None:
        """Called by `@sub` on a plain function: a one-function service named after it."""
        service = self._functions.get(fn)
        if service is None:
            service = Service(fn.__name__, fn)
            self._add_service(service)
            self._functions[fn] = service
        service.add(fn.__name__, subscription)

    def _add_service(self, service: Service) -> None:
        if service.name in self.services:
            raise ConfigurationError(
                f"book {self.name!r} already has a service named {service.name!r}; "
                "pass name=... to register another"
            )
        self.services[service.name] = service

    def observe(self, observer: Observer) -> Observer:
        """Add an observer that sees every event published and handled by this process."""
        self._observers.append(observer)
        return observer

    # -- running ---------------------------------------------------------------------

    def saga(
        self,
        name: str,
        *,
        start_on: Topic[Any] | None = None,
        version: int = 1,
        deadline: float | None = None,
        expects: Sequence[Topic[Any]] = (),
    ) -> Callable[[F], F]:
        """Register a saga: `async def f(saga: eb.Saga, payload)`, journaled step by step.

        Args:
            name: the saga's name (its instances' ids start with it).
            start_on: each event of this topic starts one instance (once per event id).
            version: running instances finish on the version they started with; keep
                an old version registered until its instances are done.
            deadline: seconds an instance may take before it is compensated.
            expects: topics the saga waits on with `saga.expect`.

        Raises:
            ConfigurationError: the function's shape is wrong, or (name, version) is taken.
        """
        check_name("saga", name)

        def register(function: F) -> F:
            definition = define(name, function, start_on, version, deadline, tuple(expects))
            if any((d.name, d.version) == (name, version) for d in self.sagas):
                raise ConfigurationError(f"saga {name!r} version {version} is already registered")
            self.sagas.append(definition)
            return function

        return register

    async def start_saga(self, name: str, payload: Any) -> str:
        """Start an instance of saga `name` (its newest version); return its id.

        Raises:
            ConfigurationError: no saga has that name.
            NotRunningError: the book is not running.
        """
        runtime = self._running()
        versions = [d for d in self.sagas if d.name == name]
        if not versions or runtime.coordinator is None:
            raise ConfigurationError(f"book {self.name!r} has no saga {name!r}")
        definition = max(versions, key=lambda d: d.version)
        saga_id = f"{name}:{ids.new_id()}"
        await runtime.coordinator.create(definition, definition.load(payload), saga_id)
        return saga_id

    @property
    def journal(self) -> SagaStore:
        """The saga journal of the running book (`get`, `list`, ...).

        Raises:
            NotRunningError: the book is not running, or has no sagas.
        """
        runtime = self._running()
        if runtime.coordinator is None:
            raise NotRunningError(f"book {self.name!r} has no sagas")
        return runtime.coordinator.store

    def start(
        self,
        broker: str | None = None,
        *,
        services: Sequence[str] | None = None,
        drain_timeout: float = 30.0,
        store: str | None = None,
        clock: Clock | None = None,
    ) -> Running:
        """Connect and start consuming; use as `async with` or, from sync code, `with`.

        On exit, stops taking new events and waits (up to `drain_timeout` seconds)
        for those in flight; on `memory://`, until every published event was handled.

        Args:
            broker: the broker URL; default `$EVENTBOOK_BROKER`, else `memory://`.
            services: names of the services (and sagas) to run here; default all.
            drain_timeout: the longest wait for in-flight work on exit.
            store: the saga journal's URL; default the broker's own file for
                `sqlite://`, in-process for `memory://`.
            clock: the sagas' clock (tests pass `eventbook.testing.VirtualClock`).
        """
        url = broker or os.environ.get("EVENTBOOK_BROKER") or DEFAULT_BROKER
        return Running(self, url, services, drain_timeout, store, clock)

    def run(
        self,
        broker: str | None = None,
        *,
        services: Sequence[str] | None = None,
        drain_timeout: float = 30.0,
        store: str | None = None,
    ) -> None:
        """Run until SIGINT or SIGTERM, then drain in-flight work and return."""
        asyncio.run(self._serve(broker, services, drain_timeout, store))

    async def _serve(
        self,
        broker: str | None,
        services: Sequence[str] | None,
        drain_timeout: float,
        store: str | None,
    ) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            async with self.start(
                broker, services=services, drain_timeout=drain_timeout, store=store
            ):
                await stop.wait()
                log.info("%s: stopping; draining in-flight events", self.name)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _selected_names(self, names: Sequence[str] | None) -> list[str]:
        sagas = [f"saga {d.name}" for d in self.sagas if names is None or d.name in names]
        return [service.name for service in self._select(names)] + sorted(set(sagas))

    def _select(self, names: Sequence[str] | None) -> list[Service]:
        if names is None:
            return list(self.services.values())
        sagas = {d.name for d in self.sagas}
        unknown = [n for n in names if n not in self.services and n not in sagas]
        if unknown:
            known = ", ".join([*self.services, *sorted(sagas)]) or "none"
            raise ConfigurationError(
                f"book {self.name!r} has no service {', '.join(map(repr, unknown))} "
                f"(it has: {known})"
            )
        return [self.services[n] for n in names if n in self.services]

    def _running(self) -> Runtime:
        runtime = self._runtime
        if runtime is None:
            raise NotRunningError(
                f"book {self.name!r} is not running: publish inside "
                f"`with {self.name}.start():`, `async with ...start():` or `.run()`"
            )
        return runtime

    # -- publishing ------------------------------------------------------------------

    async def publish(
        self, topic: Topic[T], payload: T | Any, *, source: str | None = None
    ) -> Envelope:
        """Publish `payload` on `topic`; return its envelope once the broker accepted it.

        Raises:
            PayloadError: the payload does not match the topic's type.
            NotRunningError: the book is not started.
        """
        runtime = self._runtime or self._running()
        parent = _current.get()
        if asyncio.get_running_loop() is runtime.loop:
            # The hot path, inlined: Runtime.publish does the same.
            envelope, body = runtime.wrap(topic, payload, source, parent)
            if runtime.observers:
                runtime.notify_publishing(envelope)
            await runtime.broker.publish(envelope, body)
            return envelope
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(
                runtime.publish(topic, payload, source, parent), runtime.loop
            )
        )

    def emit(self, topic: Topic[T], payload: T | Any, *, source: str | None = None) -> Envelope:
        """Publish from sync code: block until the broker accepted the event; return its envelope.

        Raises:
            PayloadError: the payload does not match the topic's type.
            NotRunningError: the book is not started, or this is its event loop's
                thread (where blocking would stall it: use `await book.publish`).
        """
        runtime = self._running()
        self._check_not_on_loop(runtime, "emit()", "await book.publish(...)")
        envelope, body = runtime.wrap(topic, payload, source, _current.get())
        if runtime.observers:
            runtime.notify_publishing(envelope)
        if runtime.publish_here is not None and runtime.publish_here(envelope):
            return envelope
        asyncio.run_coroutine_threadsafe(
            runtime.broker.publish(envelope, body), runtime.loop
        ).result()
        return envelope

    async def request(
        self,
        topic: Topic[Any],
        payload: Any,
        *,
        timeout: float = 10.0,
        source: str | None = None,
    ) -> Any:
        """Publish `payload` and return the first subscribed handler's return value.

        The answer is validated as the topic's `reply` type if it has one, else
        returned as plain JSON data.

        Raises:
            RequestTimeoutError: no answer within `timeout` seconds.
            RequestFailedError: the handler failed on every try.
        """
        runtime = self._running()
        parent = _current.get()
        call = runtime.request(topic, payload, timeout, source, parent)
        if asyncio.get_running_loop() is runtime.loop:
            return await call
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call, runtime.loop))

    @staticmethod
    def _check_not_on_loop(runtime: Runtime, what: str, instead: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if loop is runtime.loop:
            raise NotRunningError(
                f"{what} blocks, and this is the book's event loop: use {instead} in async code"
            )

    # -- dead letters ----------------------------------------------------------------

    def _broker(self) -> Broker:
        if self._runtime is not None:
            return self._runtime.broker
        if self._last_broker is not None and not self._last_broker.encodes:
            return self._last_broker  # an in-process broker's state outlives its run
        raise NotRunningError(
            f"book {self.name!r} is not running: start it, or use `eventbook dlq` on its broker"
        )

    async def dead_letters(self) -> list[DeadLetter]:
        """Return the dead letters of the running (or last run's) broker, oldest first."""
        return await self._broker().dead_letters()

    async def replay(self, ids: Sequence[str] | None = None) -> int:
        """Send dead letters (all, or these ids) back to their handler; return how many."""
        return await self._running().broker.replay(ids)

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        """Delete dead letters (all, or these ids); return how many."""
        return await self._broker().purge(ids)

    # -- used by Running -------------------------------------------------------------

    async def _open(
        self,
        url: str,
        names: Sequence[str] | None,
        store: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        if self._runtime is not None:
            raise ConfigurationError(f"book {self.name!r} is already running")
        selected = self._select(names)
        broker = brokers.from_url(url, self.name)
        coordinate = names is None or any(d.name in names for d in self.sagas)
        runtime = Runtime(self, broker, selected, self.max_payload)
        runtime.sagas = SagaSettings(store, clock or Clock(), coordinate)
        self._runtime = runtime
        try:
            await runtime.open()
        except BaseException:
            self._runtime = None
            await broker.close()
            raise
        self._last_broker = broker

    async def _close(self, drain_timeout: float) -> None:
        runtime = self._runtime
        if runtime is None:
            return
        try:
            await runtime.close(drain_timeout)
        finally:
            self._runtime = None
