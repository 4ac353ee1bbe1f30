"""The command line: the demo, and one clear line (no traceback) for a user's mistake."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def eventbook(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventbook", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "100", **env},
        timeout=120,
    )


def test_demo_prints_the_signup_in_both_styles_with_every_service_named(tmp_path: Path) -> None:
    result = eventbook("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    choreography, orchestration = out.split("orchestration")
    for part in (choreography, orchestration):
        assert "Service Name: BankService, Customer Name: SELO" in part
        assert "Service Name: MailService, To: rochan87@gmail.com" in part
        assert "Service Name: PostService, Address: Seoul, Korea" in part
    assert "CustomerService published customer.signup" in choreography
    assert "MailService.send handled customer.update" in choreography
    assert "saga step PostService.send: done" in orchestration
    assert "saga customer.onboarding completed" in orchestration


def test_orchestration_demo_with_a_failing_post_undoes_in_reverse(tmp_path: Path) -> None:
    result = eventbook("demo", "--style", "orchestration", "--fail", "post", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    failed = lines.index("saga step PostService.send: failed (RuntimeError: post is down)")
    assert lines[failed + 1 :] == [
        "saga undo MailService.apologize: done",
        "saga undo BankService.close_account: done",
        "saga customer.onboarding compensated",
    ]
    # The services ran in this order: bank, mail, post (down), then the undos, reversed.
    said = [line for line in lines if line.startswith(("Service Name", "PostService is down"))]
    assert said == [
        "Service Name: BankService, Customer Name: SELO",
        "Service Name: MailService, To: rochan87@gmail.com",
        "PostService is down",
        "PostService is down",
        "Service Name: MailService, sorry mail to rochan87@gmail.com",
        "Service Name: BankService, closed the account of SELO",
    ]


def test_demo_runs_one_style() -> None:
    result = eventbook("demo", "--style", "choreography")
    assert result.returncode == 0, result.stderr
    assert "orchestration" not in result.stdout
    assert "BankService.create_account handled customer.signup" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "nosuchmodule:book"], "cannot import 'nosuchmodule'"),
        (["run", "justaname"], "expected MODULE:ATTRIBUTE"),
        (["run", "eventbook:__version__"], "is not an EventBook"),
        (["demo", "--broker", "kafka://u:hunter2@h"], "supported schemes are"),
    ],
)
def test_a_cli_mistake_prints_one_clear_line(args: list[str], message: str) -> None:
    result = eventbook(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "hunter2" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bad_option_is_a_usage_error_not_a_traceback() -> None:
    result = eventbook("demo", "--style", "ballet")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "ballet" in result.stderr


APP = """
import eventbook as eb

class Ping(eb.Event):
    n: int

book = eb.EventBook("app")
PING = book.topic("ping", Ping)

@eb.sub(PING)
def pong(ping: Ping) -> None: ...
"""


def test_run_serves_until_sigterm_then_exits_0(tmp_path: Path) -> None:
    import signal
    import time

    (tmp_path / "app.py").write_text(APP)
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventbook", "run", "app:book", "--broker", "memory://"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "started on memory://" in line or not line:
            break
    assert any("app: started on memory://" in line for line in lines), lines
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "app: stopped" in out


def test_demo_keeps_its_events_in_a_sqlite_file_and_runs_again_on_it(tmp_path: Path) -> None:
    import sqlite3

    first = eventbook("demo", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    database = tmp_path / "eventbook.db"
    assert database.exists()
    with sqlite3.connect(database) as db:
        (events,) = db.execute("SELECT COUNT(*) FROM eb_events").fetchone()
    assert events >= 5  # sign-up, update, and the three requests (plus their replies)
    second = eventbook("demo", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("Service Name: BankService, Customer Name: SELO") == 2


FAILING_APP = """
import eventbook as eb

class Ping(eb.Event):
    n: int

book = eb.EventBook("app")
PING = book.topic("ping", Ping)

@eb.sub(PING, retries=0)
def fragile(ping: Ping) -> None:
    raise ValueError(f"cannot take ping {ping.n}")
"""


def test_dlq_lists_shows_replays_and_purges(tmp_path: Path) -> None:
    import asyncio
    import importlib.util
    import json

    (tmp_path / "app.py").write_text(FAILING_APP)
    url = f"sqlite:///{tmp_path}/app.db"
    spec = importlib.util.spec_from_file_location("dlq_app", tmp_path / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    async def fail_twice() -> None:
        from eventbook.testing import eventually
        from eventbook.testing.contract import dead_letter_count

        async with module.book.start(url):
            await module.book.publish(module.PING, module.Ping(n=1))
            await module.book.publish(module.PING, module.Ping(n=2))
            await eventually(lambda: dead_letter_count(module.book, 2), 30)

    asyncio.run(fail_twice())

    listed = eventbook("dlq", "list", "app:book", "--broker", url, cwd=tmp_path, COLUMNS="200")
    assert listed.returncode == 0, listed.stderr
    assert "fragile" in listed.stdout
    assert "ValueError: cannot take ping" in listed.stdout
    letters = json.loads(
        eventbook("dlq", "list", "app:book", "-b", url, "--json", cwd=tmp_path).stdout
    )
    assert [(d["topic"], d["handler"], d["reason"], d["attempts"]) for d in letters] == [
        ("ping", "fragile", "failed", 1),
        ("ping", "fragile", "failed", 1),
    ]
    assert letters[0]["body"]["data"] == {"n": 1}

    shown = eventbook("dlq", "show", "app:book", letters[0]["id"], "-b", url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "raise ValueError" in shown.stdout
    assert '"n": 1' in shown.stdout

    missing = eventbook("dlq", "show", "app:book", "999", "-b", url, cwd=tmp_path)
    assert missing.returncode == 2
    assert "no dead letter with id '999'" in missing.stderr

    neither = eventbook("dlq", "purge", "app:book", "-b", url, cwd=tmp_path)
    assert neither.returncode == 2
    assert "--all" in neither.stderr

    replayed = eventbook(
        "dlq", "replay", "app:book", letters[0]["id"], "-b", url, "--json", cwd=tmp_path
    )
    assert json.loads(replayed.stdout) == {"replayed": 1}
    left = json.loads(
        eventbook("dlq", "list", "app:book", "-b", url, "--json", cwd=tmp_path).stdout
    )
    assert [d["id"] for d in left] == [letters[1]["id"]]

    purged = eventbook("dlq", "purge", "app:book", "--all", "-b", url, cwd=tmp_path)
    assert purged.returncode == 0
    assert "purged 1" in purged.stdout
    empty = eventbook("dlq", "list", "app:book", "-b", url, cwd=tmp_path)
    assert "no dead letters" in empty.stdout


SAGA_APP = """
import eventbook as eb

class Order(eb.Event):
    n: int

book = eb.EventBook("shop")
ORDERS = book.topic("orders", Order)

@book.service
class BankService:
    def charge(self, order: Order) -> dict:
        return {"charged": order.n}

    def refund(self, order: Order) -> None:
        raise RuntimeError("the refund desk is closed")

@book.service
class PostService:
    def ship(self, order: Order) -> None:
        raise RuntimeError("no trucks")

@book.saga("checkout", start_on=ORDERS)
async def checkout(saga: eb.Saga, order: Order) -> None:
    await saga.step(BankService.charge, order, undo=BankService.refund)
    await saga.step(PostService.ship, order)
"""


def test_sagas_list_show_retry_and_skip(tmp_path: Path) -> None:
    import asyncio
    import importlib.util
    import json

    (tmp_path / "app.py").write_text(SAGA_APP)
    url = f"sqlite:///{tmp_path}/app.db"
    spec = importlib.util.spec_from_file_location("saga_app", tmp_path / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    async def run_one() -> str:
        from eventbook.testing import eventually

        async with module.book.start(url):
            envelope = await module.book.publish(module.ORDERS, module.Order(n=7))
            saga_id = f"checkout:{envelope.id}"

            async def ended() -> bool:
                found = await module.book.journal.get(saga_id)
                return found is not None and found[0].state == "failed"

            await eventually(ended, 60)
            return saga_id

    saga_id = asyncio.run(run_one())
    listed = eventbook("sagas", "list", "app:book", "-b", url, cwd=tmp_path, COLUMNS="250")
    assert listed.returncode == 0, listed.stderr
    assert saga_id in listed.stdout
    assert "failed" in listed.stdout
    [saga] = json.loads(
        eventbook("sagas", "list", "app:book", "-b", url, "--json", cwd=tmp_path).stdout
    )
    assert saga["state"] == "failed"
    assert [(s["kind"], s["name"], s["status"]) for s in saga["steps"]] == [
        ("step", "BankService.charge", "done"),
        ("step", "PostService.ship", "failed"),
        ("undo", "BankService.refund", "failed"),
    ]
    assert "the refund desk is closed" in saga["error"]

    shown = eventbook("sagas", "show", "app:book", saga_id, "-b", url, cwd=tmp_path, COLUMNS="250")
    assert shown.returncode == 0, shown.stderr
    assert "RuntimeError: no trucks" in shown.stdout
    assert "current step: undo BankService.refund" in shown.stdout

    retried = eventbook("sagas", "retry", "app:book", saga_id, "-b", url, cwd=tmp_path)
    assert retried.returncode == 0, retried.stderr
    state = json.loads(
        eventbook("sagas", "list", "app:book", "-b", url, "--json", cwd=tmp_path).stdout
    )
    assert state[0]["state"] == "compensating"  # a running coordinator would take it back

    skipped = eventbook("sagas", "skip", "app:book", saga_id, "-b", url, cwd=tmp_path)
    assert skipped.returncode == 2  # only a failed saga is skipped
    assert "only a failed saga" in skipped.stderr

    async def coordinate_again() -> None:
        from eventbook.testing import eventually

        async with module.book.start(url):  # takes it back; the refund fails again

            async def failed_again() -> bool:
                found = await module.book.journal.get(saga_id)
                return found is not None and found[0].state == "failed"

            await eventually(failed_again, 60)

    asyncio.run(coordinate_again())
    skipped = eventbook("sagas", "skip", "app:book", saga_id, "-b", url, cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stderr
    [saga] = json.loads(
        eventbook("sagas", "list", "app:book", "-b", url, "--json", cwd=tmp_path).stdout
    )
    assert saga["state"] == "compensated"
    assert "skipped by hand" in saga["error"]

    missing = eventbook("sagas", "show", "app:book", "checkout:nope", "-b", url, cwd=tmp_path)
    assert missing.returncode == 2
    assert "no saga with id 'checkout:nope'" in missing.stderr
