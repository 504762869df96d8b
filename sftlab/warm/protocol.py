"""The warm server's wire format, shared by the server and its stdlib-only client.

A request is one ``sendmsg`` carrying an 8-byte length and the caller's stdin, stdout and stderr
as file descriptors, then that many bytes of JSON. Replies are JSON lines: ``{"pid": N}`` once the
child runs, ``{"exit": CODE}`` when it ends (negative: killed by that signal), or ``{"refused":
WHY}`` when the caller must start cold instead.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

_LENGTH = struct.Struct("!Q")
MAX_REQUEST = 64 * 2**20
STREAMS = 3  # stdin, stdout, stderr

# Variables read while the server imported its modules: a caller whose values differ would run
# under settings the preloaded libraries did not see, so it starts cold instead.
IMPORT_TIME_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_", "TORCH", "PYTORCH_", "CUDA_")
IMPORT_TIME_NAMES = ("PYTHONPATH", "PYTHONHASHSEED", "LD_PRELOAD", "LD_LIBRARY_PATH", "MPLBACKEND")


def import_time_env(env: dict[str, str]) -> dict[str, str]:
    """The part of an environment the server's preloaded modules depend on."""
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_PREFIXES) or k in IMPORT_TIME_NAMES}


def send_request(sock: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
    body = json.dumps(request).encode()
    socket.send_fds(sock, [_LENGTH.pack(len(body))], fds)
    sock.sendall(body)


def recv_request(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """Read one request; the caller owns (and must close) the returned descriptors."""
    head, fds, _flags, _addr = socket.recv_fds(sock, _LENGTH.size, STREAMS)
    try:
        if len(head) != _LENGTH.size or len(fds) != STREAMS:
            raise ValueError("malformed warm-start request")
        (length,) = _LENGTH.unpack(head)
        if length > MAX_REQUEST:
            raise ValueError(f"warm-start request of {length} bytes")
        body = bytearray()
        while len(body) < length:
            chunk = sock.recv(min(length - len(body), 2**20))
            if not chunk:
                raise ValueError("warm-start request cut short")
            body += chunk
        request = json.loads(body)
        if not isinstance(request, dict):
            raise ValueError("warm-start request is not a JSON object")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return request, fds


def send_reply(sock: socket.socket, reply: dict[str, Any]) -> None:
    sock.sendall(json.dumps(reply).encode() + b"\n")
