"""A broken agent for the tests: on a unix socket, it greets like an agent (declaring a 0.1 s
interval), then sends one real sample over and over, as fast as the socket takes it.

    python -m tests.fakes.flooder SOCKET COUNT_FILE

Every 0.2 s it writes how many samples it has sent to COUNT_FILE.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import msgspec

from agents.protocol import PROTOCOL_VERSION, Hello, encode
from tests.fakes.simnode import Node


async def serve(path: str, count_file: Path) -> None:
    node = Node("flood", gpus=8)
    sample, _ = node.tick()
    sent = 0

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        hello = Hello(
            proto=PROTOCOL_VERSION, software="flooder", peer="agent", node="flood", interval_s=0.1
        )
        writer.write(encode(hello))
        await reader.readline()  # the console's hello
        writer.write(encode(node.inventory()))
        seq = sample.seq
        while True:
            seq += 1
            writer.write(encode(msgspec.structs.replace(sample, seq=seq)))
            sent += 1
            await writer.drain()

    async def report() -> None:
        while True:
            count_file.write_text(str(sent))  # noqa: ASYNC240 a few bytes, a test fake
            await asyncio.sleep(0.2)

    server = await asyncio.start_unix_server(client, path)
    async with server:
        await report()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], Path(sys.argv[2])))
