"""Sagas: durable workflow-as-code, journaled step by step, undone in reverse on failure.

A saga function runs from the top every time a coordinator (re)takes it; each
`saga.step(...)` at a journaled position returns its journaled result instead of
running again. So a coordinator that crashed resumes where it stopped, a completed
step never runs twice, and the code must ask for the same steps in the same order
(`SagaDeterminismError` otherwise).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic_core import to_jsonable_python

from .errors import ConfigurationError, EventbookError
from .event import adapter_for
from .retry import Backoff
from .store import StepRecord

if TYPE_CHECKING:
    from .coordinator import Drive
    from .topic import Topic

SagaFunction = Callable[..., Awaitable[Any]]

#: Undo entries are journaled after the steps, at `undo_position(step)`: positions that
#: grow in the order undos run (the reverse of the steps).
UNDO_BASE = 1_000_000


def undo_position(step_position: int) -> int:
    """Where the undo of the step at `step_position` is journaled."""
    return 2 * UNDO_BASE - step_position


class SagaDeterminismError(EventbookError):
    """A resumed saga asked for a different step than its journal holds at that position."""


class ReplayEnd(Exception):
    """Replaying a compensating saga reached work that never ran: stop there, then undo."""


class StepFailedError(EventbookError):
    """A step failed on every try, or timed out: the saga compensates."""

    def __init__(self, name: str, position: int, error: str) -> None:
        self.name = name
        self.position = position
        self.error = error
        super().__init__(f"step {position} ({name}) failed: {error}")


@dataclass(frozen=True, slots=True)
class SagaDefinition:
    """What `@book.saga(...)` registered."""

    name: str
    function: SagaFunction
    start_on: Topic[Any] | None
    version: int
    payload_type: Any
    deadline: float | None
    expects: tuple[Topic[Any], ...] = ()

    def load(self, payload: Any) -> Any:
        """The start payload as the saga function's parameter type."""
        if self.payload_type is Any:
            return payload
        return adapter(self.payload_type).validate_python(payload)


def define(
    name: str,
    function: SagaFunction,
    start_on: Topic[Any] | None,
    version: int,
    deadline: float | None,
    expects: tuple[Topic[Any], ...] = (),
) -> SagaDefinition:
    """Check a saga function's shape and describe it.

    Raises:
        ConfigurationError: it is not `async def f(saga, payload)`.
    """
    if not inspect.iscoroutinefunction(function):
        raise ConfigurationError(f"saga {name!r} must be an async def (saga, payload) function")
    params = list(inspect.signature(function).parameters.values())
    if len(params) != 2:
        raise ConfigurationError(
            f"saga {name!r} takes (saga, payload); {function.__qualname__} takes {len(params)}"
        )
    try:
        hints = typing.get_type_hints(function)
    except NameError:
        hints = {}
    payload_type = hints.get(params[1].name, Any)
    if start_on is not None and payload_type is not Any and payload_type != start_on.type:
        raise ConfigurationError(
            f"saga {name!r} takes {getattr(payload_type, '__name__', payload_type)}, but it "
            f"starts on topic {start_on.name!r}, which carries "
            f"{getattr(start_on.type, '__name__', start_on.type)}"
        )
    return SagaDefinition(name, function, start_on, version, payload_type, deadline, expects)


def step_name(target: Callable[..., Any]) -> str:
    """A step's fingerprint: `Service.method`, as written in the saga."""
    return ".".join(str(target.__qualname__).split(".")[-2:])


@dataclass
class _Completed:
    position: int
    name: str
    undo: Callable[..., Any] | None
    argument: Any


@dataclass
class Saga:
    """What a saga function gets: its id, and the journaled ways to act."""

    id: str
    name: str
    _drive: Drive = field(repr=False)
    _position: int = field(default=0, repr=False)
    _completed: list[_Completed] = field(default_factory=list, repr=False)

    def _next(self) -> int:
        position = self._position
        self._position += 1
        return position

    def _journaled(self, position: int, kind: str, name: str) -> StepRecord | None:
        entry = self._drive.journal.get(position)
        if entry is not None and (entry.kind, entry.name) != (kind, name):
            raise SagaDeterminismError(
                f"saga {self.id!r} changed: position {position} was {entry.kind} "
                f"{entry.name!r} when it ran, the code now asks for {kind} {name!r}; "
                "finish running sagas on the code they started with (version=)"
            )
        return entry

    async def step(
        self,
        target: Callable[..., Any],
        argument: Any = None,
        *,
        undo: Callable[..., Any] | None = None,
        retry: int = 0,
        backoff: Backoff | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Run `target` (a method of a registered service) with `argument`, once, durably.

        The call is a command sent over the broker to the service, which may run in
        another process; its answer is journaled. If the saga later fails, `undo`
        (a method of a service too) is called with the same argument.

        Args:
            target: `Service.method`.
            argument: what the method takes (validated on the participant's side).
            undo: the method that reverses it.
            retry: how many more tries after a failure or a timeout.
            backoff: the wait between tries (default: 0.1 s, doubling).
            timeout: seconds to wait for each try's answer.

        Raises:
            StepFailedError: it failed on every try (the saga then compensates).
            SagaDeterminismError: the journal holds another step at this position.
        """
        name = step_name(target)
        position = self._next()
        entry = self._journaled(position, "step", name)
        if entry is not None and entry.status == "failed":
            raise StepFailedError(name, position, entry.error or "failed")
        if entry is not None and entry.status == "done":
            result = entry.result
        else:
            result = await self._drive.command(
                position, "step", target, argument, retry, backoff or Backoff(), timeout, entry
            )
        self._completed.append(_Completed(position, name, undo, argument))
        return _typed_result(target, result)

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`, durably: a saga resumed after a crash sleeps only what is left."""
        position = self._next()
        entry = self._journaled(position, "sleep", "sleep")
        if entry is not None and entry.status == "done":
            return
        if self._drive.replaying_only:
            raise ReplayEnd()
        wake_at = entry.result if entry is not None else self._drive.clock.now() + seconds
        if entry is None:
            await self._drive.journal_step(position, "sleep", "sleep", "started", wake_at)
        await self._drive.clock.sleep(float(wake_at) - self._drive.clock.now())
        await self._drive.journal_step(position, "sleep", "sleep", "done", wake_at)

    async def publish(self, topic: Topic[Any], payload: Any) -> None:
        """Publish an event exactly once for this position of the saga, even on resume."""
        name = f"publish:{topic.name}"
        position = self._next()
        entry = self._journaled(position, "publish", name)
        if entry is not None and entry.status == "done":
            return
        if self._drive.replaying_only:
            raise ReplayEnd()
        await self._drive.publish_once(position, topic, payload)
        await self._drive.journal_step(position, "publish", name, "done", None)

    async def expect(
        self,
        topic: Topic[Any],
        where: Callable[[Any], bool] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Wait for an event on `topic` for which `where(payload)` is true; journal it.

        Raises:
            StepFailedError: none came within `timeout` seconds (the saga compensates).
        """
        name = f"expect:{topic.name}"
        position = self._next()
        entry = self._journaled(position, "expect", name)
        if entry is not None and entry.status == "done":
            return topic.payload.validate(entry.result)
        if entry is not None and entry.status == "failed":
            raise StepFailedError(name, position, entry.error or "failed")
        payload = await self._drive.expect(position, topic, where, timeout)
        return payload


def _typed_result(target: Callable[..., Any], result: Any) -> Any:
    """A step's journaled (JSON) result, read as the method's return type."""
    returns = _return_type(target)
    if returns in (Any, None, type(None)):
        return result
    return adapter(returns).validate_python(result)


@functools.lru_cache(maxsize=1024)
def _return_type(target: Callable[..., Any]) -> Any:
    try:
        return typing.get_type_hints(target).get("return", Any)
    except NameError:
        return Any


adapter = adapter_for


def jsonable(value: Any) -> Any:
    """What goes into the journal: plain JSON data."""
    return to_jsonable_python(value)
