"""The vector store (the only importer of chromadb).

Contract: ``similarity`` is cosine similarity in [0, 1] (the collection is created with the
cosine metric; 1 - distance, clipped), higher is better. Each collection records the embedder id
and dimension; opening it with another embedder re-embeds every memory instead of mixing
vectors.

Per user: ``users/<user>/memory/`` holds that user's facts, preferences and episodes, so one
user's memories cannot be recalled for another. Pack knowledge is shared, in
``$ASSISTANT_HOME/knowledge/``.

Forgetting rebuilds the store without the forgotten rows in a new folder and swaps it in by
rename: chromadb keeps deleted documents in its SQLite log and free pages, and a rebuild is the
one way through its public API to leave no trace. A crash mid-way leaves the old or the new
folder, never half (see ``_recover``).

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

When the data directory is encrypted, a user's store keeps texts sealed (``memory/sealed.py``):
rows are sealed before they reach chromadb (or the rebuild child) and opened after they leave
it; a plain store is rebuilt sealed when it is opened (and back, while encryption is turned off).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import pickle
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from assistant import crypto, paths
from assistant.errors import EncryptionError, MemoryStoreError
from memory import sealed

SCHEMA_VERSION = 1
COLLECTION = "memories"
KINDS = ("fact", "preference", "episode", "knowledge")
_KIND_WEIGHT = {"fact": 0.05, "preference": 0.05, "episode": -0.08, "knowledge": 0.0}
# chromadb persists its HNSW index (and stops re-creating it at each open) once this many log
# records were applied since the last persist; 2 is the smallest value it accepts.
_SYNC_THRESHOLD = 2
_INDEX_MARKER = "index_metadata.pickle"
_PROJECT_ROOT = Path(__file__).resolve().parent.parent
_CHILD_CODE = (
    "import sys; sys.path.insert(0, sys.argv[1]); from memory.store import _build_child; _build_child(int(sys.argv[2]))"
)
_EPISODE_QUERY = re.compile(r"\b(talk(ed)? about|discuss(ed)?|last time|earlier|before|previous(ly)?|remember when)\b", re.I)


@dataclass
class Memory:
    id: str
    text: str
    kind: str
    user: str = ""
    pack: str = ""
    created: float = 0.0
    updated: float = 0.0
    source_turn: str = ""
    superseded_by: str = ""
    attribute: str = ""
    citation: str = ""
    doc_hash: str = ""
    similarity: float | None = field(default=None, compare=False)

    def metadata(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("id", "text", "similarity"):
            data.pop(key)
        return data


def _from_row(mid: str, doc: str, meta: dict[str, Any], distance: float | None = None) -> Memory:
    known = {k: meta[k] for k in Memory.__dataclass_fields__ if k in meta and k not in ("id", "text", "similarity")}
    sim = None if distance is None else max(0.0, min(1.0, 1.0 - float(distance)))
    return Memory(id=mid, text=doc, similarity=sim, **known)


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
        _recover(root)
        try:
            if not _index_files_sane(root):
                raise MemoryStoreError("the vector index files are damaged (sizes do not match their header)")
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
                rows = _salvage_rows(self.root)
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
            _recover(self.root)
            try:
                if not _index_files_sane(self.root):
                    raise MemoryStoreError("the vector index files are damaged (sizes do not match their header)")
                self._client = _client(self.root)
                self._col = self._attach()
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
        elif col.count() and not _index_persisted(self.root, col):
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
            self._indexed = self._indexed or _index_persisted(self.root, self._col)
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
                part, rows = memories[i : i + 1000], stored[i : i + 1000]
                self._col.upsert(
                    ids=[m.id for m in part], documents=[doc for doc, _ in rows],
                    metadatas=[meta for _, meta in rows], embeddings=list(vectors[i : i + 1000]),
                )

    def update_meta(self, memories: Sequence[Memory]) -> None:
        with self._lock:
            metas = [sealed.stored_row(self.key, self.seal, m.id, "", m.metadata())[1] for m in memories]
            self._col.update(ids=[m.id for m in memories], metadatas=metas)

    def _memory(self, mid: str, doc: Any, meta: Any, distance: float | None = None) -> Memory:
        doc, meta = sealed.plain_row(self.key, mid, doc, meta)
        return _from_row(mid, doc, meta or {}, distance)

    def get(self, ids: Sequence[str] | None = None, where: dict[str, Any] | None = None) -> list[Memory]:
        where = sealed.seal_where(self.key, where) if self.seal else where
        with self._lock:
            rows = self._col.get(ids=list(ids) if ids is not None else None, where=where, include=["documents", "metadatas"])
        return [self._memory(i, d, m) for i, d, m in zip(rows["ids"], rows["documents"], rows["metadatas"])]

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
            for i, d, m, dist in zip(rows["ids"][0], rows["documents"][0], rows["metadatas"][0], rows["distances"][0])
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
                [sys.executable, "-c", _CHILD_CODE, str(_PROJECT_ROOT), str(os.getpid())], input=job,
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
        os.replace(self.root, old_root)  # from here on, _recover finishes the swap
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


def _index_persisted(root: Path, col: Any) -> bool:
    """Whether chromadb has persisted this collection's HNSW index (so it loads, not re-creates, it)."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{root / 'chroma.sqlite3'}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT id FROM segments WHERE collection = ? AND scope = 'VECTOR'", (str(col.id),)).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        rows = []
    if rows:
        return all((root / r[0] / _INDEX_MARKER).is_file() for r in rows)
    return any(root.glob(f"*/{_INDEX_MARKER}"))


def _die_with_parent(parent: int) -> None:
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


def _build_child(parent: int = 0) -> None:
    """Entry point of the child process of ``VectorCollection._rebuild`` (job on stdin)."""
    os.umask(0o077)
    if parent:
        _die_with_parent(parent)
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
            if _index_persisted(root, col):
                break
            if metas[0] is not None:
                col.update(ids=ids[:1], metadatas=metas[:1])
            else:
                col.update(ids=ids[:1], documents=docs[:1])
        if not _index_persisted(root, col):
            raise MemoryStoreError(f"chromadb did not persist the vector index in {root}")
    # An empty store gets no index at all (reading it creates none); the first add makes one,
    # through this same child (see ``VectorCollection.add``). An index that lost its last live
    # element is re-created by chromadb at the next open, so it is no use here.
    del col, client
    _stop_client(root)
    (root / ".complete").write_text("1")


def _index_files_sane(root: Path) -> bool:
    """Whether every persisted HNSW index under ``root`` has files of the sizes its header implies.

    chromadb's index reader trusts these files; a truncated or overwritten one can crash the
    process in native code, so they are checked before chromadb opens them.
    """
    import struct

    for header in root.glob("*/header.bin"):
        seg = header.parent
        try:
            raw = header.read_bytes()
            (_v, _off, max_el, count, per_el, _label, _data, _lvl, entry, *_rest) = struct.unpack_from("<IQQQQQQiIQQQdQ", raw)
            level0 = (seg / "data_level0.bin").stat().st_size
            lengths = (seg / "length.bin").stat().st_size
            (seg / "link_lists.bin").stat()
        except (OSError, struct.error):
            return False
        # The level-0 and length files hold max_elements entries when chromadb created the index
        # at that size, but only the element count when it grew while being created (a store
        # written with more than 100 rows at once): both are whole; fewer than ``count`` is not.
        if len(raw) != 100 or count > max_el or not per_el:
            return False
        if level0 % per_el or not count * per_el <= level0 <= max_el * per_el:
            return False
        if lengths % 4 or not count * 4 <= lengths <= max_el * 4:
            return False
        if count and entry >= count:
            return False
    return True


def _salvage_rows(root: Path) -> dict[str, list]:
    """Every memory's id, text and metadata, read from chroma.sqlite3 itself (no vector index)."""
    import sqlite3

    con = sqlite3.connect(f"file:{root / 'chroma.sqlite3'}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT e.embedding_id, m.key, m.string_value, m.int_value, m.float_value, m.bool_value "
            "FROM embeddings e JOIN segments s ON s.id = e.segment_id JOIN embedding_metadata m ON m.id = e.id "
            "WHERE s.scope = 'METADATA' ORDER BY e.id"
        ).fetchall()
    finally:
        con.close()
    fields = set(Memory.__dataclass_fields__) - {"id", "text", "similarity"} | {sealed.SEALED}
    docs: dict[str, str] = {}
    metas: dict[str, dict[str, Any]] = {}
    for mid, key, sv, iv, fv, bv in rows:
        meta = metas.setdefault(mid, {})
        if key == "chroma:document":
            docs[mid] = sv
        elif key in fields:
            meta[key] = next((v for v in (sv, iv, fv) if v is not None), bool(bv) if bv is not None else "")
    ids = [mid for mid in metas if docs.get(mid)]
    return {"ids": ids, "documents": [docs[i] for i in ids], "metadatas": [metas[i] for i in ids], "embeddings": []}


def _recover(root: Path) -> None:
    """Finish or undo a swap that a crash interrupted."""
    new_root = root.with_name(root.name + ".new")
    old_root = root.with_name(root.name + ".old")
    if new_root.exists():
        if not root.exists() and (new_root / ".complete").exists():
            os.replace(new_root, root)
            (root / ".complete").unlink(missing_ok=True)
        else:
            shutil.rmtree(new_root, ignore_errors=True)
    if old_root.exists():
        if root.exists():
            shutil.rmtree(old_root, ignore_errors=True)
        else:
            os.replace(old_root, root)


class MemoryStore:
    """One user's memories (facts, preferences, episodes) plus shared pack knowledge for recall."""

    def __init__(self, user: str, settings: Any, root: Path | None = None, embedder: Any | None = None) -> None:
        from memory import embedder as embedder_mod

        from memory.locking import Guard

        key, seal = crypto.stores_key()  # locked or a wrong passphrase: refused before anything is touched
        self.user = user
        self.settings = settings
        self.embedder = embedder or embedder_mod.get(settings.embedder)
        self.root = root or paths.memory_dir(user)
        paths.private_umask()
        paths.private_dir(self.root.parent)
        # One lock and change counter per user folder: opening may finish a swap that a crash
        # interrupted, which must not race another process's rebuild.
        self.guard = Guard(self.root.parent)
        with self.guard.write(bump=False):
            self.col = VectorCollection(self.root, self.embedder, key, seal)
        self._knowledge: dict[str, Any] = {}

    def close(self) -> None:
        self.col.close()

    def refresh(self) -> bool:
        """Reopen when another process changed this user's store; True when it did."""
        if not self.guard.changed():
            return False
        with self.guard.write(bump=False):
            self._reopen()
        return True

    def _reopen(self) -> None:
        # Another process may have turned encryption on or off (and converted the store).
        self.col.key, self.col.seal = crypto.stores_key()
        self.col.reopen()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the user's cross-process lock for a write (reopening first if the store changed)."""
        with self.guard.write() as stale:
            if stale:
                self._reopen()
                self.guard.mark_seen()
            yield

    # ------------------------------------------------------------------ writing
    def add(
        self, text: str, kind: str = "fact", *, pack: str = "", source_turn: str = "", attribute: str = "",
        citation: str = "", supersede: bool = True,
    ) -> Memory:
        text = _clean(text)
        if kind not in KINDS or kind == "knowledge":
            raise MemoryStoreError(f"unknown memory kind {kind!r}: use fact, preference or episode")
        with self.writing():
            return self._add(text, kind, pack, source_turn, attribute, citation, supersede)

    def _add(self, text: str, kind: str, pack: str, source_turn: str, attribute: str, citation: str,
             supersede: bool) -> Memory:
        now = time.time()
        memory = Memory(
            id="m" + uuid.uuid4().hex[:11], text=text, kind=kind, user=self.user, pack=pack, created=now,
            updated=now, source_turn=source_turn, attribute=attribute, citation=citation,
        )
        self.col.add([memory])
        if supersede and attribute:
            older = [
                m for m in self.col.get(where={"$and": [{"attribute": attribute}, {"superseded_by": ""}]})
                if m.id != memory.id
            ]
            for m in older:
                m.superseded_by = memory.id
                m.updated = now
            if older:
                self.col.update_meta(older)
        return memory

    def edit(self, memory_id: str, text: str) -> Memory:
        with self.writing():
            return self._edit(memory_id, text)

    def _edit(self, memory_id: str, text: str) -> Memory:
        found = self.col.get(ids=[memory_id])
        if not found:
            raise MemoryStoreError(f"no memory {memory_id!r} for user {self.user!r} (see `assistant memory list`)")
        memory = found[0]
        memory.text = _clean(text)
        memory.updated = time.time()
        self.col.add([memory])
        self.col.rebuild_without(set())  # the old text must not linger on disk
        return memory

    def forget(self, ids: Iterable[str]) -> int:
        with self.writing():
            return self._forget(set(ids))

    def _forget(self, ids: set[str]) -> int:
        existing = {m.id for m in self.col.get(ids=list(ids))} if ids else set()
        missing = ids - existing
        if missing:
            raise MemoryStoreError(f"no memory {sorted(missing)[0]!r} for user {self.user!r} (see `assistant memory list`)")
        # Memories that were superseded by a forgotten one become live again only if the
        # forgotten one was a plain update; forgetting is about text, so we simply unlink.
        dependants = [m for m in self.col.get(where={"superseded_by": {"$in": sorted(ids)}})] if ids else []
        for m in dependants:
            m.superseded_by = ""
        if dependants:
            self.col.update_meta(dependants)
        self.col.rebuild_without(ids)
        return len(ids)

    def forget_matching(self, query: str, min_similarity: float = 0.5) -> list[Memory]:
        with self.writing():
            return self._forget_matching(query, min_similarity)

    def _forget_matching(self, query: str, min_similarity: float) -> list[Memory]:
        hits = [m for m in self.search(query, k=50, include_superseded=True) if (m.similarity or 0) >= min_similarity]
        hits += [m for m in self.list(include_superseded=True) if query.lower() in m.text.lower() and m not in hits]
        if hits:
            self._forget({m.id for m in hits})
        return hits

    def forget_all(self) -> int:
        with self.writing():
            everything = {m.id for m in self.col.get()}
            self.col.rebuild_without(everything)
            return len(everything)

    # ------------------------------------------------------------------ reading
    def get(self, memory_id: str) -> Memory | None:
        self.refresh()
        found = self.col.get(ids=[memory_id])
        return found[0] if found else None

    def list(self, kinds: Sequence[str] | None = None, include_superseded: bool = False) -> list[Memory]:
        clauses: list[dict[str, Any]] = []
        if kinds:
            clauses.append({"kind": {"$in": list(kinds)}})
        if not include_superseded:
            clauses.append({"superseded_by": ""})
        where = None if not clauses else clauses[0] if len(clauses) == 1 else {"$and": clauses}
        self.refresh()
        return sorted(self.col.get(where=where), key=lambda m: m.created)

    def search(self, query: str, k: int = 10, kinds: Sequence[str] | None = None, include_superseded: bool = False) -> list[Memory]:
        clauses: list[dict[str, Any]] = []
        if kinds:
            clauses.append({"kind": {"$in": list(kinds)}})
        if not include_superseded:
            clauses.append({"superseded_by": ""})
        where = None if not clauses else clauses[0] if len(clauses) == 1 else {"$and": clauses}
        # chromadb's filtered search scans the metadata first and grows slow with the store;
        # an unfiltered nearest-neighbour search for a few times k, filtered here, is fast and
        # almost always enough. Only when it is not is the filtered search run.
        wanted = set(kinds) if kinds else None
        vector = self.embedder.embed([query])[0]
        self.refresh()
        hits = [
            m for m in self.col.query_vector(vector, k * 4)
            if (wanted is None or m.kind in wanted) and (include_superseded or not m.superseded_by)
        ]
        if len(hits) >= k or len(hits) == self.col.count():
            return hits[:k]
        return self.col.query_vector(vector, k, where)

    def recall(
        self, query: str, pack: str | None = None, *, k: int = 6, min_similarity: float = 0.35,
        budget_tokens: int = 200, count_tokens: Callable[[str], int] | None = None,
    ) -> list[Memory]:
        """Ranked memories for ``query``: similarity + recency + kind, thresholded, deduped, in budget."""
        now = time.time()
        kinds = ["fact", "preference"] + (["episode"] if _EPISODE_QUERY.search(query) else [])
        candidates = self.search(query, k=k * 3, kinds=kinds)
        if pack:
            candidates += self.knowledge(pack).query(query, k * 2)
        scored = []
        for m in candidates:
            sim = m.similarity or 0.0
            threshold = min_similarity + (0.1 if m.kind == "knowledge" else 0.0)
            if sim < threshold:
                continue
            age_days = max(0.0, now - (m.updated or m.created)) / 86400
            score = sim + _KIND_WEIGHT[m.kind] + 0.05 * math.exp(-age_days / 30)
            scored.append((score, m))
        scored.sort(key=lambda pair: -pair[0])
        chosen: list[Memory] = []
        seen: set[str] = set()
        used = 0
        count = count_tokens or (lambda t: len(t.split()) * 4 // 3 + 1)
        for _, m in scored:
            key = re.sub(r"\W+", " ", m.text.lower()).strip()
            if key in seen:
                continue
            cost = count(m.text) + 6
            if used + cost > budget_tokens:
                continue
            seen.add(key)
            used += cost
            chosen.append(m)
            if len(chosen) >= k:
                break
        return chosen

    def recall_for_prompt(self, text: str, pack: str, count_tokens: Callable[[str], int], settings: Any) -> list[Any]:
        from assistant.prompt import Recalled

        memories = self.recall(
            text, pack, k=settings.recall_k, min_similarity=settings.min_similarity,
            budget_tokens=settings.budget_tokens, count_tokens=count_tokens,
        )
        return [Recalled(f"m{i}", m.id, m.kind, m.text, m.citation) for i, m in enumerate(memories, 1)]

    # ------------------------------------------------------------------ learning from chat
    def learn_from_message(self, text: str, pack: str, turn_id: str = "", hints: Sequence[str] = ()) -> list[Memory]:
        """Extract facts and preferences from a user message and store them (superseding old ones)."""
        from memory.extract import extract

        added: list[Memory] = []
        for item in extract(text, hints):
            if item.op == "negate" and item.attribute:
                # "I no longer eat meat": the negation supersedes what it denies.
                pass
            added.append(
                self.add(item.text, item.kind, pack=pack, source_turn=turn_id, attribute=item.attribute)
            )
        return added

    # ------------------------------------------------------------------ knowledge
    def knowledge(self, pack: str) -> "KnowledgeBase":
        if pack not in self._knowledge:
            self._knowledge[pack] = KnowledgeBase.open(pack, self.embedder)
        return self._knowledge[pack]

    # ------------------------------------------------------------------ export / import
    def export(self) -> dict[str, Any]:
        memories = self.list(include_superseded=True)
        return {
            "schema": SCHEMA_VERSION, "user": self.user, "embedder": self.embedder.id,
            "memories": [{k: v for k, v in asdict(m).items() if k != "similarity"} for m in memories],
        }

    def import_(self, data: dict[str, Any]) -> int:
        if not isinstance(data, dict) or not isinstance(data.get("memories"), list):
            raise MemoryStoreError("not a memory export: expected an object with a `memories` list")
        memories = []
        for n, row in enumerate(data["memories"]):
            try:
                m = Memory(**{k: v for k, v in row.items() if k in Memory.__dataclass_fields__ and k != "similarity"})
            except TypeError as exc:
                raise MemoryStoreError(f"memories[{n}]: {exc}") from exc
            if m.kind not in KINDS or m.kind == "knowledge" or not isinstance(m.text, str) or not m.text.strip():
                raise MemoryStoreError(f"memories[{n}]: bad kind or empty text")
            m.user = self.user
            memories.append(m)
        with self.writing():
            self.col.add(memories)
        return len(memories)


class KnowledgeBase:
    """A pack's knowledge documents, chunked by heading, shared by every user of the machine."""

    _open: dict[str, "KnowledgeBase"] = {}
    _lock = threading.Lock()

    def __init__(self, pack_id: str, embedder: Any) -> None:
        self.pack_id = pack_id
        self.col = VectorCollection(paths.knowledge_dir(pack_id), embedder)

    @classmethod
    def open(cls, pack_id: str, embedder: Any) -> "KnowledgeBase":
        from assistant import packs

        key = f"{paths.home()}|{pack_id}"
        with cls._lock:
            if key not in cls._open:
                kb = cls(pack_id, embedder)
                try:
                    kb.sync(packs.discover().get(pack_id).knowledge_files())
                except Exception:
                    kb.close()
                    raise
                cls._open[key] = kb
            return cls._open[key]

    def close(self) -> None:
        self.col.close()

    def sync(self, files: Sequence[Path]) -> tuple[int, int]:
        """Ingest new or changed documents (by content hash); drop removed ones. Never duplicates."""
        import hashlib

        present = {m.id: m for m in self.col.get()}
        by_file: dict[str, str] = {}
        for m in present.values():
            by_file.setdefault(m.citation.split(" > ")[0], m.doc_hash)
        wanted: list[Memory] = []
        stale: set[str] = set()
        names = set()
        for path in files:
            body = path.read_text(encoding="utf-8")
            digest = hashlib.sha256(body.encode()).hexdigest()[:16]
            names.add(path.name)
            if by_file.get(path.name) == digest:
                continue
            stale |= {mid for mid, m in present.items() if m.citation.split(" > ")[0] == path.name}
            for i, (heading, chunk) in enumerate(chunk_markdown(body)):
                wanted.append(Memory(
                    id=f"k-{self.pack_id}-{path.stem}-{i}", text=chunk, kind="knowledge", pack=self.pack_id,
                    created=time.time(), updated=time.time(), citation=f"{path.name} > {heading}", doc_hash=digest,
                ))
        stale |= {mid for mid, m in present.items() if m.citation.split(" > ")[0] not in names}
        stale -= {m.id for m in wanted}
        if stale:
            self.col.rebuild_without(stale)
        self.col.add(wanted)
        return len(wanted), len(stale)

    def query(self, text: str, n: int) -> list[Memory]:
        return self.col.query(text, n)


def chunk_markdown(body: str, max_words: int = 120) -> list[tuple[str, str]]:
    """(heading, text) chunks: one per '## ' section, long sections split by paragraph."""
    title = ""
    sections: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("# ") and not title:
            title = line[2:].strip()
        elif line.startswith("## "):
            sections.append((line[3:].strip(), []))
        elif line.strip():
            if not sections:
                sections.append((title or "Overview", []))
            sections[-1][1].append(line.strip())
    chunks: list[tuple[str, str]] = []
    for heading, lines in sections:
        words: list[str] = []
        for line in lines:
            words += line.split()
            if len(words) >= max_words:
                chunks.append((heading, f"{title}: {' '.join(words)}" if title else " ".join(words)))
                words = []
        if words:
            chunks.append((heading, f"{title}: {' '.join(words)}" if title else " ".join(words)))
    return chunks


def _clean(text: str) -> str:
    from assistant.safety import clean_text

    text = clean_text(text)
    text = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "", text or "").strip()
    if not text:
        raise MemoryStoreError("a memory needs some text")
    if len(text) > 2000:
        raise MemoryStoreError(f"a memory is at most 2000 characters (this one has {len(text)}); shorten it")
    return text


def open_store(user: str, settings: Any) -> MemoryStore:
    return MemoryStore(user, settings)


def export_json(store: MemoryStore) -> str:
    return json.dumps(store.export(), indent=2, ensure_ascii=False)
