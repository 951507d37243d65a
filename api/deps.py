"""Shared state of one app, reached by the routers through ``Depends(ctx)``."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from api.auth import resolve_user
from api.errors import ApiError
from federated.idle import Presence


class Worker:
    """One thread for everything that touches the model, the memory stores or adapters
    (generation is serial anyway: the engine has one lock), so the event loop never blocks and
    requests queue in arrival order. While it works, a SuperNode on this machine (after
    `assistant federate join`) leaves the CPU to it: the busy marker is held."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="assistant-api")
        self.presence = Presence()

    async def run(self, fn: Any, *args: Any) -> Any:
        def call() -> Any:
            with self.presence.generating():
                return fn(*args)

        return await asyncio.get_running_loop().run_in_executor(self.pool, call)


@dataclass
class Ctx:
    assistant: Any
    worker: Worker = field(default_factory=Worker)

    @property
    def settings(self) -> Any:
        return self.assistant.settings

    def user(self, request: Request, name: str | None) -> str:
        """The folder name of the user the request acts for; 403 when the key is not bound to it."""
        return resolve_user(request.state, name, self.settings.chat.user)

    def pack(self, model: str) -> Any:
        packs = self.assistant.catalog.packs
        if model not in packs:
            raise ApiError(404, f"the model {model!r} does not exist: use a pack id ({', '.join(sorted(packs))})",
                           code="model_not_found", param="model")
        return packs[model]

    def store(self, user: str) -> Any:
        store = self.assistant.memory(user)
        if store is None:
            raise ApiError(409, "memory is switched off in the settings (memory.enabled)", code="memory_disabled")
        return store



def ctx(request: Request) -> Ctx:
    return request.app.state.ctx


def scopes(request: Request) -> list[str]:
    return list(getattr(request.state, "scopes", []))
