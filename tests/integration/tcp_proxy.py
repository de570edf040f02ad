"""A loopback TCP proxy that can play a server restart: cut every connection, refuse new ones, come back.

It runs in a process of its own (``python -m tests.integration.tcp_proxy HOST PORT``), so how fast
it forwards depends neither on the test's event loop nor on its GIL, both kept busy by a load
test's callers. The test drives it with ``TcpProxy``: one command a line on the child's stdin
("refuse", "cut", "accept", "stats"), one JSON line of counters in answer.

While refusing it still accepts at the socket level (its port stays its own: no rebinding race
with other processes) but resets each new connection at once, before a byte is forwarded, which
a client sees as a server that is not there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ProxyStats:
    accepted: int  # connections forwarded to the upstream
    refused: int  # connections reset while refusing (or when the upstream could not be reached)
    cut: int  # forwarded connections cut so far
    last_cut: int  # forwarded connections the last "cut" found


class TcpProxy:
    """The test's handle on a proxy process; ``start()`` it and point a client at ``port``."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self.port = 0

    async def start(self) -> int:
        self.port = await asyncio.to_thread(self._start)
        return self.port

    def _start(self) -> int:
        host, port = self._upstream
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.tcp_proxy", host, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        return int(json.loads(self._read_line())["port"])

    async def refuse(self) -> ProxyStats:
        """Reset every new connection from now on, until ``accept()``."""
        return await self._command("refuse")

    async def cut(self) -> ProxyStats:
        """Reset every forwarded connection, both ways (``last_cut`` says how many there were)."""
        return await self._command("cut")

    async def accept(self) -> ProxyStats:
        """Forward new connections again."""
        return await self._command("accept")

    async def stats(self) -> ProxyStats:
        return await self._command("stats")

    async def close(self) -> None:
        process = self._process
        if process is None:
            return
        self._process = None
        assert process.stdin is not None
        assert process.stdout is not None
        with contextlib.suppress(OSError):
            process.stdin.close()  # EOF: the proxy stops
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
        process.stdout.close()

    async def _command(self, command: str) -> ProxyStats:
        return await asyncio.to_thread(self._exchange, command)

    def _exchange(self, command: str) -> ProxyStats:
        with self._lock:
            assert self._process is not None
            assert self._process.stdin is not None
            self._process.stdin.write(command + "\n")
            self._process.stdin.flush()
            answer = json.loads(self._read_line())
        return ProxyStats(answer["accepted"], answer["refused"], answer["cut"], answer["last_cut"])

    def _read_line(self) -> str:
        assert self._process is not None
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the proxy process ended (exit code {self._process.poll()})")
        return line


# --- the proxy process ------------------------------------------------------------------------


class _Proxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.refusing = False
        self.accepted = 0
        self.refused = 0
        self.cut_count = 0
        self.last_cut = 0

    def cut(self) -> None:
        pairs = list(self._pairs)
        for client, upstream in pairs:
            _reset(client)
            _reset(upstream)
        self._pairs.clear()
        self.last_cut = len(pairs)
        self.cut_count += len(pairs)

    def stats(self) -> str:
        counters = {"accepted": self.accepted, "refused": self.refused, "cut": self.cut_count}
        return json.dumps({**counters, "last_cut": self.last_cut})

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            self.refused += 1
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            self.refused += 1
            _reset(writer)
            return
        if self.refusing:  # refused while connecting
            self.refused += 1
            _reset(writer)
            _reset(up_writer)
            return
        self.accepted += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            # Either direction ending (EOF, a reset, a cut) ends the connection both ways.
            pumps = [
                asyncio.ensure_future(_pump(reader, up_writer)),
                asyncio.ensure_future(_pump(up_reader, writer)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._pairs.discard(pair)
            _reset(writer)
            _reset(up_writer)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close at once with a TCP reset (SO_LINGER 0), as a dying server's kernel would."""
    transport = writer.transport
    if transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _main(upstream_host: str, upstream_port: int) -> None:
    proxy = _Proxy(upstream_host, upstream_port)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    print(json.dumps({"port": port}), flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command = line.strip()
        if command == "refuse":
            proxy.refusing = True
        elif command == "accept":
            proxy.refusing = False
        elif command == "cut":
            proxy.cut()
        elif command != "stats":
            raise SystemExit(f"tcp_proxy: unknown command {command!r}")
        print(proxy.stats(), flush=True)
    server.close()
    proxy.cut()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], int(sys.argv[2])))
