"""A request-body size limit for the simulation server: an ASGI middleware that vLLM loads by its import path
(`--middleware zerosearch.body_limit.BodyLimit`, added by `zerosearch.search.server_launch` and
`scripts/launch_simulation_server.sh`).

vLLM's OpenAI server reads and parses a body of any size: its length check refuses an over-long prompt only after
that (a 50 MB body: 0.8 s and +141 MiB), and a field outside the prompt is not bounded at all (a 5 MB `user` field
is served). Here a body over the limit (`ZEROSEARCH_SIM_MAX_BODY_BYTES`, default 2 MiB; a search prompt is a few
kB) is refused with 413 in the OpenAI error shape, by its Content-Length before it is read, or as soon as a streamed
body passes the limit. Bodies under the limit are buffered and handed on unchanged; later `receive()` calls
(disconnect notices, which vLLM uses to abort the generation of a client that gave up) pass through. Only the
standard library: vLLM imports it at start.
"""

from __future__ import annotations

import json
import os

MAX_BODY_BYTES = 2 * 1024 * 1024
ENV = "ZEROSEARCH_SIM_MAX_BODY_BYTES"


class BodyLimit:
    """ASGI middleware: HTTP requests whose body is over `max_body_bytes` get 413."""

    def __init__(self, app, max_body_bytes: int | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes or int(os.environ.get(ENV) or MAX_BODY_BYTES)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await self._refuse(send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                await self._refuse(send)
                return
            more = message.get("more_body", False)
        pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send) -> None:
        msg = (f"request body over {self.max_body_bytes} bytes (the simulation server's limit, {ENV}); "
               f"send a shorter prompt")
        body = json.dumps({"error": {"message": msg, "type": "BadRequestError", "code": 413}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
