"""A pipeline run's lease: the live process that drives a RUNNING run, so that no second process trains inside it.

The lease is written on the run itself, as tags, rather than as a lock file beside the checkpoint: a tracking
server is often shared by drivers on several machines, and a lock file is seen on one machine only, while every
driver that could continue a run reads its tags. ``lease_owner`` names the process (its host, its pid and when it
started, so that a reused pid is not taken for the owner); ``lease_heartbeat`` is renewed every ``HEARTBEAT_S``
while it runs. An owner on this machine is alive while its process is, which is checked at once, so ``resume``
right after a crash or a SIGKILL need not wait; an owner on another machine is alive while its heartbeat is younger
than ``STALE_S``. A run that is not RUNNING (it finished, failed or was stopped) holds no lease.

A second process that finds a run leased stops with one line saying how to continue, rather than wait (for hours,
perhaps, while a job scheduler counts it as running) or start a run of its own (the same training twice, racing to
register its model): what it asked for is being done, and running the command again once it is done reuses it.

A new run carries its lease from the moment it is created, so a second process that finds it never sees it
unowned. Two processes reopening one dead run in the same instant can still both take it: the store offers no
atomic test-and-set to rule that out.
"""

import contextlib
import json
import os
import socket
import threading
import time

import psutil
from mlflow.entities import Run, RunTag
from mlflow.tracking import MlflowClient

from pipelines.config import ConfigError

OWNER, HEARTBEAT = "lease_owner", "lease_heartbeat"
HEARTBEAT_S = 30.0
STALE_S = 120.0  # four missed heartbeats: the owner on another machine is taken to be gone


def this_process() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": round(psutil.Process().create_time(), 2)}


def tags() -> dict[str, str]:
    """The lease of this process, as the tags a run is created (or reopened) with."""
    return {OWNER: json.dumps(this_process()), HEARTBEAT: f"{time.time():.0f}"}


def alive(owner: dict, heartbeat: float) -> bool:
    if owner["host"] != socket.gethostname():
        return time.time() - heartbeat < STALE_S
    try:
        process = psutil.Process(owner["pid"])
        return round(process.create_time(), 2) == owner["started"] and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def owner_of(run: Run) -> dict | None:
    """The live process holding ``run``'s lease, or None: the run is not RUNNING, was never leased, or its owner is gone."""
    leased = run.data.tags
    if run.info.status != "RUNNING" or OWNER not in leased:
        return None
    owner = json.loads(leased[OWNER])
    return owner if alive(owner, float(leased.get(HEARTBEAT, 0))) else None


def refuse_if_held(run: Run) -> None:
    """A one-line error if a live process drives ``run``: continuing it here would train twice inside one run."""
    owner = owner_of(run)
    if owner is not None:
        run_id = run.info.run_id
        raise ConfigError(
            f"pipeline run {run_id} is running in process {owner['pid']} on {owner['host']}: wait for it to finish, "
            f"or stop it (Ctrl-C or SIGTERM) and continue it with `python -m pipelines resume {run_id}`"
        )


@contextlib.contextmanager
def held(run_id: str):
    """Hold the lease on ``run_id`` while the block runs: this process as its owner, and a heartbeat thread."""
    client, stop = MlflowClient(), threading.Event()
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags().items()])

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                client.set_tag(run_id, HEARTBEAT, f"{time.time():.0f}")
            except Exception:  # a store busy or briefly unreachable: the next beat renews it, well before STALE_S
                pass

    thread = threading.Thread(target=beat, name="lease-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
