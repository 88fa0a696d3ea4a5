"""When received bytes arrived: the kernel's receive stamps, on the monotonic clock.

Owns the timestamp source of :mod:`relaygate.load.client`: whether this platform stamps
received bytes in the kernel (``SO_TIMESTAMPNS``, Linux, 64-bit), switching it on for a
socket, the layout of the stamp in ``recvmsg``'s ancillary data, and the CLOCK_REALTIME ->
CLOCK_MONOTONIC offset that makes a kernel stamp comparable with ``time.monotonic_ns()``.
The client's reader applies these inline on every read (one read per SSE event under load,
so no function call there); the trust limits it applies are defined here.
"""

from __future__ import annotations

import socket
import struct
import sys
import time

__all__ = [
    "ANC_BYTES",
    "MAX_KERNEL_AGE_NS",
    "NS_PER_S",
    "OFFSET_READ_MAX_NS",
    "SO_TIMESTAMPNS",
    "TIMESPEC",
    "enable_kernel_stamps",
    "kernel_stamps_supported",
    "realtime_offset",
]

NS_PER_S = 1_000_000_000
# SO_TIMESTAMPNS (= SCM_TIMESTAMPNS) is 35 on every Linux architecture Python runs on;
# the stdlib does not export the constant.
SO_TIMESTAMPNS: int | None = (
    getattr(socket, "SO_TIMESTAMPNS", 35) if sys.platform.startswith("linux") else None
)
TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux
ANC_BYTES = socket.CMSG_SPACE(TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0
MAX_KERNEL_AGE_NS = 10_000_000_000  # a kernel stamp older than this is not trusted
OFFSET_READ_MAX_NS = 20_000  # a realtime/monotonic pair read further apart is not used


def kernel_stamps_supported() -> bool:
    """True when this platform can stamp received bytes in the kernel (Linux, 64-bit)."""
    return SO_TIMESTAMPNS is not None and ANC_BYTES > 0 and struct.calcsize("@l") == 8


def enable_kernel_stamps(sock: socket.socket) -> None:
    """Ask the kernel to stamp every segment ``sock`` receives (no-op where unsupported)."""
    if SO_TIMESTAMPNS is not None:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def realtime_offset() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC in ns, from the closest of a few paired reads."""
    best = None
    offset = 0
    for _ in range(5):
        before = time.monotonic_ns()
        real = time.time_ns()
        after = time.monotonic_ns()
        if best is None or after - before < best:
            best = after - before
            offset = real - ((before + after) >> 1)
    return offset
