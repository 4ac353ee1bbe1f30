"""`sqlite://` saga stores in several processes on one file: what only a shared file does."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from eventbook.store.sqlite import SqliteSagaStore
from eventbook.testing.store_contract import saga

PROCESSES = 4
SAGAS = 200

WORKER = """
import asyncio
import json
import os
import sys

from eventbook.store.sqlite import SqliteSagaStore
from eventbook.testing.store_contract import saga, step

url, mode, me, ready, go = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])


async def main() -> None:
    store = SqliteSagaStore(url)
    open(ready, "w").close()
    os.read(go, 1)  # blocks until the test closes the pipe: every process starts at once
    await store.open()
    if mode == "open":
        await store.create(saga("opened", int(me)))
        await store.close()
        return
    taken = []
    while batch := await store.claim(me, 60.0, 2, names=["shared"]):
        for record in batch:
            taken.append(record.id)
            await store.put_step(me, step(record.id, 0, result=me))
            await store.set_state(me, record.id, "completed")
    await store.close()
    print(json.dumps(taken))


asyncio.run(main())
"""


def run_together(directory: Path, url: str, mode: str) -> list[str]:
    """Run PROCESSES workers that start at once; return their outputs (each must succeed)."""
    (directory / "worker.py").write_text(WORKER)
    go, release = os.pipe()
    procs: list[subprocess.Popen[str]] = []
    try:
        for i in range(PROCESSES):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "worker.py", url, mode, str(i), f"ready-{i}", str(go)],
                    pass_fds=(go,),
                    cwd=directory,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        deadline = time.monotonic() + 60
        while not all((directory / f"ready-{i}").exists() for i in range(PROCESSES)):
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.005)  # polling for files, not synchronising
        os.close(release)
        release = -1
        outputs = [proc.communicate(timeout=60)[0] for proc in procs]
    finally:
        os.close(go)
        if release != -1:
            os.close(release)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output
    return outputs


def test_processes_opening_a_new_file_together_all_work(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    run_together(tmp_path, url, "open")
    found = asyncio.run(_ids(url, "opened"))
    assert sorted(found) == sorted(f"opened:{i}" for i in range(PROCESSES))


def test_processes_claiming_together_never_share_a_saga(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sagas.db'}"
    asyncio.run(_create(url, SAGAS))
    outputs = run_together(tmp_path, url, "claim")
    taken = [json.loads(output.strip().splitlines()[-1]) for output in outputs]
    every = [saga_id for ids in taken for saga_id in ids]
    assert len(every) == len(set(every)), "a saga was claimed by two processes"
    assert sorted(every) == sorted(f"shared:{n}" for n in range(SAGAS))
    assert asyncio.run(_steps_by(url)) == {
        saga_id: str(worker) for worker, ids in enumerate(taken) for saga_id in ids
    }


async def _create(url: str, count: int) -> None:
    store = SqliteSagaStore(url)
    await store.open()
    for n in range(count):
        await store.create(saga("shared", n))
    await store.close()


async def _ids(url: str, name: str) -> list[str]:
    store = SqliteSagaStore(url)
    await store.open()
    try:
        return [record.id for record in await store.list(name=name)]
    finally:
        await store.close()


async def _steps_by(url: str) -> dict[str, str]:
    """Each completed saga's id, and the worker that journaled its one step."""
    store = SqliteSagaStore(url)
    await store.open()
    try:
        by: dict[str, str] = {}
        for record in await store.list(states=["completed"], name="shared", limit=SAGAS):
            found = await store.get(record.id)
            assert found is not None
            [only] = found[1]
            by[record.id] = only.result
        return by
    finally:
        await store.close()
