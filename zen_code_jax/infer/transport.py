"""The completions server's transport: uvicorn (h11) with whole-request deadlines.

uvicorn gives the HTTP/1.1 parsing (h11: chunked bodies, GET bodies, pipelining, keep-alive
in sync after any reply), a real listen backlog, and `limit_concurrency` (503 past that
many connections or in-flight requests). Two things it lacks are added here, on its h11
protocol class (`DeadlineH11Protocol`):

- A whole-request deadline: from the first byte of a request (or the connection's
  opening) until its body has fully arrived, at most `deadline_s`. uvicorn times out only
  idle keep-alive connections, so a client trickling one header or body byte every few
  seconds would hold a connection (and a `limit_concurrency` place) forever. Past the
  deadline the client gets `408` and the connection closes; a connection that never sent
  a byte is closed silently.
- Half-close: a client that sends its request and then shuts down its writing side
  (`shutdown(SHUT_WR)`, e.g. `nc -N`) still gets its response. uvicorn treats end-of-file
  as a disconnect; here an EOF after a complete request keeps the connection open for
  writing and closes it after the response. TCP cannot tell a half-close from a close
  until a write fails: a route that streams marks its request (`EOF_IS_DISCONNECT`), and
  there an EOF is the editor's cancel (slots free at the next scheduler turn); for a
  whole-body reply the connection is probed with interim `100 Continue` responses, so a
  closed client is still found (and its job cancelled) within a round trip or two.

`serve_in_thread` runs the server on its own thread and event loop, on a socket bound and
listening before it returns (port 0 picks a free port, known at once).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from zen_code_jax.infer.protocol import APIError
from zen_code_jax.infer.responses import dumps

# Set (`request.state`) by a route whose client, once it has sent its request, sends
# nothing more and reads until the end (a stream): an EOF there is a disconnect, and
# cancels at once. Elsewhere an EOF after a complete request is a half-close.
EOF_IS_DISCONNECT = "eof_is_disconnect"
# Set by the protocol in the same `request.state` when the client sent EOF after its
# request: a route that decides to stream only then treats it as the cancel.
GOT_EOF = "got_eof"


# When a half-closed connection is probed (see `_probe`): covers round trips up to ~1.5 s.
PROBE_DELAYS_S = (0.05, 0.1, 0.2, 0.4, 0.8)


def timeout_response(deadline_s: float) -> bytes:
    """The raw 408 sent when a request's headers and body did not arrive in time."""
    body = dumps(
        APIError(
            408,
            f"The request (headers and body) did not arrive within {deadline_s:g} s; "
            "send it at once (or raise --read_timeout_s).",
            code="request_timeout",
        ).body()
    ).encode()
    return (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def deadline_protocol(deadline_s: float, on_timeout: Callable[[], None]) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the whole-request deadline and half-close (see the
    module docstring); `on_timeout` is called for every 408 (metrics)."""

    class DeadlineH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _half_closed = False
        _got_bytes = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and self.conn.their_state is not h11.DONE:
                self._arm()  # the first bytes of the next request on a kept-alive connection
            self._got_bytes = True
            super().data_received(data)
            if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED):
                self._disarm()  # the whole request arrived in time

        def eof_received(self) -> bool | None:  # type: ignore[override]
            complete = self.conn.their_state is h11.DONE
            cycle = self.cycle
            if cycle is not None and cycle.scope.get("state", {}).get(EOF_IS_DISCONNECT):
                return None  # a stream: the client closed, cancel it now
            if cycle is not None and not cycle.response_complete and complete:
                self._half_closed = True
                cycle.scope.get("state", {})[GOT_EOF] = True
                self._probe(PROBE_DELAYS_S)
                return True  # keep our writing side open: the response is still coming
            return None  # asyncio closes the transport: uvicorn's disconnect

        def _probe(self, delays: tuple[float, ...]) -> None:
            """Tell a half-close from a close: write an interim `100 Continue` (which any
            HTTP/1.1 client skips) now and after each delay. A closed peer answers the
            first write with a reset, so a later one fails and uvicorn sees the
            disconnect (the job is cancelled); a half-closed peer reads them and waits."""
            cycle = self.cycle
            if cycle is None or cycle.response_started or self.transport.is_closing():
                return
            try:
                interim = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
                self.transport.write(self.conn.send(interim))
            except h11.LocalProtocolError:
                return
            if delays:
                self.loop.call_later(delays[0], self._probe, delays[1:])

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._half_closed and not self.transport.is_closing():
                self.transport.close()
            elif self.conn.their_state is not h11.DONE and self._deadline is None:
                self._arm()  # a pipelined request is already partly buffered

        def _arm(self) -> None:
            self._disarm()
            self._got_bytes = False
            self._deadline = self.loop.call_later(deadline_s, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            cycle = self.cycle if self.conn.their_state is not h11.IDLE else None
            if cycle is not None and cycle.response_started:
                if not cycle.response_complete:
                    return  # answered early (e.g. 401), the body still arriving: let it end
            elif self._got_bytes or cycle is not None:
                self.transport.write(timeout_response(deadline_s))
                on_timeout()
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True  # the app's pending body read ends now
                cycle.message_event.set()
            self.transport.close()

    return DeadlineH11Protocol


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket (SO_REUSEADDR; `backlog` queued connects before accept)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class ThreadedServer:
    """A uvicorn server on its own thread, on an already listening socket."""

    def __init__(self, app: Any, sock: socket.socket, config: dict[str, Any]):
        self.sock = sock
        log = bool(os.environ.get("ZEN_SERVER_LOG"))  # an access log line per request
        self.config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="info" if log else "warning",
            access_log=log,
            **config,
        )
        self.server = uvicorn.Server(self.config)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="http", daemon=True
        )
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sock.close()


@dataclass(frozen=True)
class ConnectionLimits:
    """How many connections the server takes and keeps (the server's flags)."""

    backlog: int = 2048  # connects queued by the kernel before accept
    max_connections: int = 512  # open connections + in-flight requests; past it 503
    keep_alive_s: float = 5.0  # an idle kept-alive connection closes after this
