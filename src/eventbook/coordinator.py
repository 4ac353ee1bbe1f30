"""The saga coordinator: takes sagas from the journal, drives them, and serves steps.

Every process that runs a book with sagas is a coordinator: coordinators share the
journal's sagas, one owner at a time under a lease (`SagaStore.claim`), so a saga
whose coordinator died is taken over once its lease lapses. Every service of such
a book also answers step commands on its own command topic, `_cmd.<Service>`,
honouring each command's idempotency key (saga id and position): a command re-sent
after a crash returns the recorded answer instead of running again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import typing
import uuid
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .clock import Clock
from .context import current_event
from .delivery import Dispatcher
from .errors import ConfigurationError
from .retry import Backoff, RetryPolicy
from .saga import (
    ReplayEnd,
    Saga,
    SagaDefinition,
    SagaDeterminismError,
    StepFailedError,
    adapter,
    jsonable,
    step_name,
    undo_position,
)
from .service import Handler, Service
from .store import LostOwnershipError, SagaRecord, SagaStore, StepRecord
from .topic import Topic

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("eventbook.saga")

#: Tries of each undo before the saga is parked as failed.
UNDO_RETRIES = 3

#: Events a coordinator's consumers take at once where order does not matter: start
#: events (each starts its own saga), and the step commands a service answers (steps
#: of different sagas, run side by side as a web server runs requests: `async def`
#: methods on the event loop, `def` methods in worker threads). Within one saga the
#: steps still run one after the other. Expected events keep their order (one at a time).
AT_ONCE = 100


def command_topic_name(service: str) -> str:
    return f"_cmd.{service}"


class Coordinator:
    """Drives the book's sagas in this process; see the module docstring."""

    def __init__(
        self,
        runtime: Runtime,
        store: SagaStore,
        clock: Clock,
        lease: float = 30.0,
        poll: float = 0.5,
        capacity: int = 100,
    ) -> None:
        self.runtime = runtime
        self.book = runtime.book
        self.store = store
        self.clock = clock
        self.lease = lease
        self.poll = poll
        self.capacity = capacity
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.definitions: dict[tuple[str, int], SagaDefinition] = {
            (d.name, d.version): d for d in self.book.sagas
        }
        self.drives: dict[str, asyncio.Task[None]] = {}
        self.expected: dict[str, deque[Any]] = {}
        self.waiters: dict[str, list[tuple[Callable[[Any], bool] | None, asyncio.Future[Any]]]] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        # Step commands running here, by idempotency key (see `_execute`).
        self._running: dict[str, asyncio.Event] = {}

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, participants: list[Service], coordinate: bool) -> None:
        """Answer step commands for `participants`; drive sagas if `coordinate`."""
        broker = self.runtime.broker
        for service in self.book.services.values():
            if _is_class_service(service):
                await broker.declare(_command_group(service), command_topic_name(service.name))
        for service in participants:
            if _is_class_service(service):
                await self._serve_commands(service)
        if not coordinate:
            return
        for definition in self.book.sagas:
            if definition.start_on is not None:
                await self._consume(
                    f"saga.{definition.name}",
                    definition.start_on,
                    self._starter(definition),
                    retries=5,
                    concurrency=AT_ONCE,
                )
        for topic in {t.name: t for d in self.book.sagas for t in d.expects}.values():
            self.expected[topic.name] = deque(maxlen=1000)
            await self._consume(f"saga.expect.{topic.name}", topic, self._expected(topic), 5)
        self._tasks = [asyncio.create_task(self._claim_loop(), name="eventbook-sagas")]

    async def stop(self, timeout: float) -> None:
        self._stopping = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        held = list(self.drives)  # the drives remove themselves as they end
        drives = list(self.drives.values())
        if drives:
            _, late = await asyncio.wait(drives, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        with contextlib.suppress(Exception):
            # Unfinished sagas go back at once, for another coordinator to take.
            await self.store.release(self.owner, held)

    async def _consume(
        self,
        group: str,
        topic: Topic[Any],
        call: Callable[[Any], Any],
        retries: int,
        concurrency: int = 1,
    ) -> None:
        policy = RetryPolicy(retries, Backoff(initial=0.1))
        handler = Handler("_sagas", group, topic, call, policy, None, concurrency)
        await self.runtime.broker.declare(group, topic.name)
        await self.runtime.broker.consume(handler, Dispatcher(handler, self.runtime))

    # -- starting --------------------------------------------------------------------

    def _starter(self, definition: SagaDefinition) -> Callable[[Any], Any]:
        async def start(payload: Any) -> None:
            envelope = current_event()
            assert envelope is not None
            await self.create(definition, payload, f"{definition.name}:{envelope.id}")

        return start

    async def create(self, definition: SagaDefinition, payload: Any, saga_id: str) -> bool:
        """Journal a new saga (once per id: a redelivered start event starts nothing)."""
        now = self.clock.now()
        record = SagaRecord(
            id=saga_id,
            name=definition.name,
            version=definition.version,
            state="running",
            payload=jsonable(payload),
            created_at=now,
            updated_at=now,
            deadline=now + definition.deadline if definition.deadline is not None else None,
            owner=None,
            lease_until=0.0,
            error=None,
        )
        created = await self.store.create(record)
        self._wake.set()
        return created

    # -- driving ---------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        names = sorted({d.name for d in self.book.sagas})
        renew_every = self.lease / 3
        last_renew = self.clock.now()
        while not self._stopping:
            self._wake.clear()
            room = self.capacity - len(self.drives)
            if room > 0:
                try:
                    claimed = await self.store.claim(self.owner, self.lease, room, names)
                except Exception:
                    log.exception("sagas: cannot claim from the journal; trying again")
                    claimed = []
                for record in claimed:
                    if record.id not in self.drives:
                        self._drive(record)
            if self.clock.now() - last_renew >= renew_every and self.drives:
                last_renew = self.clock.now()
                with contextlib.suppress(Exception):
                    held = set(await self.store.renew(self.owner, list(self.drives), self.lease))
                    for saga_id, task in list(self.drives.items()):
                        if saga_id not in held:
                            log.warning("saga %s: lease lost; another coordinator has it", saga_id)
                            task.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll)

    def _drive(self, record: SagaRecord) -> None:
        task = asyncio.create_task(Drive(self, record).run(), name=f"saga-{record.id}")
        self.drives[record.id] = task

        def done(_: asyncio.Task[None]) -> None:
            self.drives.pop(record.id, None)
            self._wake.set()

        task.add_done_callback(done)

    def target_of(self, target: Callable[..., Any]) -> tuple[Service, str]:
        """The registered service that owns method `target`, and the method's name."""
        attr = target.__name__
        for service in self.book.services.values():
            cls = service.cls
            if cls is not None and getattr(cls, attr, None) is target:
                return service, attr
        raise ConfigurationError(
            f"{step_name(target)} is not a method of a service of book {self.book.name!r}: "
            "register its class with @book.service"
        )

    # -- expect ----------------------------------------------------------------------

    def _expected(self, topic: Topic[Any]) -> Callable[[Any], Any]:
        async def arrived(payload: Any) -> None:
            for where, waiter in list(self.waiters.get(topic.name, [])):
                if not waiter.done() and (where is None or where(payload)):
                    waiter.set_result(payload)
                    return
            self.expected[topic.name].append(payload)

        return arrived

    # -- participants ----------------------------------------------------------------

    async def _serve_commands(self, service: Service) -> None:
        topic: Topic[Any] = Topic(self.book, command_topic_name(service.name), Any)

        async def execute(command: Any) -> dict[str, Any]:
            return await self._execute(service, command)

        await self._consume(_command_group(service), topic, execute, retries=0, concurrency=AT_ONCE)

    async def _execute(self, service: Service, command: dict[str, Any]) -> dict[str, Any]:
        key = str(command.get("key"))
        # A copy re-sent while the first still runs here (a step's timeout) waits for it
        # to end, then answers from its record like any copy sent again.
        while (running := self._running.get(key)) is not None:
            await running.wait()
        self._running[key] = ended = asyncio.Event()
        try:
            return await self._answer(service, key, command)
        finally:
            del self._running[key]
            ended.set()

    async def _answer(self, service: Service, key: str, command: dict[str, Any]) -> dict[str, Any]:
        method = str(command.get("method"))
        found, result = await self.store.command_result(key)
        if found:
            return {"ok": True, "result": result}
        cls = service.cls
        if cls is None or method.startswith("_") or not callable(getattr(cls, method, None)):
            return {"ok": False, "error": f"{service.name} has no method {method!r}"}
        function = getattr(service.instance, method)
        try:
            argument = _argument(function, command.get("argument"))
        except ValidationError as exc:
            return {"ok": False, "error": f"bad argument for {service.name}.{method}: {exc}"}
        arguments = (argument,) if _takes_argument(function) else ()
        try:
            if inspect.iscoroutinefunction(function):
                value = await function(*arguments)
            else:
                value = await asyncio.to_thread(function, *arguments)
        except Exception as exc:
            log.warning("%s.%s failed for %s: %s", service.name, method, key, exc)
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        answer = jsonable(value)
        await self.store.save_command_result(key, answer)
        return {"ok": True, "result": answer}


class Drive:
    """One saga instance being driven by this coordinator."""

    def __init__(self, coordinator: Coordinator, record: SagaRecord) -> None:
        self.coordinator = coordinator
        self.record = record
        self.clock = coordinator.clock
        self.journal: dict[int, StepRecord] = {}
        self.replaying_only = record.state == "compensating"

    async def run(self) -> None:
        c = self.coordinator
        record = self.record
        try:
            loaded = await c.store.get(record.id)
            if loaded is None:
                return
            record, steps = loaded
            self.record = record
            self.journal = {step.position: step for step in steps}
            definition = c.definitions.get((record.name, record.version))
            if definition is None:
                known = sorted(v for n, v in c.definitions if n == record.name)
                await self._set(
                    "failed",
                    f"saga {record.name!r} started on version "
                    f"{record.version}; this code has versions {known}: keep the "
                    "old version registered until its sagas finish",
                )
                return
            saga = Saga(record.id, record.name, self)
            try:
                await self._run_function(definition, saga)
            except (StepFailedError, ReplayEnd, TimeoutError) as exc:
                await self._compensate(saga, _reason(exc))
                return
            except SagaDeterminismError as exc:
                log.error("%s", exc)
                await self._set("failed", str(exc))
                return
            except LostOwnershipError:
                raise
            except Exception as exc:
                log.exception("saga %s raised", record.id)
                await self._compensate(saga, f"{type(exc).__name__}: {exc}")
                return
            await self._set("completed", None)
        except LostOwnershipError:
            log.info("saga %s: another coordinator owns it now", record.id)

    async def _run_function(self, definition: SagaDefinition, saga: Saga) -> None:
        payload = definition.load(self.record.payload)
        body = asyncio.ensure_future(definition.function(saga, payload))
        deadline = self.record.deadline
        try:
            remaining = None if deadline is None else deadline - self.clock.now()
            await self.clock.wait(body, remaining)
        except TimeoutError:
            body.cancel()
            with contextlib.suppress(BaseException):
                await body
            raise TimeoutError("the saga's deadline passed") from None
        finally:
            if not body.done():
                body.cancel()

    async def _compensate(self, saga: Saga, error: str) -> None:
        await self._set("compensating", error)
        for done in reversed(saga._completed):
            if done.undo is None:
                continue
            position = undo_position(done.position)
            entry = self.journal.get(position)
            if entry is not None and entry.status == "done":
                continue
            try:
                await self.command(
                    position, "undo", done.undo, done.argument, UNDO_RETRIES, Backoff(), None, entry
                )
            except StepFailedError as exc:
                await self._set("failed", f"{error}; undo of {done.name} failed: {exc.error}")
                return
        await self._set("compensated", error)

    async def _set(self, state: Any, error: str | None) -> None:
        await self.coordinator.store.set_state(self.coordinator.owner, self.record.id, state, error)

    async def journal_step(
        self,
        position: int,
        kind: str,
        name: str,
        status: str,
        result: Any,
        error: str | None = None,
        attempts: int = 1,
        started_at: float | None = None,
    ) -> None:
        previous = self.journal.get(position)
        now = self.clock.now()
        if started_at is None:
            started_at = previous.started_at if previous is not None else now
        step = StepRecord(
            saga_id=self.record.id,
            position=position,
            kind=kind,
            name=name,
            status=status,
            result=result,
            error=error,
            started_at=started_at,
            finished_at=None if status == "started" else now,
            attempts=attempts,
        )
        await self.coordinator.store.put_step(self.coordinator.owner, step)
        self.journal[position] = step

    async def command(
        self,
        position: int,
        kind: str,
        target: Callable[..., Any],
        argument: Any,
        retry: int,
        backoff: Backoff,
        timeout: float | None,
        entry: StepRecord | None,
    ) -> Any:
        """Send a step (or undo) command until it answers, journaling each outcome."""
        if self.replaying_only and kind == "step":
            raise ReplayEnd()
        c = self.coordinator
        service, method = c.target_of(target)
        name = step_name(target)
        # No "started" entry: a step cut short by a crash is sent again under the same
        # idempotency key, and the participant answers from its record if it ran.
        started = entry.started_at if entry is not None else self.clock.now()
        topic: Topic[Any] = Topic(c.book, command_topic_name(service.name), Any)
        command = {
            "method": method,
            "argument": jsonable(argument),
            "key": f"{self.record.id}/{position}",
        }
        error = "never tried"
        for attempt in range(1, retry + 2):
            envelope, waiter = await c.runtime.ask(
                topic, command, f"/{c.book.name}/saga/{self.record.name}", None
            )
            try:
                answer = await self.clock.wait(waiter, timeout)
            except TimeoutError:
                error = f"timed out after {timeout:g}s"
            else:
                reply = answer.get("result") if answer.get("ok") else None
                if isinstance(reply, dict) and reply.get("ok"):
                    await self.journal_step(
                        position,
                        kind,
                        name,
                        "done",
                        reply.get("result"),
                        attempts=attempt,
                        started_at=started,
                    )
                    return reply.get("result")
                error = str((reply or answer).get("error", "failed"))
            finally:
                c.runtime.forget(envelope)
            log.warning(
                "saga %s: %s %s try %d failed: %s", self.record.id, kind, name, attempt, error
            )
            if attempt <= retry:
                await self.clock.sleep(backoff.delay(attempt))
        await self.journal_step(
            position, kind, name, "failed", None, error, attempts=retry + 1, started_at=started
        )
        raise StepFailedError(name, position, error)

    async def publish_once(self, position: int, topic: Topic[Any], payload: Any) -> None:
        runtime = self.coordinator.runtime
        envelope, body = runtime.wrap(topic, payload, f"/{runtime.book.name}/saga", None)
        # The same id on every try: brokers and inboxes drop a re-sent copy.
        envelope._id = _stable_id(self.record.id, position)
        if body is not None:
            body = runtime.encode(topic, envelope)
        await runtime.broker.publish(envelope, body)

    async def expect(
        self,
        position: int,
        topic: Topic[Any],
        where: Callable[[Any], bool] | None,
        timeout: float | None,
    ) -> Any:
        c = self.coordinator
        name = f"expect:{topic.name}"
        if topic.name not in c.expected:
            raise ConfigurationError(
                f"saga {self.record.name!r} expects {topic.name!r}: declare it with "
                f"@book.saga(..., expects=[{topic.name.upper().replace('.', '_')}])"
            )
        if self.replaying_only:
            raise ReplayEnd()
        if position not in self.journal:
            await self.journal_step(position, "expect", name, "started", None)
        for payload in list(c.expected[topic.name]):
            if where is None or where(payload):
                c.expected[topic.name].remove(payload)
                await self.journal_step(position, "expect", name, "done", jsonable(payload))
                return payload
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        c.waiters.setdefault(topic.name, []).append((where, waiter))
        try:
            payload = await self.clock.wait(waiter, timeout)
        except TimeoutError:
            error = f"no {topic.name} within {timeout:g}s"
            await self.journal_step(position, "expect", name, "failed", None, error)
            raise StepFailedError(name, position, error) from None
        finally:
            c.waiters[topic.name].remove((where, waiter))
        await self.journal_step(position, "expect", name, "done", jsonable(payload))
        return payload


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ReplayEnd):
        return "compensating after a restart"
    if isinstance(exc, StepFailedError):
        return str(exc)
    return str(exc) or type(exc).__name__


def _stable_id(saga_id: str, position: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"eventbook-saga:{saga_id}/{position}"))


def _command_group(service: Service) -> str:
    return f"{service.name}._commands"


def _is_class_service(service: Service) -> bool:
    return service.cls is not None


def _takes_argument(function: Callable[..., Any]) -> bool:
    return _parameter_type(getattr(function, "__func__", function)) is not _NO_PARAMETER


_NO_PARAMETER = object()


@functools.lru_cache(maxsize=1024)
def _parameter_type(function: Callable[..., Any]) -> Any:
    """The type of a participant method's argument (`self` aside), Any, or _NO_PARAMETER."""
    params = [p for p in inspect.signature(function).parameters.values() if p.kind != p.VAR_KEYWORD]
    if params and params[0].name == "self":
        params = params[1:]
    if not params:
        return _NO_PARAMETER
    try:
        return typing.get_type_hints(function).get(params[0].name, Any)
    except NameError:
        return Any


def _argument(function: Callable[..., Any], value: Any) -> Any:
    annotation = _parameter_type(getattr(function, "__func__", function))
    if annotation is Any or annotation is _NO_PARAMETER:
        return value
    return adapter(annotation).validate_python(value)
