"""The one channel between the training process and the runner: framed messages on a socket.

A frame is an 8-byte prefix (header length, payload length), a JSON header (an object) and a
payload of raw bytes. The training process asks (``hello``, ``batch``, ``done``, ``failed``);
the runner answers each ``batch`` with a header and, when it serves one, the batch's bytes.
Both sides are this module's code, but only the runner's side is trusted: it bounds every
length it reads and validates every header (:mod:`autoresearch.runner.broker`).
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any

PREFIX = struct.Struct("!II")  # header bytes, payload bytes
MAX_HEADER = 64 * 1024  # a header is a few small fields; anything longer is a broken peer


class ChannelClosed(Exception):
    """The other side closed the channel (or a deadline passed while reading)."""


def send(sock: socket.socket, header: dict[str, Any], payload: bytes | memoryview = b"") -> None:
    data = json.dumps(header, separators=(",", ":")).encode()
    sock.sendall(PREFIX.pack(len(data), len(payload)) + data)
    if len(payload):
        sock.sendall(payload)


def read_exact(sock: socket.socket, n: int, deadline: float | None = None,
               into: memoryview | None = None) -> bytes | memoryview:
    """``n`` bytes (into ``into`` when given); ChannelClosed on EOF or past ``deadline``
    (time.monotonic())."""
    buf = into if into is not None else memoryview(bytearray(n))
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChannelClosed("deadline")
            sock.settimeout(left)
        try:
            k = sock.recv_into(buf[got:n], n - got)
        except TimeoutError as e:
            raise ChannelClosed("deadline") from e
        except OSError as e:
            raise ChannelClosed(str(e)) from e
        if k == 0:
            raise ChannelClosed("closed")
        got += k
    return buf if into is not None else bytes(buf)


def read_header(sock: socket.socket, deadline: float | None = None,
                max_payload: int = 0) -> tuple[dict[str, Any], int]:
    """The next frame's header and its payload's length (not read yet). A header that is not a
    JSON object, or a payload longer than ``max_payload``, raises ValueError."""
    size, payload = PREFIX.unpack(read_exact(sock, PREFIX.size, deadline))
    if size > MAX_HEADER:
        raise ValueError(f"a message header of {size:,} bytes (at most {MAX_HEADER:,})")
    if payload > max_payload:
        raise ValueError(f"a message payload of {payload:,} bytes (at most {max_payload:,})")
    header = json.loads(bytes(read_exact(sock, size, deadline)))
    if not isinstance(header, dict):
        raise ValueError("a message header that is not a JSON object")
    return header, payload
