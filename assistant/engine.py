"""The model engine: the only place that runs transformers generation.

A hand-written decode loop instead of ``generate()``: it streams text as tokens arrive, checks a
cancel flag every token, reuses a conversation's KV cache across turns (only the tokens after
the longest common prefix are prefilled), and may run prefill and decode in different dtypes,
because on CPUs the fastest dtype differs per phase (prefill is compute-bound, decode
memory-bound) and differs per machine: see ``calibrate``.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from assistant import batched
from assistant.calibration import cached_calibration, calibrate, read_quantized, write_quantized
from assistant.errors import ContextTooLongError, ModelError, PromptError
from assistant.generation import (
    CancelToken,
    Generation,
    GenParams,
    GenStats,
    KVSession,
    template_for,
)
from assistant.sampling import (
    Detokenizer,
    cast_cache,
    copy_cache,
    crop_cache,
    penalize,
    sample,
    set_threads,
)

if TYPE_CHECKING:
    from assistant.decode import Decoder, StaticKV

# OpenMP threads that spin while waiting lose badly when the cores are shared (a small int8 matmul
# went from 0.14 ms to several ms with 2 spinning threads on a busy 2-core machine; see
# docs/speed.md). libgomp reads this once, when torch is first imported, so it only takes effect
# when this module is imported before torch; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

def _dtype(name: str):
    """The torch dtype of a phase's activations and KV cache ("int8" weights work in bfloat16)."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.bfloat16}[name]


class Engine:
    """A loaded causal LM with a tokenizer; one generation at a time (``lock``)."""

    # Set by from_settings (an engine built directly from a model has none of them).
    load_seconds: float
    convert_seconds: float
    folder: Path

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "model",
        prefill_dtype: str = "float32",
        decode_dtype: str = "float32",
        context_tokens: int = 2048,
        fast_decode: bool = True,
        quantized: dict[str, Any] | None = None,
    ) -> None:
        """``fast_decode``: decode int8 with the hand-written step where the architecture allows;
        ``quantized``: its int8 weights as ``Decoder.state()`` gave them (the disk cache)."""
        import torch

        self.name = name
        self.tokenizer = tokenizer
        self.prefill_dtype = prefill_dtype
        self.decode_dtype = decode_dtype
        self.lock = threading.RLock()
        self.decode_threads = 0  # torch threads while decoding (0: as for prefill); see calibration
        self._models: dict[str, Any] = {}
        self._int8_layers: dict[str, Any] = {}  # parameter name -> Int8Linear of the int8 model
        if prefill_dtype == "int8":
            raise ModelError("model.prefill_dtype cannot be int8 (int8 weights are for decoding): "
                             "use float32, bfloat16 or auto")
        model.eval()
        self._models[prefill_dtype] = model.to(_dtype(prefill_dtype))
        self.config = model.config
        max_pos = getattr(model.config, "max_position_embeddings", None) or context_tokens
        self.context_tokens = min(context_tokens, int(max_pos))
        self._decoder: Decoder | None = None  # the hand-written int8 decode step (assistant/decode.py), if it fits
        self._kv: StaticKV | None = None  # its preallocated KV buffer, reused by every reply
        self.decode_path = "transformers"
        if decode_dtype == "int8":
            self._setup_int8(model, fast_decode, quantized)
        elif decode_dtype != prefill_dtype:
            self._models[decode_dtype] = copy.deepcopy(model).to(_dtype(decode_dtype))
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = template_for(tokenizer, name)
        self.eos_ids = self._end_of_turn_ids(model)
        self._torch = torch
        # The adapter merged into the weights (None: the base model); see set_adapter.
        self.adapter_id: str | None = None
        self._base_weights: dict[str, Any] = {}
        self._generating = 0
        # The prompt KV of the last conversation that started from scratch (prefill dtype): a new
        # conversation shares at least the system prompt with it, so that part is not prefilled
        # again. Valid for one adapter state only.
        self._shared = KVSession()

    def _setup_int8(self, model: Any, fast_decode: bool, quantized: dict[str, Any] | None) -> None:
        from assistant import decode, int8

        if not int8.available():
            raise ModelError("this torch build has no int8 weight matmul for the CPU: "
                             "set model.decode_dtype to float32, bfloat16 or auto")
        why_not = decode.unsupported(model.config) if fast_decode else "fast decode switched off"
        self.decode_path = "int8 step" if why_not is None else f"transformers int8 ({why_not})"
        if why_not is None:
            # The decode step reads the prefill model's embedding and quantizes its linears:
            # no second copy of the model, only the int8 weights.
            self._decoder = decode.Decoder(model, self.context_tokens, quantized=quantized)
            self._int8_layers = self._decoder.layers
            self._kv = self._decoder.new_kv()
            return
        quantized_model = copy.deepcopy(model).to(_dtype("int8"))
        self._int8_layers = int8.quantize(quantized_model)
        self._models["int8"] = quantized_model

    # ----------------------------------------------------------------- construction
    @classmethod
    def load(cls, settings: Any, progress: Callable[[str], None] | None = None) -> "Engine":
        """Load the configured model (converting a GGUF once) with the per-phase dtypes."""
        from assistant import model_store

        say = progress or (lambda _m: None)
        set_threads(settings.model.threads)
        resolved = model_store.resolve(settings.model.name, say)
        say(f"loading {resolved.name}")
        template = getattr(settings.model, "chat_template", "")
        t0 = time.perf_counter()
        prefill, decode = settings.model.prefill_dtype, settings.model.decode_dtype
        known = cached_calibration(resolved.folder) if "auto" in (prefill, decode) else None
        if known is not None:
            prefill = known["prefill"] if prefill == "auto" else prefill
            decode = known["decode"] if decode == "auto" else decode
        decode_threads = known.get("decode_threads", 0) if known else 0
        # Load straight in the prefill dtype when it is known (no float32 copy on the way).
        model, tokenizer = model_store.load_folder(resolved.folder, prefill if prefill != "auto" else "float32")
        if "auto" in (prefill, decode):
            best = calibrate(model, resolved.folder, say)
            prefill = best["prefill"] if prefill == "auto" else prefill
            decode = best["decode"] if decode == "auto" else decode
            decode_threads = best.get("decode_threads", 0)
        if template:
            path = Path(template).expanduser()
            if not path.is_file():
                raise ModelError(f"model.chat_template: {path} is not a file; give a Jinja chat template file or leave it empty")
            tokenizer.chat_template = path.read_text()
        quantized = read_quantized(resolved.folder) if decode == "int8" else None
        engine = cls(
            model,
            tokenizer,
            name=resolved.name,
            prefill_dtype=prefill,
            decode_dtype=decode,
            context_tokens=settings.model.context_tokens,
            quantized=quantized,
        )
        if engine._decoder is not None and quantized is None:
            write_quantized(resolved.folder, engine._decoder.state())
        # threads the user set apply to both phases; otherwise decode uses what was measured faster
        engine.decode_threads = 0 if settings.model.threads else int(decode_threads)
        engine.load_seconds = time.perf_counter() - t0
        engine.convert_seconds = resolved.seconds
        engine.folder = resolved.folder
        on = f", {engine.decode_threads} thread(s)" if engine.decode_threads else ""
        say(f"ready: prefill {prefill}, decode {decode} ({engine.decode_path}{on})")
        return engine

    def _end_of_turn_ids(self, model: Any) -> set[int]:
        ids: set[int] = set()
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        for value in (gen_eos, getattr(model.config, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid >= 0:
                ids.add(tid)
        return ids

    @property
    def model(self) -> Any:
        """The weights used for prefill (float32 unless configured otherwise)."""
        return self._models[self.prefill_dtype]

    def models(self) -> list[Any]:
        return list(self._models.values())

    # ----------------------------------------------------------------- tokens
    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=add_generation_prompt, tokenize=False
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ----------------------------------------------------------------- generation
    def stream(
        self,
        prompt_ids: Sequence[int],
        params: GenParams,
        session: KVSession | None = None,
        cancel: CancelToken | None = None,
        constraint: Any = None,
    ) -> Generation:
        """Generate a reply to ``prompt_ids`` (already rendered), streaming text chunks.

        With a ``session``, its cached KV is reused for the longest common prefix and the
        session holds the conversation's cache afterwards. A ``constraint`` (see
        ``assistant.grammar``) masks the logits before each sample (``mask``) and sees each
        sampled token (``accept``, True when its grammar is complete: the reply ends there).
        """
        ids = list(prompt_ids)
        if not ids:
            raise PromptError("the prompt is empty: type a message first")
        if len(ids) + 1 > self.context_tokens:
            raise ContextTooLongError(
                f"the prompt is {len(ids)} tokens but the model's context is {self.context_tokens}: "
                "shorten the message (or raise model.context_tokens if the model allows it)"
            )
        stats = GenStats(prompt_tokens=len(ids))
        return Generation(self._run(ids, params, session or KVSession(), cancel, stats, constraint), stats)

    def _run(
        self, ids: list[int], params: GenParams, session: KVSession, cancel: CancelToken | None, stats: GenStats,
        constraint: Any = None,
    ) -> Iterator[str]:
        torch = self._torch
        with self.lock, torch.inference_mode(), self._busy():
            t0 = time.perf_counter()
            cache, start = self._reuse(session, ids)
            fresh = cache is not session.cache  # not continuing this conversation's own cache
            stats.cached_tokens = start
            session.ids, session.cache = ids[:start], cache  # valid even if we stop early
            session.adapter = self.adapter_id
            budget = min(params.max_new_tokens, self.context_tokens - len(ids))
            generator = None
            if params.temperature > 0:
                generator = torch.Generator().manual_seed(params.seed if params.seed is not None else int(time.time_ns() % 2**31))
            logits = self._forward(self.prefill_dtype, ids[start:], cache)
            session.ids = list(ids)
            if fresh:
                self._shared = KVSession(list(ids), copy_cache(cache, len(ids), self.config), self.adapter_id)
            int8_step = self._decoder
            fast = int8_step is not None
            if self.decode_dtype != self.prefill_dtype and not fast:
                cast_cache(cache, _dtype(self.decode_dtype))
            decoder = Detokenizer(self.tokenizer, params.stop)
            produced: list[int] = []
            stats.finish_reason = "length"
            t_first = None
            kv: StaticKV | None = None  # the fast path's KV buffer once decoding started
            prefill_threads = torch.get_num_threads()
            if self.decode_threads and self.decode_threads != prefill_threads:
                torch.set_num_threads(self.decode_threads)
            try:
                while True:
                    if cancel is not None and cancel.cancelled:
                        stats.finish_reason = "cancelled"
                        break
                    token = self._pick(logits, ids + produced, params, generator, constraint)
                    if t_first is None:
                        t_first = time.perf_counter()
                        stats.ttft_s = t_first - t0
                    if token in self.eos_ids:
                        stats.finish_reason = "stop"
                        break
                    produced.append(token)
                    complete = constraint is not None and constraint.accept(token)
                    stats.completion_tokens = len(produced)
                    text, hit_stop = decoder.push(token)
                    if text:
                        yield text
                    if hit_stop or complete:
                        stats.finish_reason = "stop"
                        break
                    if len(produced) >= budget:
                        break
                    if cancel is not None and cancel.cancelled:
                        stats.finish_reason = "cancelled"
                        break
                    if int8_step is not None:
                        if kv is None:
                            kv = self._kv
                            assert kv is not None  # made with the decoder (_setup_int8)
                            kv.load(cache, len(session.ids), len(ids) + budget)
                        logits = int8_step.step(token, kv)
                    else:
                        logits = self._forward(self.decode_dtype, [token], cache)
                    session.ids.append(token)
            finally:
                if torch.get_num_threads() != prefill_threads:
                    torch.set_num_threads(prefill_threads)
                if kv is not None:  # the conversation keeps the decoded tokens' KV too
                    session.cache = kv.to_cache(self.config, _dtype(self.prefill_dtype))
                    session.ids = session.ids[: kv.length]
            tail = decoder.flush()
            if tail:
                yield tail
            if t_first is not None:
                stats.decode_s = time.perf_counter() - t_first

    @staticmethod
    def _pick(logits: Any, context: list[int], params: GenParams, generator: Any, constraint: Any = None) -> int:
        """The one sampling step: penalties, then a constraint's mask (structured output), then sampling."""
        if params.repetition_penalty != 1.0:
            logits = penalize(logits, context[-params.penalty_window :], params.repetition_penalty)
        if constraint is not None:
            logits = constraint.mask(logits)
        return sample(logits, params, generator)

    def clear_shared_prefix(self) -> None:
        """Forget the shared prompt prefix: the next new conversation prefills from scratch
        (cold-start measurements; outputs exactly as a fresh process gives them)."""
        with self.lock:
            self._shared = KVSession()

    @property
    def generating(self) -> bool:
        """True while a reply is being generated (background training yields to it)."""
        return self._generating > 0

    def _busy(self):
        engine = self

        class _Busy:
            def __enter__(self_inner):
                engine._generating += 1

            def __exit__(self_inner, *_):
                engine._generating -= 1

        return _Busy()

    def _reuse(self, session: KVSession, ids: list[int]) -> tuple[Any, int]:
        """The cache to prefill ``ids`` into and how many of them it already holds: the session's
        own (longest common prefix), else a copy of the shared prompt prefix, else an empty one.
        A cache computed with other weights (another adapter merged) is never reused."""
        from transformers import DynamicCache

        def common_prefix(held: list[int]) -> int:
            n = 0
            for a, b in zip(held, ids, strict=False):
                if a != b:
                    break
                n += 1
            return min(n, len(ids) - 1)  # prefill at least one token to get logits

        if session.cache is not None and session.ids and session.adapter == self.adapter_id:
            common = common_prefix(session.ids)
            if common > 0:
                crop_cache(session.cache, common)
                cast_cache(session.cache, _dtype(self.prefill_dtype))
                return session.cache, common
        shared = self._shared
        if shared.cache is not None and shared.adapter == self.adapter_id:
            common = common_prefix(shared.ids)
            if common >= 16:
                return copy_cache(shared.cache, common, self.config), common
        return DynamicCache(config=self.config), 0

    def _forward(self, dtype_name: str, ids: list[int], cache: Any):
        torch = self._torch
        model = self._models[dtype_name]
        out = model(
            input_ids=torch.tensor([ids], dtype=torch.long),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[0, -1].float()

    # ----------------------------------------------------------------- scoring
    def score(self, messages: Sequence[dict[str, str]], answer: str) -> tuple[float, int]:
        """Sum of log-probabilities of ``answer`` as the assistant's reply, and its token count."""
        prompt = self.render(messages)
        full = self.render(list(messages) + [{"role": "assistant", "content": answer}], add_generation_prompt=False)
        if full[: len(prompt)] != prompt:  # template quirk: fall back to plain concatenation
            full = prompt + self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        full = full[: self.context_tokens]
        labels = [-100] * len(prompt) + full[len(prompt):]
        with self.lock:
            nll, count = batched.token_nll(self.model, [(full, labels)])
        return -nll, count

    def forced_logits(self, prefix: Sequence[int], forced: Sequence[int]) -> Any:
        """The logits the sampler would have seen before each token of ``forced`` after ``prefix``
        (one row per forced token): text the answer copies, scored as if the model produced it."""
        torch = self._torch
        ids = list(prefix) + list(forced)
        if not prefix or len(ids) > self.context_tokens:
            raise PromptError(f"cannot score {len(forced)} tokens after a {len(prefix)}-token prompt "
                              f"in a {self.context_tokens}-token context")
        with self.lock, torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0].float()
        return logits[len(prefix) - 1 : len(ids) - 1]

    # ----------------------------------------------------------------- adapters
    def set_adapter(self, adapter_id: str | None, deltas: dict[str, Any] | None) -> None:
        """Merge LoRA ``deltas`` (parameter name -> weight delta, float32) into the weights.

        Merging keeps decoding as fast as the base model. The base tensors that an adapter
        touches are kept, so ``set_adapter(None, None)`` restores the base model exactly.
        """
        with self.lock:
            float_params = dict(self.model.named_parameters())
            if deltas:
                missing = [name for name in deltas if name not in float_params]
                if missing:
                    raise ModelError(f"adapter {adapter_id} does not fit this model (no {missing[0]})")
            for name, base in self._base_weights.items():
                self._load_weight(name, base)
            if deltas:
                for name in deltas:
                    if name not in self._base_weights:
                        self._base_weights[name] = float_params[name].detach().float().clone()
                for name, delta in deltas.items():
                    self._load_weight(name, self._base_weights[name] + delta.float())
            self.adapter_id = adapter_id if deltas else None
            self._shared = KVSession()

    def _load_weight(self, name: str, weight: Any) -> None:
        """Put a float32 ``weight`` into parameter ``name`` of every copy of the model (the int8
        decode weights are re-quantized from it)."""
        for dtype_name, model in self._models.items():
            if dtype_name != "int8":
                param = dict(model.named_parameters())[name]
                param.data.copy_(weight.to(param.dtype))
        if name in self._int8_layers:
            self._int8_layers[name].load_float(weight)
