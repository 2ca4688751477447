"""The few pieces of RFC 6455 the double needs: handshake, server frames, client frames."""
from __future__ import annotations

import base64
import hashlib
import struct

__all__ = ["OP_TEXT", "OP_CLOSE", "OP_PING", "OP_PONG", "accept_key", "frame", "close_frame", "parse_frames"]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """An unmasked, final server frame."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def close_frame(code: int = 1000, reason: str = "") -> bytes:
    """A close frame with a status code and a (truncated) reason."""
    return frame(struct.pack("!H", code) + reason.encode()[:123], OP_CLOSE)


def _unmask(data: bytes, mask: bytes) -> bytes:
    if not data:
        return data
    n = len(data)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


def parse_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Pop every complete (masked) client frame from ``buf``: [(opcode, payload)]."""
    frames = []
    while len(buf) >= 2:
        b0, b1 = buf[0], buf[1]
        n, pos = b1 & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, pos = struct.unpack_from("!H", buf, 2)[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, pos = struct.unpack_from("!Q", buf, 2)[0], 10
        mask = b""
        if b1 & 0x80:
            if len(buf) < pos + 4:
                break
            mask, pos = bytes(buf[pos:pos + 4]), pos + 4
        if len(buf) < pos + n:
            break
        payload = bytes(buf[pos:pos + n])
        del buf[:pos + n]
        frames.append((b0 & 0x0F, _unmask(payload, mask) if mask else payload))
    return frames
