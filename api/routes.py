"""The other endpoints: models, embeddings, legacy completions, memories, feedback, health."""

from __future__ import annotations

import base64
import time
import uuid
from types import SimpleNamespace
from typing import Any, Iterator

from fastapi import APIRouter, Depends, Request

from api import streaming
from api.chat import finish_reason, usage
from api.deps import Ctx, ctx
from api.errors import ApiError, unsupported
from api.schemas import CompletionRequest, EmbeddingRequest, FeedbackRequest, MemoryRequest, parse

router = APIRouter()
DEFAULT_EMBEDDER_ID = "sentence-transformers/all-MiniLM-L6-v2"


@router.get("/health")
async def health(c: Ctx = Depends(ctx)):
    return {"status": "ok", "model_loaded": c.assistant.engine_loaded}


# ---------------------------------------------------------------------------- models
def _pack_model(p: Any) -> dict[str, Any]:
    return {"id": p.id, "object": "model", "created": 0, "owned_by": p.source, "name": p.name,
            "description": p.description, "version": p.version}


@router.get("/v1/models")
async def models(c: Ctx = Depends(ctx)):
    packs = await c.worker.run(lambda: c.assistant.catalog.packs)
    return {"object": "list", "data": [_pack_model(p) for p in sorted(packs.values(), key=lambda p: p.id)]}


def _embedder_names(c: Ctx) -> set[str]:
    name = c.settings.memory.embedder
    full = DEFAULT_EMBEDDER_ID if name == "default" else name
    return {"default", full, full.rstrip("/").rsplit("/", 1)[-1]}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, c: Ctx = Depends(ctx)):
    packs = await c.worker.run(lambda: c.assistant.catalog.packs)
    if model_id in packs:
        return _pack_model(packs[model_id])
    if model_id in _embedder_names(c) - {"default"}:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "embedder",
                "description": "the memory's sentence embedder (POST /v1/embeddings)"}
    raise ApiError(404, f"the model {model_id!r} does not exist: use a pack id ({', '.join(sorted(packs))}) "
                        "or the embedder for /v1/embeddings", "invalid_request_error", "model_not_found", "model")


# ---------------------------------------------------------------------------- embeddings
@router.post("/v1/embeddings")
async def embeddings(request: Request, c: Ctx = Depends(ctx)):
    """The memory's embedder, as OpenAI's embeddings (L2-normalised vectors)."""
    req = await parse(request, EmbeddingRequest, check_fields=True)
    if req.user is not None:
        c.user(request, req.user)
    packs = c.assistant.catalog.packs
    if req.model not in _embedder_names(c) and req.model not in packs:
        raise ApiError(404, f"the embedding model {req.model!r} does not exist: use "
                            f"{sorted(_embedder_names(c) - {'default'})[0]!r} (or a pack id)",
                       code="model_not_found", param="model")
    texts = [req.input] if isinstance(req.input, str) else list(req.input)
    if not texts or len(texts) > 2048 or any(not isinstance(t, str) or not t for t in texts):
        raise ApiError(400, "input must be a non-empty string or a list of 1-2048 non-empty strings", param="input")

    def run() -> tuple[Any, list[list[float]], int]:
        from memory import embedder as embedder_mod

        emb = embedder_mod.get(c.settings.memory.embedder)
        if req.dimensions is not None and req.dimensions != emb.dim:
            raise unsupported("dimensions", f"this embedder gives {emb.dim} dimensions only")
        vectors = emb.embed(texts)
        tokenizer = getattr(getattr(emb, "_model", None), "tokenizer", None)
        count = sum(len(tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts) if tokenizer else 0
        return emb, vectors, count

    emb, vectors, count = await c.worker.run(run)

    def encode(v: list[float]) -> Any:
        if req.encoding_format == "float":
            return v
        import numpy as np

        return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")

    return {"object": "list", "model": emb.id,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": count, "total_tokens": count}}


# ---------------------------------------------------------------------------- legacy completions
def _select_adapter(c: Ctx, user: str, pack: Any) -> None:
    """The user's live adapter for the pack, chosen by the chat's own rule (one owner)."""
    from assistant.core import Chat

    # Chat's rule on stand-ins: it reads only the chat's user, pack and use_adapter and the reply's adapter
    chat: Any = SimpleNamespace(user=user, pack=pack, use_adapter=True)
    reply: Any = SimpleNamespace(adapter=None)
    Chat._select_adapter(chat, c.assistant.engine, reply)


def legacy_logprobs(recorder: Any, start: int, offset: int) -> dict[str, Any] | None:
    """The legacy completions' logprobs object for the tokens recorded from ``start`` on."""
    if recorder is None:
        return None
    entries = recorder.entries[start:]
    tokens = [recorder.token_text(e["token_id"]) for e in entries]
    offsets, at = [], offset
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": tokens, "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{recorder.token_text(t): v for t, v in e["top"]} for e in entries],
            "text_offset": offsets}


@router.post("/v1/completions")
async def completions(request: Request, c: Ctx = Depends(ctx)):
    """Plain text continuation of ``prompt`` (no chat template, no memory, not journalled), with
    the user's adapter for the pack. ``logprobs`` (0-5) gives the legacy logprobs object."""
    from assistant import grammar

    req = await parse(request, CompletionRequest, check_fields=True)
    for name, ok in (("n", req.n == 1), ("echo", not req.echo), ("suffix", req.suffix is None),
                     ("best_of", req.best_of in (None, 1))):
        if not ok:
            raise unsupported(name, "only its default")
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if len(prompts) != 1 or not prompts[0]:
        raise unsupported("prompt", "one non-empty string per request")
    pack = c.pack(req.model)
    user = c.user(request, req.user)
    cid = "cmpl-" + uuid.uuid4().hex[:24]
    created = int(time.time())

    def begin(cancel: Any = None) -> tuple[Any, Any]:
        engine = c.assistant.engine
        _select_adapter(c, user, pack)
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        params = c.assistant.params(pack, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                                    max_new_tokens=req.max_tokens or 16, stop=stop or None)
        recorder = grammar.LogprobRecorder(engine, req.logprobs) if req.logprobs is not None else None
        ids = engine.tokenizer(prompts[0], add_special_tokens=False)["input_ids"]
        return engine.stream(ids, params, cancel=cancel, constraint=recorder), recorder

    def body(choice: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"id": cid, "object": "text_completion", "created": created, "model": req.model,
                "choices": [{"index": 0, "logprobs": None, "finish_reason": None} | choice], **extra}

    if not req.stream:
        def run() -> tuple[Any, Any]:
            gen, recorder = begin()
            gen.collect()
            return gen, recorder

        gen, recorder = await c.worker.run(run)
        return body({"text": gen.text, "finish_reason": finish_reason(gen.stats.finish_reason),
                     "logprobs": legacy_logprobs(recorder, 0, 0)}, usage=usage(gen.stats))

    return await _stream_completion(c, req, begin, body)


async def _stream_completion(c: Ctx, req: CompletionRequest, begin: Any, body: Any):
    def produce(cancel: Any) -> Iterator[tuple[str, Any]]:
        gen, recorder = begin(cancel)
        seen, offset = 0, 0
        for piece in gen:
            lp = legacy_logprobs(recorder, seen, offset)
            seen = len(recorder.entries) if recorder is not None else 0
            offset += len(piece)
            yield ("text", body({"text": piece, "logprobs": lp}))
        yield ("done", gen)

    first, rest, cancel = await streaming.start(c, produce)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    template = body({})

    async def events():
        async for kind, value in streaming.events_of(first, rest):
            if kind == "text":
                yield streaming.sse(value)
            elif kind == "done":
                yield streaming.sse(body({"text": "", "finish_reason": finish_reason(value.stats.finish_reason)}))
                if include_usage:
                    yield streaming.sse({"id": template["id"], "object": "text_completion",
                                         "created": template["created"], "model": req.model, "choices": [],
                                         "usage": usage(value.stats)})
            else:  # an error after the stream started: reported in-band
                yield streaming.error_event(value)

    return streaming.response(events(), cancel)


# ---------------------------------------------------------------------------- memories
def _memory_json(m: Any) -> dict[str, Any]:
    out = {"id": m.id, "object": "memory", "text": m.text, "kind": m.kind, "created": m.created, "pack": m.pack or None}
    if m.similarity is not None:
        out["similarity"] = round(m.similarity, 4)
    return out


@router.get("/v1/memories")
async def list_memories(request: Request, user: str | None = None, q: str | None = None, k: int = 10,
                        c: Ctx = Depends(ctx)):
    uname = c.user(request, user)
    if not 1 <= k <= 100:
        raise ApiError(422, "k must be between 1 and 100", code="invalid_value", param="k")

    def run() -> list[Any]:
        store = c.store(uname)
        return store.search(q, k=k) if q else store.list()

    found = await c.worker.run(run)
    return {"object": "list", "user": uname, "data": [_memory_json(m) for m in found]}


@router.post("/v1/memories", status_code=201)
async def add_memory(request: Request, c: Ctx = Depends(ctx)):
    req = await parse(request, MemoryRequest)
    uname = c.user(request, req.user)
    if not req.text.strip():
        raise ApiError(400, "the memory text is empty", param="text")

    def run() -> Any:
        from memory.extract import attribute_of

        return c.store(uname).add(req.text, req.kind, attribute=attribute_of(req.text))

    return _memory_json(await c.worker.run(run))


@router.delete("/v1/memories/{memory_id}")
async def forget_memory(request: Request, memory_id: str, user: str | None = None, c: Ctx = Depends(ctx)):
    uname = c.user(request, user)
    await c.worker.run(lambda: c.store(uname).forget([memory_id]))
    return {"id": memory_id, "object": "memory.deleted", "deleted": True}


# ---------------------------------------------------------------------------- feedback
@router.post("/v1/feedback")
async def feedback(request: Request, c: Ctx = Depends(ctx)):
    from starlette.concurrency import run_in_threadpool

    req = await parse(request, FeedbackRequest)
    if req.rating is None and req.correction is None:
        raise ApiError(400, "give a rating (+1 or -1), a correction, or both", param="rating")
    if req.rating is not None and req.rating not in (1, -1):
        raise ApiError(422, "rating must be 1 or -1", code="invalid_value", param="rating")
    if req.correction is not None and not req.correction.strip():
        raise ApiError(400, "the correction is empty", param="correction")
    cid = req.completion_id.strip()
    uname = c.user(request, req.user)
    turn_id = cid[len("chatcmpl-"):] if cid.startswith("chatcmpl-") else cid

    def run() -> dict[str, Any]:
        journal = c.assistant.journal(uname)
        turn = journal.turn(turn_id)
        if turn is None:
            raise ApiError(404, f"no completion {cid!r} in {uname}'s journal", code="not_found", param="completion_id")
        if req.rating is not None:
            journal.rate(turn_id, req.rating)
        if req.correction is not None:
            journal.correct(turn_id, req.correction)
        c.assistant.notify_turn(uname, turn.pack)
        return {"object": "feedback", "completion_id": f"chatcmpl-{turn_id}", "turn_id": turn_id, "user": uname,
                "rating": req.rating, "correction": req.correction is not None}

    return await run_in_threadpool(run)
