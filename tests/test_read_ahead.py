"""``subscription.read_ahead``: websocket-client reading the socket in chunks, whatever the chunking on the wire.

A bare websocket server on 127.0.0.1 sends text frames of every length class (7-bit, 16-bit and 64-bit
lengths) cut at random places: many frames in one write, a frame in one-byte writes, a cut inside the
header, with pauses that make the client's reads time out mid-frame. Every frame must come out whole and in
order, the same as without read-ahead.
"""
import base64
import hashlib
import random
import socket
import struct
import threading
import time

import pytest
import websocket

from gapless.subscription import read_ahead


def frame(payload):
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


class ChoppyServer:
    """Accepts one websocket client, then writes ``data`` in the given chunks, pausing where told."""

    def __init__(self, chunks):
        self.chunks = chunks  # [(bytes, pause seconds after)]
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return "ws://127.0.0.1:%d/" % self.listener.getsockname()[1]

    def _serve(self):
        connection, _ = self.listener.accept()
        with connection:
            request = b""
            while b"\r\n\r\n" not in request:
                request += connection.recv(4096)
            key = [line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key")][0]
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            connection.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                               b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for data, pause in self.chunks:
                connection.sendall(data)
                if pause:
                    time.sleep(pause)
            connection.settimeout(30)
            while connection.recv(4096):  # until the client closes: it has read everything by then
                pass

    def close(self):
        self.listener.close()
        self.thread.join(5)


def chopped(payloads, rng):
    wire = b"".join(frame(p) for p in payloads)
    chunks, i = [], 0
    while i < len(wire):
        size = rng.choice([1, 2, 3, 7, 100, 5000, 20000, 70000])
        chunks.append((wire[i:i + size], 0.06 if rng.random() < 0.03 else 0.0))
        i += size
    return chunks


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ahead", [False, True])
def test_frames_come_out_whole_and_in_order_however_the_wire_is_cut(seed, ahead):
    rng = random.Random(seed)
    payloads = [bytes(rng.choice(b"abcdefgh{}:,0123456789") for _ in range(rng.choice([0, 1, 60, 125, 126, 400,
                                                                                         65535, 65536, 100000])))
                for _ in range(100)]
    server = ChoppyServer(chopped(payloads, rng))
    try:
        ws = websocket.create_connection(server.url, timeout=5, skip_utf8_validation=True, enable_multithread=False)
        if ahead:
            read_ahead(ws)
        ws.settimeout(0.02)  # shorter than the server's pauses: reads time out in the middle of frames
        received, timeouts = [], 0
        deadline = time.monotonic() + 30
        while len(received) < len(payloads) and time.monotonic() < deadline:
            try:
                received.append(ws.recv().encode())
            except websocket.WebSocketTimeoutException:
                timeouts += 1
        ws.shutdown()  # no close handshake: the server only writes
    finally:
        server.close()
    assert received == payloads
    assert timeouts > 0  # the pauses did interrupt reads


def test_read_ahead_asks_the_socket_for_a_chunk_not_for_the_two_header_bytes():
    asked = []

    class Socket:
        frame_buffer = None

    ws = Socket()
    ws.frame_buffer = websocket._abnf.frame_buffer(lambda size: asked.append(size) or frame(b"x" * 10) * 3, True)
    read_ahead(ws)
    assert [ws.frame_buffer.recv_frame().data for _ in range(3)] == [b"x" * 10] * 3
    assert asked == [16384]  # one read served all three frames
