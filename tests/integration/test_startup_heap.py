"""``serve`` keeps what start-up built out of the garbage collector's passes, and no start-up garbage."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.integration.serve import env, start

pytestmark = pytest.mark.subprocess


def test_serve_freezes_its_start_up_heap() -> None:
    server = start("--profile", "development")
    assert server.stop() == 0
    found = re.search(r"start-up heap left out of garbage collection passes: (\d+) objects", server.stderr)
    assert found is not None, server.stderr
    # Modules, settings, descriptors and the wired app: tens of thousands of objects.
    assert int(found.group(1)) > 10_000


def test_garbage_left_by_start_up_is_collected_not_frozen() -> None:
    # In a process of its own: freezing the test runner's heap would keep it for good.
    script = """
import gc, weakref
from omnirelay import cli

class Node:
    pass

a, b = Node(), Node()
a.other, b.other = b, a
left = weakref.ref(a)
kept = Node()
del a, b
gc.disable()  # so only the freeze's own pass can collect the cycle
cli._freeze_startup_heap()
assert left() is None, "a start-up cycle was frozen instead of collected"
assert gc.get_freeze_count() > 0
assert not any(o is kept for o in gc.get_objects()), "a live start-up object was left to the passes"
print("ok", gc.get_freeze_count())
"""
    done = subprocess.run(
        [sys.executable, "-c", script], env=env(), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")
