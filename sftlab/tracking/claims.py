"""The lease protocol that computes each cached result once: ``Claims.claim``.

Parallel trials that need the same data profile or baseline (same stage, same cache key) must not
all compute it, and none may wait forever on one that died. The only shared state is the
tracking server, so a claim is an MLflow run, and the protocol is:

1. **Cached?** A FINISHED run with the stage and key is the result: reuse it.
2. **Candidate.** Otherwise create a RUNNING run tagged with the stage and key.
3. **Settle.** Wait ``settle_s`` (longer than a create takes to commit), so concurrent candidates
   all see each other, while later ones see an earlier claim; then the earliest RUNNING candidate
   (start time, then run id) owns the work. The owner settles and looks once more before it
   works, in case a slow create committed late with an earlier start time, and yields to it. A
   candidate that does not own the work deletes its run (which stays RUNNING, but deleted: a
   waiter never waits on it) and waits for the owner.
4. **Heartbeat.** The owner's run carries a counter tag (``TAG_HEARTBEAT``), renewed every
   ``HEARTBEAT_S`` (10 s) by a daemon thread until the tracker finishes the run. A counter, not
   a timestamp: waiters on other machines need no common clock.
5. **Wait, or take over.** Waiters poll the owner's run. Once it is no longer RUNNING (finished,
   failed, or a deleted candidate) they start again at 1: reuse its result, or compete anew after
   a failure, which therefore never poisons the key. If its beat has not changed for
   ``STALE_AFTER_S`` (60 s of silence: its process was SIGKILLed or OOM-killed, its pod
   vanished), or it is still RUNNING after ``wait_s``, they close it as FAILED (``abandoned:
   why``) and compete again. A slow answer (the tracking server down and retried) does not count
   as silence.
6. **Cleanup.** An interrupt (Ctrl-C, SIGTERM) inside ``claim``, before the caller holds the
   claim, stops the heartbeat and deletes the candidate, so the next claimant owns the work at
   once. After ``claim`` returns, the owner must finish its run, also on failure:
   ``Tracker.owning`` does that for a block, and ``Claims.release`` (``Tracker.release_claims``)
   closes every claim still held when a stage stops in between.

``Claims`` works through the tracker that owns it (``runs.Tracker``), seen here as a
``RunStore``, so this module does not import ``runs``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from typing import TYPE_CHECKING, Protocol

from sftlab.tracking.tags import TAG_CACHE_KEY, TAG_HEARTBEAT, TAG_STAGE

if TYPE_CHECKING:
    from mlflow.client import MlflowClient
    from mlflow.entities import Run

# A claim's owner beats every HEARTBEAT_S; waiters take over a claim whose beat has not changed
# for STALE_AFTER_S (its process was SIGKILLed, OOM-killed, or its pod vanished).
HEARTBEAT_S, STALE_AFTER_S = 10.0, 60.0


class RunStore(Protocol):
    """What the protocol needs of its tracker."""

    client: MlflowClient

    def cached(self, stage: str, cache_key: str) -> Run | None: ...

    def create_run(self, stage: str, name: str, tags: Mapping[str, str] | None = None) -> str: ...

    def search(self, filter_string: str) -> Iterable[Run]: ...

    def finish(self, run_id: str, ok: bool = True, error: str | None = None) -> None: ...


class Claims:
    """The claims one tracker takes and holds: one heartbeat thread per claim it owns."""

    def __init__(self, tracker: RunStore):
        self.tracker = tracker
        self._heartbeats: dict[str, threading.Event] = {}

    def claim(
        self,
        stage: str,
        cache_key: str,
        name: str,
        tags: Mapping[str, str],
        wait_s: float = 6 * 3600,
        poll_s: float = 2.0,
        settle_s: float = 1.0,
        stale_after_s: float = STALE_AFTER_S,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> tuple[Run | None, str | None]:
        """Reuse a cached result, or own the computation of it: ``(finished_run, None)`` or ``(None, run_id)``.

        The protocol is in the module's docstring. The owner must ``finish`` its run, also on failure.
        """
        tracker = self.tracker
        while True:
            done = tracker.cached(stage, cache_key)
            if done is not None:
                return done, None
            mine = tracker.create_run(stage, name, {TAG_CACHE_KEY: cache_key, **tags})
            try:
                done, owner = self._contend(stage, cache_key, mine, settle_s)
                if owner == mine:
                    self._start_heartbeat(mine, heartbeat_s)
                    return None, mine
            except BaseException:
                # Interrupted (Ctrl-C, SIGTERM) before the caller holds the claim: a candidate left
                # RUNNING would hold up every later claimant until it counted as stale.
                self.stop_heartbeat(mine)
                with suppress(Exception):
                    tracker.client.delete_run(mine)
                raise
            if done is not None:
                return done, None
            why = self._wait_for(owner, wait_s, poll_s, stale_after_s)
            if why is not None:
                tracker.finish(owner, ok=False, error=f"abandoned: {why}")

    def held(self) -> list[str]:
        """The claims this tracker owns and has not finished."""
        return list(self._heartbeats)

    def release(self, error: str) -> None:
        """Close as FAILED every claim still held.

        For a stage that fails or is interrupted between taking a claim and entering ``owning``.
        """
        for run_id in self.held():
            self.tracker.finish(run_id, ok=False, error=error)

    def stop_heartbeat(self, run_id: str) -> None:
        """The claim ends (its run is finished, or the candidate is withdrawn): stop beating."""
        beating = self._heartbeats.pop(run_id, None)
        if beating is not None:
            beating.set()

    def _contend(self, stage: str, cache_key: str, mine: str, settle_s: float) -> tuple[Run | None, str]:
        """Settle the candidate ``mine``: ``(finished_run, "")``, or ``(None, owner)`` of the work.

        ``mine`` is deleted unless it is the owner.
        """
        time.sleep(settle_s)
        done = self.tracker.cached(stage, cache_key)  # an owner may have finished while we settled
        owner = ""
        if done is None:
            owner = self._earliest_claim(stage, cache_key)
            if owner == mine:
                # A create that committed late can carry an earlier start time: look once more
                # before working, and yield to such a claim rather than compute twice.
                time.sleep(settle_s)
                owner = self._earliest_claim(stage, cache_key)
                if owner == mine:
                    return None, mine
        self.tracker.client.delete_run(mine)
        return done, owner

    def _start_heartbeat(self, run_id: str, every_s: float) -> None:
        """Renew the claim's heartbeat tag from a daemon thread until ``stop_heartbeat(run_id)``.

        A beat is a counter, not a timestamp, so waiters on other machines need no common clock.
        """
        stop = threading.Event()
        self._heartbeats[run_id] = stop

        def beat() -> None:
            count = 0
            while True:
                with suppress(Exception):  # a missed beat (tracking outage) is retried next time
                    self.tracker.client.set_tag(run_id, TAG_HEARTBEAT, str(count))
                count += 1
                if stop.wait(every_s):
                    return

        threading.Thread(target=beat, name=f"heartbeat-{run_id[:8]}", daemon=True).start()

    def _wait_for(self, owner: str, wait_s: float, poll_s: float, stale_after_s: float) -> str | None:
        """Wait while ``owner`` holds its claim: None once released, else why it counts as abandoned."""
        deadline = time.monotonic() + wait_s
        last_beat: str | None = None
        last_change = time.monotonic()
        while True:
            asked = time.monotonic()
            run = self.tracker.client.get_run(owner)
            # A candidate that yielded deleted its run, which stays RUNNING: it holds nothing.
            if run.info.status != "RUNNING" or run.info.lifecycle_stage == "deleted":
                return None
            now = time.monotonic()
            beat = run.data.tags.get(TAG_HEARTBEAT)
            # A slow answer (tracking server down and retried) says nothing about the owner.
            if beat != last_beat or now - asked > stale_after_s / 3:
                last_beat, last_change = beat, now
            if now - last_change > stale_after_s:
                return f"no heartbeat for {stale_after_s:g} s (its process or pod is gone)"
            if now > deadline:
                return f"still running after the {wait_s:g} s wait limit"
            time.sleep(poll_s)

    def _earliest_claim(self, stage: str, cache_key: str) -> str:
        active = self.tracker.search(
            f"tags.`{TAG_STAGE}` = '{stage}' AND tags.`{TAG_CACHE_KEY}` = '{cache_key}' "
            "AND attributes.status = 'RUNNING'"
        )
        return min(active, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id
