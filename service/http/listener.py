"""Stop a listening socket from taking new connections without resetting queued ones.

Closing a listener resets every connection the kernel has completed but the
server has not yet accepted: their clients have already sent a request, and
see it cut without an answer. On Linux, a socket filter that drops every
packet reaching the listener stops new handshakes (a client's SYN goes
unanswered, is retried, and meets a clean "connection refused" once the
listener is closed), while connections already queued are still accepted
and answered. Elsewhere this is a no-op and the close is plain.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import socket
import struct
import sys
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("fusionserve.http")

SO_ATTACH_FILTER = 26  # Linux <asm-generic/socket.h>
#: One classic BPF instruction, ``ret #0``: accept 0 bytes of any packet (drop it).
_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)


def refuse_new_connections(servers: Iterable[Any]) -> int:
    """Filter every listening socket of ``servers`` (asyncio/uvloop servers); returns how many."""
    if not sys.platform.startswith("linux"):
        return 0
    done = 0
    for server in servers:
        for listening in getattr(server, "sockets", None) or ():
            with contextlib.suppress(OSError, ValueError):
                _drop_all(listening.fileno())
                done += 1
    return done


def _drop_all(fd: int) -> None:
    program = ctypes.create_string_buffer(_DROP_ALL)
    fprog = struct.pack("HL", 1, ctypes.addressof(program))  # struct sock_fprog
    dup = socket.socket(fileno=os.dup(fd))  # the filter belongs to the socket, not the descriptor
    try:
        dup.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    finally:
        dup.close()
