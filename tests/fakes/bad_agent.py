"""Broken agents for the tests, on a unix socket:

python -m tests.fakes.bad_agent flood SOCKET COUNT_FILE
    greets like an agent (declaring a 0.1 s interval), then sends one real sample over
    and over, as fast as the socket takes it; every 0.2 s it writes how many it has sent
    to COUNT_FILE
python -m tests.fakes.bad_agent mute SOCKET
    accepts connections and never sends a byte
python -m tests.fakes.bad_agent greet SOCKET
    greets like an agent, reads the console's hello, then says nothing more
python -m tests.fakes.bad_agent future SOCKET PROTO
    an agent speaking protocol PROTO (say the next minor) that sends, every 0.1 s, a frame type
    and an event kind no version knows yet, each followed by a real sample
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import msgspec

from agents.protocol import PROTOCOL_VERSION, Hello, encode
from tests.fakes.simnode import Node

#: What a later minor might add: a frame type, and an event of a kind nobody knows yet.
FUTURE_FRAMES: tuple[bytes, ...] = (
    b'{"t":"forecast","horizon_s":60}\n',
    b'{"t":"event","seq":1,"ts":1.0,"kind":"fan_fault","message":"a kind from later"}\n',
)


async def serve(mode: str, path: str, count_file: Path | None, proto: str) -> None:
    node = Node("flood", gpus=8)
    sample, _ = node.tick()
    sent = 0

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        if mode == "mute":
            await reader.read()  # until the console gives up and closes
            return
        hello = Hello(proto=proto, software=mode, peer="agent", node="flood", interval_s=0.1)
        writer.write(encode(hello))
        await reader.readline()  # the console's hello
        if mode == "greet":
            await reader.read()
            return
        writer.write(encode(node.inventory()))
        seq = sample.seq
        while mode == "future":
            for frame in FUTURE_FRAMES:
                seq += 1
                writer.write(frame + encode(msgspec.structs.replace(sample, seq=seq)))
                await asyncio.sleep(0.1)
        while True:
            seq += 1
            writer.write(encode(msgspec.structs.replace(sample, seq=seq)))
            sent += 1
            await writer.drain()

    async def report() -> None:
        while True:
            if count_file is not None:  # written whole, then renamed: never read half-written
                part = count_file.with_name(count_file.name + ".part")
                part.write_text(str(sent))
                part.replace(count_file)
            await asyncio.sleep(0.2)

    server = await asyncio.start_unix_server(client, path)
    async with server:
        await report()


if __name__ == "__main__":
    mode, path, extra = sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None
    count = Path(extra) if extra is not None and mode == "flood" else None
    proto = extra if extra is not None and mode == "future" else PROTOCOL_VERSION
    asyncio.run(serve(mode, path, count, proto))
