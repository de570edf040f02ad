"""``server.helper_threads``: which threads ``serve`` puts under SCHED_BATCH, and the setting itself."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from omnirelay import helper_threads
from omnirelay.config import ConfigError, load_settings

pytestmark = pytest.mark.skipif(not helper_threads.supported(), reason="needs Linux's SCHED_BATCH and /proc")


@pytest.fixture
def helper() -> Iterator[int]:
    """A thread of this process that waits until the test ends: its native id."""
    release = threading.Event()
    ready = threading.Event()
    ids: list[int] = []

    def wait() -> None:
        ids.append(threading.get_native_id())
        ready.set()
        release.wait()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    assert ready.wait(5)
    yield ids[0]
    release.set()
    thread.join(5)


def test_other_threads_lists_every_thread_of_the_process_but_the_one_kept(helper: int) -> None:
    me = threading.get_native_id()
    others = helper_threads.other_threads(me)
    assert helper in others
    assert me not in others


def test_deprioritize_sets_sched_batch_on_the_threads_named_and_no_other(helper: int) -> None:
    me = threading.get_native_id()
    assert os.sched_getscheduler(helper) == os.SCHED_OTHER
    done = helper_threads.deprioritize([helper])
    assert done == helper_threads.Deprioritized(batched=1, refused=0)
    assert os.sched_getscheduler(helper) == os.SCHED_BATCH
    assert os.sched_getscheduler(me) == os.SCHED_OTHER
    # Its nice value, hence its share of the CPU, is kept.
    assert os.sched_getparam(helper).sched_priority == 0


def test_a_thread_that_has_ended_counts_as_refused_and_the_rest_are_still_set(helper: int) -> None:
    ended: list[int] = []
    thread = threading.Thread(target=lambda: ended.append(threading.get_native_id()))
    thread.start()
    thread.join()
    # join() returns once Python is done with the thread, a moment before the kernel's task is
    # gone (CI once set the policy on it in that moment): wait for /proc to drop it.
    gone = helper_threads.TASKS / str(ended[0])
    deadline = time.monotonic() + 5
    while gone.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert not gone.exists()
    done = helper_threads.deprioritize([ended[0], helper])
    assert done == helper_threads.Deprioritized(batched=1, refused=1)
    assert os.sched_getscheduler(helper) == os.SCHED_BATCH


def test_normal_changes_nothing_and_an_unknown_choice_is_refused(helper: int) -> None:
    assert helper_threads.apply("normal", threading.get_native_id()) is None
    assert os.sched_getscheduler(helper) == os.SCHED_OTHER
    with pytest.raises(ValueError, match="expected one of batch, normal"):
        helper_threads.apply("idle", threading.get_native_id())


def test_the_default_is_batch_and_an_unknown_choice_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings("development").server.helper_threads == "batch"
    monkeypatch.setenv("OMNIRELAY_SERVER__HELPER_THREADS", "normal")
    assert load_settings("development").server.helper_threads == "normal"
    monkeypatch.setenv("OMNIRELAY_SERVER__HELPER_THREADS", "idle")
    with pytest.raises(ConfigError, match=r"helper_threads = 'idle': expected one of batch, normal"):
        load_settings("development")
