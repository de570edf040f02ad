"""The log sink: lines batched on the event loop, written at once where nobody would flush later."""

from __future__ import annotations

import asyncio
import io
import logging
import threading

from omnirelay.telemetry.sink import LineSink, SinkHandler


class CountingStream(io.StringIO):
    """A stream that counts its writes (each a system call on a real stream)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


async def test_lines_on_the_loop_wait_for_the_timer_and_leave_in_one_write() -> None:
    stream = CountingStream()
    sink = LineSink(stream, delay=0.02)
    for i in range(10):
        sink.write(f"line {i}")
    assert stream.getvalue() == ""
    await asyncio.sleep(0.1)
    assert stream.getvalue().splitlines() == [f"line {i}" for i in range(10)]
    assert stream.writes == 1
    sink.flush()


async def test_a_full_buffer_is_written_without_waiting() -> None:
    stream = CountingStream()
    sink = LineSink(stream, delay=60, max_lines=3)
    for i in range(7):
        sink.write(f"l{i}")
    assert stream.getvalue().splitlines() == ["l0", "l1", "l2", "l3", "l4", "l5"]
    sink.flush()
    assert stream.getvalue().splitlines()[-1] == "l6"
    sink.flush()


async def test_an_urgent_line_goes_at_once_after_the_lines_before_it() -> None:
    stream = CountingStream()
    sink = LineSink(stream, delay=60)
    sink.write("first")
    sink.write("warning", urgent=True)
    assert stream.getvalue().splitlines() == ["first", "warning"]
    sink.flush()


async def test_a_line_from_another_thread_is_written_at_once_in_order() -> None:
    stream = CountingStream()
    sink = LineSink(stream, delay=60)
    sink.write("on the loop")
    thread = threading.Thread(target=sink.write, args=("from a thread",))
    thread.start()
    thread.join()
    assert stream.getvalue().splitlines() == ["on the loop", "from a thread"]
    sink.flush()


def test_without_a_running_loop_each_line_is_written_at_once() -> None:
    stream = CountingStream()
    sink = LineSink(stream, delay=60)
    sink.write("a")
    assert stream.getvalue() == "a\n"
    sink.flush()


async def test_flush_after_a_stopped_loop_lets_the_next_loop_arm_its_own_timer() -> None:
    stream = CountingStream()
    sink = LineSink(stream, delay=0.01)

    async def write_and_leave() -> None:
        sink.write("in an earlier loop")

    # A loop that stops before its timer fires: the line stays until flushed.
    other = asyncio.new_event_loop()
    await asyncio.to_thread(other.run_until_complete, write_and_leave())
    other.close()
    sink.flush()
    assert stream.getvalue() == "in an earlier loop\n"
    sink.write("in this loop")
    await asyncio.sleep(0.1)
    assert stream.getvalue().splitlines() == ["in an earlier loop", "in this loop"]
    sink.flush()


async def test_a_broken_stream_never_raises_into_the_caller() -> None:
    stream = CountingStream()
    stream.close()
    sink = LineSink(stream, delay=60)
    sink.write("lost", urgent=True)
    sink.flush()


async def test_the_handler_writes_warnings_at_once_and_info_later() -> None:
    stream = CountingStream()
    handler = SinkHandler(LineSink(stream, delay=60))
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("omnirelay.test_log_sink")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("routine")
        assert stream.getvalue() == ""
        logger.warning("look")
        assert stream.getvalue().splitlines() == ["INFO routine", "WARNING look"]
    finally:
        logger.removeHandler(handler)
        handler.sink.flush()
