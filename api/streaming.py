"""Run a generation on the worker thread and hand its pieces to an SSE response."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Callable, Iterator

from starlette.responses import StreamingResponse

from api.errors import ApiError, as_api_error, error_body

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(body: Any) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def start(ctx: Any, produce: Callable[[Any], Iterator[tuple[str, Any]]]) -> tuple[Any, AsyncIterator[Any], Any]:
    """Run ``produce(cancel)`` (a generator of events) on the worker. Returns the first event (an
    error in it is raised here, before any byte is sent, so it gets its HTTP status), an async
    iterator over the following events, and the cancel token (set it when the client leaves)."""
    from assistant.generation import CancelToken

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = CancelToken()

    def put(item: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def run() -> None:
        try:
            if cancel.cancelled:
                put(("error", ApiError(499, "cancelled")))
                return
            for event in produce(cancel):
                put(event)
        except BaseException as exc:  # noqa: BLE001 - reported to the client
            put(("error", exc))
        finally:
            put(("end", None))

    task = asyncio.ensure_future(ctx.worker.run(run))
    first = await queue.get()
    if first[0] == "error":
        await task
        raise as_api_error(first[1])

    async def rest() -> AsyncIterator[Any]:
        while True:
            item = await queue.get()
            if item[0] == "end":
                return
            yield item

    return first, rest(), cancel


async def events_of(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """``first`` then the rest of a stream's events, ending after its "done" or "error" event."""
    item = first
    while True:
        yield item
        if item[0] in ("done", "error"):
            return
        try:
            item = await rest.__anext__()
        except StopAsyncIteration:
            return


def response(events: AsyncIterator[str], cancel: Any) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for text in events:
                yield text
            yield "data: [DONE]\n\n"
        finally:
            cancel.cancel()  # no-op when finished; stops generation when the client went away

    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)


def error_event(exc: BaseException) -> str:
    err = as_api_error(exc)
    return sse(error_body(err.message, err.type, err.code, err.param))
