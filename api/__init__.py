"""The local API: an OpenAI-compatible server, on loopback by default.

Endpoints (every one but ``/health`` needs ``Authorization: Bearer KEY``; see ``auth``):

    GET    /v1/models, /v1/models/{id}  the domain packs, as models (and the embedder)  (any valid key)
    POST   /v1/chat/completions       chat, JSON mode/Schema, tools, logprobs; SSE or not (scope chat)
    POST   /v1/completions            legacy text completion                           (scope chat)
    POST   /v1/embeddings             the memory's embedder                            (scope chat)
    GET    /v1/memories?user=&q=&k=   list, or search by meaning                       (scope memory:read)
    POST   /v1/memories               {text, kind, user}                               (scope memory:write)
    DELETE /v1/memories/{id}?user=    forget one memory                                (scope memory:write)
    POST   /v1/feedback               {completion_id, rating|correction, user}         (scope feedback)

Layout: ``app`` (the factory and ``serve``), ``auth`` (keys, users, audit, loopback), ``deps``
(shared state through ``Depends``), ``schemas`` (request bodies, unsupported fields), ``errors``
(one error type, one status table), ``chat`` and ``routes`` (the routers), ``structured``
(response_format and tools), ``streaming`` (SSE).

Errors are OpenAI-style ``{"error": {"message", "type", "param", "code"}}``. The audit log
(``api/audit.log``, JSON lines, 0600) records app, user, method, endpoint, status, time and
duration; never message text or query strings.
"""

from __future__ import annotations

from api.app import make_app, serve
from api.auth import is_loopback

__all__ = ["make_app", "serve", "is_loopback"]
