"""The stop request as plain data: callbacks run once, in threads; the signal path takes
no lock (a signal may interrupt the thread that holds it)."""

from __future__ import annotations

import signal
import threading

from distetl.model.chunks import Chunk
from distetl.engine.execute import BatchJob
from distetl.engine.stopping import StopSignal


def test_callbacks_run_once_whenever_they_are_registered():
    stop = StopSignal()
    seen: list[str] = []
    done = threading.Event()
    stop.on_stop(lambda: seen.append("before"))
    stop.request(signal.SIGTERM)
    stop.request(signal.SIGINT)  # a second request changes nothing
    stop.on_stop(lambda: (seen.append("after"), done.set()))
    assert done.wait(5)
    threading.Event().wait(0.2)
    assert sorted(seen) == ["after", "before"] and stop.name == "SIGTERM"


def test_a_request_while_the_lock_is_held_does_not_wait_for_it():
    stop = StopSignal()
    fired = threading.Event()
    stop.on_stop(fired.set)
    with stop._lock:  # as if the signal interrupted on_stop in this very thread
        stop.request(signal.SIGINT)
        assert stop.stopped
    assert fired.wait(5)


def test_two_stages_batches_with_the_same_first_key_have_distinct_ids(prefect_api):
    # Imported here, after the session's API is set: importing Prefect earlier would fix
    # its settings without PREFECT_API_URL for the rest of the session.
    from distetl.engine.flow import _batch_id

    chunk = Chunk("date=2013-01-01", {"date": "2013-01-01"})
    x = BatchJob(None, [(chunk, "/x/a")], "/out", stage="x")
    y = BatchJob(None, [(chunk, "/y/a")], "/out", stage="y")
    assert _batch_id(x) != _batch_id(y)
