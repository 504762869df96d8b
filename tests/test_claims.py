"""The lease protocol (``sftlab.tracking.claims``) with real MLflow (sqlite): racing claimants compute
each cached result once, a failed or dead owner is taken over, an interrupted claimant leaves nothing
RUNNING behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftlab.tracking.runs import TAG_ERROR, Tracker
from sftlab.tracking.tags import TAG_HEARTBEAT


def test_concurrent_claims_compute_a_cached_result_once(tmp_path: Path) -> None:
    """Parallel trials sharing a profile/baseline: exactly one computes it, the others reuse it."""
    from concurrent.futures import ThreadPoolExecutor

    tracker = Tracker(f"sqlite:///{tmp_path / 'claims.db'}", "claims")
    computed: list[str] = []

    def worker(i: int) -> str:
        cached, run_id = tracker.claim("profile", "k1", f"w{i}", {}, poll_s=0.05, settle_s=0.5)
        if cached is not None:
            return cached.info.run_id
        assert run_id is not None
        computed.append(run_id)
        tracker.log_metrics(run_id, {"profile/ppl": 3.0})
        tracker.finish(run_id)
        return run_id

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(worker, range(4)))
    assert len(computed) == 1 and set(results) == set(computed)
    assert [r.info.status for r in tracker.search("tags.`sftlab.stage` = 'profile'")] == ["FINISHED"]

    # An owner that finishes while a later candidate is still settling: the candidate reuses it.
    import threading
    import time

    owning = threading.Event()

    def quick_owner() -> None:
        _, owner = tracker.claim("profile", "k4", "owner", {}, settle_s=0)
        owning.set()
        time.sleep(0.2)
        tracker.finish(owner)

    thread = threading.Thread(target=quick_owner)
    thread.start()
    assert owning.wait(30)
    cached, late = tracker.claim("profile", "k4", "late", {}, settle_s=0.5, poll_s=0.05)
    thread.join()
    assert late is None and cached is not None and cached.info.run_name == "owner"
    assert len(list(tracker.search("tags.`sftlab.cache_key` = 'k4'"))) == 1

    # A failed owner does not poison the key: the next claimant owns it anew.
    _, failing = tracker.claim("baseline", "k2", "a", {}, settle_s=0)
    assert failing is not None
    tracker.finish(failing, ok=False, error="boom")
    cached, retry = tracker.claim("baseline", "k2", "b", {}, settle_s=0)
    assert cached is None and retry not in (None, failing)
    # A claim left RUNNING past the wait limit (its pod died) is abandoned and taken over.
    _, stale = tracker.claim("weights", "k3", "a", {}, settle_s=0)
    _, taker = tracker.claim("weights", "k3", "b", {}, wait_s=0.2, poll_s=0.05, settle_s=0)
    assert taker not in (None, stale)
    assert tracker.client.get_run(stale).info.status == "FAILED"


@pytest.mark.slow
@pytest.mark.soak
def test_soak_many_claimants_on_many_keys_compute_each_once(tmp_path: Path) -> None:
    """12 trials racing for 10 shared results in shuffled orders: each result is computed once and
    every claimant gets that one run."""
    import random
    import time
    from concurrent.futures import ThreadPoolExecutor

    tracker = Tracker(f"sqlite:///{tmp_path / 'claims.db'}", "claims")
    keys = [f"k{i}" for i in range(10)]

    def trial(seed: int) -> dict[str, str]:
        got = {}
        for key in random.Random(seed).sample(keys, len(keys)):
            cached, run_id = tracker.claim("profile", key, f"t{seed}", {}, poll_s=0.05, settle_s=0.5)
            if cached is None:
                assert run_id is not None
                time.sleep(0.2)  # the work
                tracker.finish(run_id)
            else:
                run_id = cached.info.run_id
            got[key] = run_id
        return got

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(trial, range(12)))
    finished = list(tracker.search("tags.`sftlab.stage` = 'profile' AND attributes.status = 'FINISHED'"))
    assert sorted(r.data.tags["sftlab.cache_key"] for r in finished) == sorted(keys)  # once each
    assert all(result == results[0] for result in results)


def test_a_claim_never_waits_on_an_owner_that_yielded(tmp_path: Path) -> None:
    """Under load two candidates can disagree on the owner: one saw the other before it yielded (and
    deleted its run, which stays RUNNING). Waiting on that run would hang until the 6 h limit; the
    claimant must compete again and own the work."""

    class StaleView(Tracker):
        stale: list = []

        def search(self, filter_string: str, order_by: list[str] | None = None, page_size: int = 1000):  # type: ignore[override]
            fresh = list(super().search(filter_string, order_by, page_size))
            return self.stale.pop() + fresh if self.stale and "RUNNING" in filter_string else fresh

    tracker = StaleView(f"sqlite:///{tmp_path / 'claims.db'}", "claims")
    yielded = tracker.create_run("profile", "yielded", {"sftlab.cache_key": "k"})
    tracker.stale.append([tracker.client.get_run(yielded)])  # what the claimant saw before it was deleted
    tracker.client.delete_run(yielded)
    cached, owner = tracker.claim("profile", "k", "claimant", {}, settle_s=0, poll_s=0.01, wait_s=30)
    assert cached is None and owner not in (None, yielded)
    assert tracker.client.get_run(yielded).info.status == "RUNNING"  # deleted runs keep their status


def test_a_claim_whose_owner_died_is_taken_over_once_its_heartbeat_stops(tmp_path: Path) -> None:
    """An owner in another process keeps its claim while it beats, however long it works; once it
    is SIGKILLed (OOM killer, lost pod) a waiter takes over after the stale limit, not 6 hours."""
    import signal
    import subprocess
    import sys
    import threading

    db = f"sqlite:///{tmp_path / 'claims.db'}"
    owner_script = (
        "import sys, time; from sftlab.tracking.runs import Tracker; "
        "t = Tracker(sys.argv[1], 'claims'); "
        "_, run_id = t.claim('profile', 'k', 'owner', {}, settle_s=0, heartbeat_s=0.2); "
        "print(run_id, flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", owner_script, db], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        owner = proc.stdout.readline().strip()
        tracker = Tracker(db, "claims")
        outcome: list[tuple] = []
        waiter = threading.Thread(
            target=lambda: outcome.append(
                tracker.claim("profile", "k", "waiter", {}, settle_s=0, poll_s=0.1, stale_after_s=3)
            ),
        )
        waiter.start()
        waiter.join(timeout=6)  # twice the stale limit: a live owner keeps its claim
        assert waiter.is_alive() and tracker.client.get_run(owner).info.status == "RUNNING"
        assert int(tracker.client.get_run(owner).data.tags[TAG_HEARTBEAT]) > 10
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    waiter.join(timeout=60)
    assert not waiter.is_alive()
    ((cached, taken),) = outcome
    assert cached is None and taken not in (None, owner)
    dead = tracker.client.get_run(owner)
    assert dead.info.status == "FAILED" and dead.data.tags[TAG_ERROR].startswith("abandoned: no heartbeat for 3 s")


@pytest.mark.parametrize("phase", ["settling", "owning"])
def test_an_interrupt_inside_claim_leaves_no_running_candidate(tmp_path: Path, phase: str) -> None:
    """Ctrl-C while a claimant settles (before it knows whether it owns the work), or just as it
    wins (its heartbeat running, the caller not yet holding the claim): its candidate run is gone,
    so the next claimant owns the work at once instead of waiting for a stale heartbeat."""
    import signal
    import subprocess
    import sys
    import time

    db = f"sqlite:///{tmp_path / 'claims.db'}"
    setup = "import sys, time; from sftlab.tracking.runs import Tracker; t = Tracker(sys.argv[1], 'claims'); "
    if phase == "settling":
        script = setup + "t.claim('profile', 'k', 'interrupted', {}, settle_s=30)"
    else:  # widen the window between winning and returning, where the interrupt must land
        script = setup + (
            "start = t.claims._start_heartbeat; t.claims._start_heartbeat = lambda *a: (start(*a), time.sleep(30)); "
            "t.claim('profile', 'k', 'interrupted', {}, settle_s=0)"
        )
    tracker = Tracker(db, "claims")
    proc = subprocess.Popen(
        [sys.executable, "-c", script, db], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not list(tracker.search("attributes.status = 'RUNNING'")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert "KeyboardInterrupt" in err and proc.returncode != 0
    assert not list(tracker.search("attributes.status = 'RUNNING'"))
    cached, run_id = tracker.claim("profile", "k", "next", {}, settle_s=0, wait_s=5, stale_after_s=60)
    assert cached is None and run_id is not None
    tracker.finish(run_id)
