"""A receiver that answers a byte at a time: each byte in time for any socket timeout, the answer never."""

from __future__ import annotations

import socket
import threading


class TricklingReceiver:
    """Takes one request, then answers a byte at a time, each well within any socket timeout."""

    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Padding: " + b"." * 40 + b"\r\n\r\n"

    def __init__(self, every: float = 0.25) -> None:
        self.every = every
        self.requests = 0
        self.finished = threading.Event()  # the whole answer went out
        self.cut = threading.Event()  # the client closed the connection mid-answer
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self._server.accept()
        with conn:
            conn.recv(65536)
            self.requests += 1
            for byte in self.ANSWER:
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    self.cut.set()
                    return
                if self.cut.wait(self.every):
                    return
            self.finished.set()

    def close(self) -> None:
        self.cut.set()
        self._server.close()
