"""The `eventbook` command line (typer + rich).

A user's mistake prints one clear line and exits 2; it never shows a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import importlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.table import Table

from . import brokers
from .book import EventBook
from .brokers.base import Broker, DeadLetter
from .errors import ConfigurationError, EventbookError
from .runtime import journal_url
from .store import SagaRecord, SagaStore, StepRecord, store_from_url

app = typer.Typer(
    name="eventbook",
    help="Typed events between Python services: run, inspect and demo eventbook books.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)

#: The CLI's default broker when neither --broker nor EVENTBOOK_BROKER is given: a
#: durable file in the working folder, so that `run` and `demo` lose nothing.
CLI_DEFAULT_BROKER = "sqlite:///eventbook.db"

BrokerOption = Annotated[
    str | None,
    typer.Option(
        "--broker", "-b", help="Broker URL; default $EVENTBOOK_BROKER, else " + CLI_DEFAULT_BROKER
    ),
]


def broker_url(given: str | None) -> str:
    """The broker a CLI command uses: --broker, else $EVENTBOOK_BROKER, else the CLI default."""
    return given or os.environ.get("EVENTBOOK_BROKER") or CLI_DEFAULT_BROKER


def load_book(target: str) -> EventBook:
    """Import `module:attribute` from the current directory, as uvicorn does.

    Raises:
        ConfigurationError: the target is malformed, does not import, or is no EventBook.
    """
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"expected MODULE:ATTRIBUTE (like app:book), got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from None
    book = getattr(module, attr, None)
    if not isinstance(book, EventBook):
        raise ConfigurationError(f"{target!r} is not an EventBook (found {type(book).__name__})")
    return book


class Failing(enum.StrEnum):
    bank = "bank"
    mail = "mail"
    post = "post"


class Style(enum.StrEnum):
    choreography = "choreography"
    orchestration = "orchestration"
    both = "both"


@app.command()
def demo(
    style: Annotated[Style, typer.Option(help="Which sign-up to run.")] = Style.both,
    broker: BrokerOption = None,
    fail: Annotated[
        Failing | None,
        typer.Option(help="Make this service's saga step fail, to watch the undo."),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="The saga journal; default the broker's file (sqlite://), or "
            f"{CLI_DEFAULT_BROKER} beside a networked broker.",
        ),
    ] = None,
) -> None:
    """Run the seed's sign-up (customer SELO) as choreography, orchestration, or both."""
    from . import demo as demo_module

    url = broker_url(broker)
    if store is None and urlsplit(url).scheme not in ("sqlite", "memory"):
        store = CLI_DEFAULT_BROKER  # a networked broker keeps no journal: a file here does
    demo_module.run(style.value, url, console, fail.value if fail else None, store=store)


@app.command()
def run(
    target: Annotated[str, typer.Argument(help="The book to run, as MODULE:ATTRIBUTE.")],
    broker: BrokerOption = None,
    service: Annotated[
        list[str] | None, typer.Option("--service", "-s", help="Run only this service.")
    ] = None,
    drain_timeout: Annotated[
        float, typer.Option(help="Seconds to let in-flight handlers finish on shutdown.")
    ] = 30.0,
    store: Annotated[
        str | None,
        typer.Option("--store", help="The saga journal; default the broker's file (sqlite://)."),
    ] = None,
) -> None:
    """Run a book's services (and sagas) until SIGINT or SIGTERM, then drain and exit 0."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    book = load_book(target)
    book.run(broker_url(broker), services=service or None, drain_timeout=drain_timeout, store=store)


dlq = typer.Typer(help="Dead letters: list, show, replay or purge them.", no_args_is_help=True)
app.add_typer(dlq, name="dlq")

Target = Annotated[str, typer.Argument(help="The book, as MODULE:ATTRIBUTE.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]
Ids = Annotated[list[str] | None, typer.Argument(help="Dead letter ids.", show_default=False)]
AllOption = Annotated[bool, typer.Option("--all", help="Every dead letter of the book.")]


@asynccontextmanager
async def connected(target: str, broker: str | None) -> AsyncIterator[Broker]:
    """The book's broker, connected for tooling: it consumes nothing."""
    book = load_book(target)
    connection = brokers.from_url(broker_url(broker), book.name)
    await connection.connect()
    try:
        yield connection
    finally:
        await connection.close()


def _letters(target: str, broker: str | None) -> list[DeadLetter]:
    async def fetch() -> list[DeadLetter]:
        async with connected(target, broker) as connection:
            return await connection.dead_letters()

    return asyncio.run(fetch())


@dlq.command("list")
def dlq_list(target: Target, broker: BrokerOption = None, as_json: JsonOption = False) -> None:
    """List dead letters with topic, handler, reason, error and attempts."""
    letters = _letters(target, broker)
    if as_json:
        print(json.dumps([_letter_json(letter) for letter in letters], indent=2))
        return
    if not letters:
        console.print("no dead letters")
        return
    table = Table("id", "topic", "handler", "reason", "attempts", "failed at", "error")
    for letter in letters:
        last_line = letter.error.strip().splitlines()[-1] if letter.error.strip() else ""
        table.add_row(
            letter.id,
            letter.topic,
            letter.handler,
            letter.reason,
            str(letter.attempts),
            letter.failed_at,
            last_line,
        )
    console.print(table)


@dlq.command("show")
def dlq_show(
    target: Target,
    letter_id: Annotated[str, typer.Argument(help="The dead letter's id.")],
    broker: BrokerOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one dead letter whole: the error with its traceback, and the event."""
    found = [letter for letter in _letters(target, broker) if letter.id == letter_id]
    if not found:
        raise EventbookError(f"no dead letter with id {letter_id!r} (see `eventbook dlq list`)")
    letter = found[0]
    if as_json:
        print(json.dumps(_letter_json(letter), indent=2))
        return
    for field in ("id", "event_id", "topic", "handler", "reason", "attempts", "failed_at"):
        console.print(f"[bold]{field}:[/] {getattr(letter, field)}", highlight=False)
    console.print("[bold]error:[/]")
    console.print(letter.error, highlight=False, markup=False)
    console.print("[bold]event:[/]")
    console.print_json(letter.body) if letter.body else console.print("(not kept)")


def _settle_letters(action: str, target: str, broker: str | None, ids: list[str] | None) -> int:
    async def run() -> int:
        async with connected(target, broker) as connection:
            if ids is not None:
                known = {letter.id for letter in await connection.dead_letters()}
                unknown = [i for i in ids if i not in known]
                if unknown:
                    raise EventbookError(f"no dead letter with id {', '.join(unknown)}")
            method = connection.replay if action == "replay" else connection.purge
            return await method(ids)

    return asyncio.run(run())


def _chosen(ids: list[str] | None, every: bool) -> list[str] | None:
    if bool(ids) == every:
        raise EventbookError("give dead letter ids, or --all (not both)")
    return None if every else ids


def _settling_command(action: str, summary: str) -> None:
    """Register `dlq replay` or `dlq purge`: the same arguments, one action each."""

    def command(
        target: Target,
        ids: Ids = None,
        every: AllOption = False,
        broker: BrokerOption = None,
        as_json: JsonOption = False,
    ) -> None:
        count = _settle_letters(action, target, broker, _chosen(ids, every))
        done = {"replay": "replayed", "purge": "purged"}[action]
        print(json.dumps({done: count})) if as_json else console.print(f"{done} {count}")

    command.__doc__ = summary
    dlq.command(action)(command)


_settling_command("replay", "Send dead letters back to their handler, as a first attempt.")
_settling_command("purge", "Delete dead letters for good.")


sagas = typer.Typer(help="Sagas: list, show, retry or skip them.", no_args_is_help=True)
app.add_typer(sagas, name="sagas")

StoreOption = Annotated[
    str | None,
    typer.Option("--store", help="The saga journal; default the broker's file (sqlite://)."),
]
SagaId = Annotated[str, typer.Argument(help="The saga's id (see `eventbook sagas list`).")]


@asynccontextmanager
async def journal(target: str, broker: str | None, store: str | None) -> AsyncIterator[SagaStore]:
    """The book's saga journal, opened for tooling."""
    book = load_book(target)
    if not book.sagas:
        raise EventbookError(f"book {book.name!r} has no sagas")
    opened = store_from_url(journal_url(broker_url(broker), store))
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def _when(seconds: float | None) -> str:
    if not seconds:
        return ""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


@sagas.command("list")
def sagas_list(
    target: Target,
    broker: BrokerOption = None,
    store: StoreOption = None,
    state: Annotated[list[str] | None, typer.Option(help="Only sagas in this state.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List sagas, newest first: state, current step, and when they last moved."""

    async def fetch() -> list[tuple[SagaRecord, list[StepRecord]]]:
        async with journal(target, broker, store) as opened:
            found = []
            for record in await opened.list(state or None, limit=1000):
                loaded = await opened.get(record.id)
                found.append(loaded if loaded is not None else (record, []))
            return found

    rows = asyncio.run(fetch())
    if as_json:
        print(json.dumps([_saga_json(r, s) for r, s in rows], indent=2))
        return
    if not rows:
        console.print("no sagas")
        return
    table = Table("id", "saga", "version", "state", "current step", "updated", "error")
    for record, steps in rows:
        table.add_row(
            record.id,
            record.name,
            str(record.version),
            record.state,
            _current(record, steps),
            _when(record.updated_at),
            (record.error or "").splitlines()[0] if record.error else "",
        )
    console.print(table)


@sagas.command("show")
def sagas_show(
    target: Target,
    saga_id: SagaId,
    broker: BrokerOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one saga: its state, current step, and history with timings and errors."""
    record, steps = _load(target, saga_id, broker, store)
    if as_json:
        print(json.dumps(_saga_json(record, steps), indent=2))
        return
    console.print(f"[bold]{record.id}[/] ({record.name} v{record.version}): {record.state}")
    if record.error:
        console.print(f"error: {record.error}", highlight=False, markup=False)
    console.print(f"current step: {_current(record, steps)}")
    table = Table("#", "kind", "step", "status", "tries", "started", "took", "error")
    for step in steps:
        took = (
            f"{(step.finished_at - step.started_at) * 1000:.1f} ms"
            if step.finished_at is not None
            else ""
        )
        table.add_row(
            str(step.position),
            step.kind,
            step.name,
            step.status,
            str(step.attempts),
            _when(step.started_at),
            took,
            step.error or "",
        )
    console.print(table)


def _load(
    target: str, saga_id: str, broker: str | None, store: str | None
) -> tuple[SagaRecord, list[StepRecord]]:
    async def fetch() -> tuple[SagaRecord, list[StepRecord]] | None:
        async with journal(target, broker, store) as opened:
            return await opened.get(saga_id)

    found = asyncio.run(fetch())
    if found is None:
        raise EventbookError(f"no saga with id {saga_id!r} (see `eventbook sagas list`)")
    return found


def _operate(target: str, saga_id: str, broker: str | None, store: str | None, to: str) -> None:
    record, _ = _load(target, saga_id, broker, store)
    if record.state != "failed":
        raise EventbookError(
            f"saga {saga_id!r} is {record.state}; only a failed saga is retried or skipped"
        )

    async def change() -> None:
        async with journal(target, broker, store) as opened:
            note = record.error if to == "compensating" else f"{record.error}; skipped by hand"
            await opened.force_state(saga_id, to, note)  # type: ignore[arg-type]

    asyncio.run(change())


@sagas.command("retry")
def sagas_retry(
    target: Target, saga_id: SagaId, broker: BrokerOption = None, store: StoreOption = None
) -> None:
    """Try the undo of a failed saga again (a running coordinator takes it back)."""
    _operate(target, saga_id, broker, store, "compensating")
    console.print(f"{saga_id}: compensating again")


@sagas.command("skip")
def sagas_skip(
    target: Target, saga_id: SagaId, broker: BrokerOption = None, store: StoreOption = None
) -> None:
    """Close a failed saga by hand, as compensated: a person has dealt with it."""
    _operate(target, saga_id, broker, store, "compensated")
    console.print(f"{saga_id}: closed as compensated")


def _current(record: SagaRecord, steps: list[StepRecord]) -> str:
    if record.state in ("completed", "compensated"):
        return ""
    open_steps = [s for s in steps if s.status != "done"]
    return f"{open_steps[-1].kind} {open_steps[-1].name}" if open_steps else ""


def _saga_json(record: SagaRecord, steps: list[StepRecord]) -> dict[str, object]:
    return {**dataclasses.asdict(record), "steps": [dataclasses.asdict(s) for s in steps]}


def _letter_json(letter: DeadLetter) -> dict[str, object]:
    data: dict[str, object] = dataclasses.asdict(letter)
    # An undecodable event is shown as the text it was.
    with contextlib.suppress(ValueError):
        data["body"] = json.loads(letter.body) if letter.body else None
    return data


def main() -> None:
    """Entry point of the `eventbook` script."""
    try:
        app()
    except EventbookError as exc:
        errors.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
