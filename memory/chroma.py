"""The vector store adapter (the only importer of chromadb): a collection with our contract, and
the rebuild protocol that rewrites it.

Contract: ``similarity`` is cosine similarity in [0, 1] (the collection is created with the
cosine metric; 1 - distance, clipped), higher is better. Each collection records the embedder id
and dimension; opening it with another embedder re-embeds every memory instead of mixing
vectors.

Forgetting rebuilds the store without the forgotten rows in a new folder and swaps it in by
rename: chromadb keeps deleted documents in its SQLite log and free pages, and a rebuild is the
one way through its public API to leave no trace. A crash mid-way leaves the old or the new
folder, never half (see ``chroma_files.recover``).

The rebuilt store is written by a fresh child process that is handed only the kept rows (through
a pipe). chromadb's HNSW library writes its whole, partly uninitialised, ``malloc``ed level-0
buffer to ``data_level0.bin`` (and ``length.bin``) when it *creates* an index, so whatever the
writing process once had on its heap can land in that file; a process that never saw the
forgotten text cannot leak it. chromadb also re-creates an index at every open until it has
persisted it once (its ``index_metadata.pickle``); collections are therefore made with a sync
threshold of 2 and the child makes sure the index is persisted, so later processes (this one
after the swap included) load the index from disk and only ever write initialised elements.
An empty store has no index (reading it creates none); the first add to it goes through the
same child, and an older store with an unpersisted index is rebuilt once when opened.

A damaged index (files whose sizes do not match their header, or one chromadb fails on) is
repaired by rebuilding from the records in ``chroma.sqlite3``, re-embedded.

When the data directory is encrypted, a user's store keeps texts sealed (``memory/sealed.py``):
rows are sealed before they reach chromadb (or the rebuild child) and opened after they leave
it; a plain store is rebuilt sealed when it is opened (and back, while encryption is turned off).
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from assistant import crypto, paths
from assistant.errors import EncryptionError, MemoryStoreError
from memory import sealed
from memory.chroma_files import index_files_sane, index_persisted, index_write, recover, salvage_rows
from memory.types import SCHEMA_VERSION, Memory, from_row

COLLECTION = "memories"
# chromadb persists its HNSW index (and stops re-creating it at each open) once this many log
# records were applied since the last persist; 2 is the smallest value it accepts.
_SYNC_THRESHOLD = 2
_PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The rebuild child's command line: python -c CHILD_CODE <project root> <parent pid>, job on stdin.
CHILD_CODE = (
    "import sys; sys.path.insert(0, sys.argv[1]); from memory.chroma import build_child; build_child(int(sys.argv[2]))"
)


def _stop_client(path: Path) -> None:
    """Release chromadb's cached system for ``path`` (and its open files)."""
    from chromadb.api.client import SharedSystemClient

    registry = getattr(SharedSystemClient, "_identifier_to_system", {})
    for key in [k for k in registry if str(path) in str(k)]:
        system = registry.pop(key)
        try:
            system.stop()
        except Exception:
            pass


def _client(path: Path):
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(
        path=str(path), settings=ChromaSettings(anonymized_telemetry=False, allow_reset=False)
    )


class VectorCollection:
    """A chromadb collection with our contract (cosine, embedder recorded, re-embed on change).

    ``key``/``seal``: the data directory's key and whether rows are kept sealed (None/False:
    plain, as pack knowledge always is)."""

    def __init__(self, root: Path, embedder: Any, key: crypto.DataKey | None = None, seal: bool = False) -> None:
        self.root = root
        self.embedder = embedder
        self.key, self.seal = key, seal
        self._lock = threading.RLock()
        self._indexed = False  # known to have a persisted HNSW index (see ``add``)
        self.notices: list[str] = []
        self.rollbacks = recover(root)  # torn index saves put back (not damage: nothing re-embedded)
        try:
            if not index_files_sane(root):
                raise MemoryStoreError("the vector index files are damaged (sizes do not match their header)")
            with index_write(root):  # opening replays chromadb's log, which may save the index
                self._client = _client(root)
                self._col = self._open()
        except MemoryStoreError as exc:
            if "vector index files are damaged" not in str(exc):
                raise
            self.repair(exc)
        except EncryptionError:
            raise  # sealed rows without their key: not damage, and nothing may be rewritten
        except Exception as exc:
            # Most often a damaged or missing HNSW index: the records themselves (text and
            # metadata, in chroma.sqlite3) are rebuilt into a new index.
            self.repair(exc)
        paths.make_private(root)

    def _notice(self, message: str) -> None:
        self.notices.append(message)
        print(f"[memory] {message}", file=sys.stderr, flush=True)

    def repair(self, cause: BaseException | str) -> int:
        """Rebuild the store from its own records (re-embedded), leaving the damaged index behind."""
        with self._lock:
            self._col = None
            self._client = None
            _stop_client(self.root)
            try:
                rows = salvage_rows(self.root)
            except Exception as exc:
                raise MemoryStoreError(
                    f"the memory store in {self.root} cannot be opened ({type(cause).__name__}: {cause}) "
                    f"and its records cannot be read ({exc}). Move the folder aside to start an empty one, "
                    "or restore it from `assistant memory export`."
                ) from exc
            docs = sealed.plain_documents(rows, self.key)
            rows["embeddings"] = [v for i in range(0, len(docs), 512) for v in self.embedder.embed(docs[i : i + 512])]
            self._rebuild(sealed.to_form(rows, self.key, self.seal))
            self._notice(f"the vector index in {self.root} was damaged ({str(cause)[:120]}); "
                         f"rebuilt it from the store's {len(docs)} records")
            return len(docs)

    def reopen(self) -> None:
        """Drop this process's handles and open the folder again (another process changed it)."""
        with self._lock:
            self._col = None
            self._client = None
            self._indexed = False
            _stop_client(self.root)
            self.rollbacks += recover(self.root)
            try:
                if not index_files_sane(self.root):
                    raise MemoryStoreError("the vector index files are damaged (sizes do not match their header)")
                with index_write(self.root):
                    self._client = _client(self.root)
                    self._col = self._attach()
                    self._col.count()
            except Exception as exc:
                self.repair(exc)

    def _meta(self) -> dict[str, Any]:
        return {
            "hnsw:space": "cosine", "hnsw:sync_threshold": _SYNC_THRESHOLD, "embedder": self.embedder.id,
            "dim": self.embedder.dim, "schema": SCHEMA_VERSION, **({"sealed": True} if self.seal else {}),
        }

    def _attach(self):
        col = self._client.get_or_create_collection(COLLECTION, metadata=self._meta(), embedding_function=None)
        meta = col.metadata or {}
        if meta.get("schema", SCHEMA_VERSION) > SCHEMA_VERSION:
            raise MemoryStoreError(f"{self.root} was written by a newer version; upgrade this program")
        return col

    def _open(self):
        col = self._col = self._attach()
        meta = col.metadata or {}
        if meta.get("embedder") != self.embedder.id or meta.get("dim") != self.embedder.dim:
            self._reembed(col)
        elif bool(meta.get("sealed")) != self.seal:  # encryption turned on (or off): rewrite every row
            rows = self._rows(col, col.get(include=[])["ids"], with_embeddings=True)
            self._rebuild(sealed.to_form(rows, self.key, self.seal), shred=self.seal)
        elif col.count() and not index_persisted(self.root, col):
            # Written before the index was persisted eagerly: have a clean child process create
            # the index, or this process would (with its heap in it) at every open.
            self._rebuild(self._rows(col, col.get(include=[])["ids"], with_embeddings=True))
        return self._col

    def _reembed(self, old) -> None:
        rows = self._rows(old, old.get(include=[])["ids"], with_embeddings=False)
        docs = sealed.plain_documents(rows, self.key)
        rows["embeddings"] = [v for i in range(0, len(docs), 512) for v in self.embedder.embed(docs[i : i + 512])]
        self._rebuild(sealed.to_form(rows, self.key, self.seal))

    @staticmethod
    def _rows(col, ids: Sequence[str], with_embeddings: bool) -> dict[str, list]:
        include = ["documents", "metadatas"] + (["embeddings"] if with_embeddings else [])
        out: dict[str, list] = {"ids": [], "documents": [], "metadatas": [], "embeddings": []}
        for s in range(0, len(ids), 1000):
            got = col.get(ids=list(ids[s : s + 1000]), include=include)
            out["ids"] += got["ids"]
            out["documents"] += got["documents"]
            out["metadatas"] += got["metadatas"]
            if with_embeddings:
                out["embeddings"] += [[float(x) for x in v] for v in got["embeddings"]]
        return out

    def count(self) -> int:
        with self._lock:
            return self._col.count()

    def add(self, memories: Sequence[Memory], embeddings: Sequence[Sequence[float]] | None = None) -> None:
        if not memories:
            return
        with self._lock:
            vectors = embeddings if embeddings is not None else self.embedder.embed([m.text for m in memories])
            stored = [sealed.stored_row(self.key, self.seal, m.id, m.text, m.metadata()) for m in memories]
            self._indexed = self._indexed or index_persisted(self.root, self._col)
            if not self._indexed:
                # No vector index yet (a new or emptied store): chromadb would create it here,
                # writing this process's uninitialised heap into it; a clean child does instead.
                rows = self._rows(self._col, self._col.get(include=[])["ids"], with_embeddings=True)
                fresh = {m.id for m in memories}
                kept = [i for i, mid in enumerate(rows["ids"]) if mid not in fresh]
                rows = {k: [v[i] for i in kept] for k, v in rows.items()}
                rows["ids"] += [m.id for m in memories]
                rows["documents"] += [doc for doc, _ in stored]
                rows["metadatas"] += [meta for _, meta in stored]
                rows["embeddings"] += [[float(x) for x in v] for v in vectors]
                self._rebuild(rows)
                return
            for i in range(0, len(memories), 1000):
                part, batch = memories[i : i + 1000], stored[i : i + 1000]
                with index_write(self.root):
                    self._col.upsert(
                        ids=[m.id for m in part], documents=[doc for doc, _ in batch],
                        metadatas=[meta for _, meta in batch], embeddings=list(vectors[i : i + 1000]),
                    )

    def update_meta(self, memories: Sequence[Memory]) -> None:
        with self._lock:
            metas = [sealed.stored_row(self.key, self.seal, m.id, "", m.metadata())[1] for m in memories]
            with index_write(self.root):
                self._col.update(ids=[m.id for m in memories], metadatas=metas)

    def _memory(self, mid: str, doc: Any, meta: Any, distance: float | None = None) -> Memory:
        doc, meta = sealed.plain_row(self.key, mid, doc, meta)
        return from_row(mid, doc, meta or {}, distance)

    def get(self, ids: Sequence[str] | None = None, where: dict[str, Any] | None = None) -> list[Memory]:
        where = sealed.seal_where(self.key, where) if self.seal else where
        with self._lock:
            rows = self._col.get(ids=list(ids) if ids is not None else None, where=where, include=["documents", "metadatas"])
        return [self._memory(i, d, m) for i, d, m in zip(rows["ids"], rows["documents"], rows["metadatas"], strict=False)]

    def query(self, text: str, n: int, where: dict[str, Any] | None = None) -> list[Memory]:
        return self.query_vector(self.embedder.embed([text])[0], n, where)

    def query_vector(self, vector: Sequence[float], n: int, where: dict[str, Any] | None = None) -> list[Memory]:
        where = sealed.seal_where(self.key, where) if self.seal else where
        with self._lock:
            for attempt in (0, 1):
                total = self._col.count()
                if total == 0:
                    return []
                try:
                    rows = self._col.query(
                        query_embeddings=[list(vector)], n_results=min(n, total), where=where,
                        include=["documents", "metadatas", "distances"],
                    )
                except Exception as exc:  # chromadb's InternalError on a damaged index
                    if attempt or isinstance(exc, (TypeError, ValueError)):
                        raise MemoryStoreError(f"searching the memory store in {self.root} failed: {exc}") from exc
                    self.repair(exc)
                    continue
                got = rows["ids"][0]
                if len(set(got)) == len(got) or attempt:
                    break
                self.repair("the index returned one memory twice")  # a truncated index does that
        return [
            self._memory(i, d, m, dist)
            for i, d, m, dist in zip(rows["ids"][0], rows["documents"][0], rows["metadatas"][0], rows["distances"][0], strict=False)
        ]

    def rebuild_without(self, drop: set[str]) -> None:
        """Rewrite the store without ``drop`` into a new folder, then swap it in by rename."""
        with self._lock:
            keep = [mid for mid in self._col.get(include=[])["ids"] if mid not in drop]
            self._rebuild(self._rows(self._col, keep, with_embeddings=True))

    def _rebuild(self, rows: dict[str, list], shred: bool = False) -> None:
        """Have a fresh process write ``rows`` as a new store in ``<root>.new``; swap it in
        (``shred``: zero the old folder's files before removing them: it held plain text)."""
        new_root = self.root.with_name(self.root.name + ".new")
        old_root = self.root.with_name(self.root.name + ".old")
        shutil.rmtree(new_root, ignore_errors=True)
        job = pickle.dumps(dict(rows, root=str(new_root), meta=self._meta()), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            proc = subprocess.run(
                [sys.executable, "-c", CHILD_CODE, str(_PROJECT_ROOT), str(os.getpid())], input=job,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=1800,
            )
            error = "" if proc.returncode == 0 else proc.stderr.decode(errors="replace").strip()[-800:] or f"exit {proc.returncode}"
        except (OSError, subprocess.SubprocessError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if error or not (new_root / ".complete").exists():
            shutil.rmtree(new_root, ignore_errors=True)
            raise MemoryStoreError(f"rewriting the memory store in {self.root} failed; nothing was changed ({error})")
        self._col = None
        self._client = None
        self._indexed = False
        _stop_client(self.root)
        os.replace(self.root, old_root)  # from here on, chroma_files.recover finishes the swap
        os.replace(new_root, self.root)
        (self.root / ".complete").unlink(missing_ok=True)
        crypto.shred_tree(old_root) if shred else shutil.rmtree(old_root, ignore_errors=True)
        self._client = _client(self.root)
        self._col = self._attach()

    def close(self) -> None:
        with self._lock:
            self._col = None
            self._client = None
            _stop_client(self.root)



def die_with_parent(parent: int) -> None:
    """End this process when ``parent`` dies (Linux: the kernel signals it; elsewhere: polling)."""
    import signal

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the line above ran
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def build_child(parent: int = 0) -> None:
    """Entry point of the child process of ``VectorCollection._rebuild`` (job on stdin)."""
    os.umask(0o077)
    if parent:
        die_with_parent(parent)
    job = pickle.loads(sys.stdin.buffer.read())
    _write_store(Path(job["root"]), job["meta"], job["ids"], job["documents"], job["metadatas"], job["embeddings"])


def _write_store(root: Path, meta: dict[str, Any], ids: list, docs: list, metas: list, embeddings: list) -> None:
    """Create a store at ``root`` holding these rows, with its HNSW index persisted; mark it complete."""
    client = _client(root)
    col = client.create_collection(COLLECTION, metadata=meta, embedding_function=None)
    for s in range(0, len(ids), 1000):
        col.add(
            ids=ids[s : s + 1000], documents=docs[s : s + 1000], metadatas=metas[s : s + 1000],
            embeddings=embeddings[s : s + 1000],
        )
    if ids:
        # Each write counts towards chromadb's sync threshold; a no-op update tips it over.
        for _ in range(_SYNC_THRESHOLD):
            if index_persisted(root, col):
                break
            if metas[0] is not None:
                col.update(ids=ids[:1], metadatas=metas[:1])
            else:
                col.update(ids=ids[:1], documents=docs[:1])
        if not index_persisted(root, col):
            raise MemoryStoreError(f"chromadb did not persist the vector index in {root}")
    # An empty store gets no index at all (reading it creates none); the first add makes one,
    # through this same child (see ``VectorCollection.add``). An index that lost its last live
    # element is re-created by chromadb at the next open, so it is no use here.
    del col, client
    _stop_client(root)
    (root / ".complete").write_text("1")

