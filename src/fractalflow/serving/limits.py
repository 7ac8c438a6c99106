"""BodyLimit: request bodies over a size get 413 before they are held in memory."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """ASGI middleware: a request whose ``Content-Length`` is over ``max_bytes`` is answered
    413 without reading its body; a chunked body that grows past it is cut off with 413 (the
    endpoint reading it gets an HTTPException). ``on_refused`` counts each refusal."""

    def __init__(self, app: ASGIApp, max_bytes: int, on_refused: Callable[[], None]):
        self.app, self.max_bytes, self.on_refused = app, max_bytes, on_refused

    def problem(self) -> str:
        return f"the request body is over {self.max_bytes} bytes, the most this server reads"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            self.on_refused()
            return await JSONResponse({"detail": self.problem()}, status_code=413)(scope, receive, send)
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                self.on_refused()
                raise HTTPException(413, detail=self.problem())
            return message

        await self.app(scope, limited, send)
