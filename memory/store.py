"""One user's memories: the ``MemoryStore`` facade (remember, edit, forget, search, list, recall,
export and import) over a vector collection (``memory.chroma``).

Per user: ``users/<user>/memory/`` holds that user's facts, preferences and episodes, so one
user's memories cannot be recalled for another. Pack knowledge is shared, in
``$ASSISTANT_HOME/knowledge/`` (``memory.knowledge``); the caller names a pack's files.

Every write holds the user's cross-process lock (``memory.locking``); a store that another process
changed is reopened before it is read or written. Forgetting and editing rebuild the collection
without the old rows (see ``memory.chroma``), so no forgotten text stays on disk.

What comes out is ``memory.types.Memory``; turning it into prompt objects is the core's job.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import re
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from assistant import crypto, paths
from assistant.errors import MemoryNotFoundError, MemoryStoreError
from memory.chroma import VectorCollection
from memory.knowledge import KnowledgeBase
from memory.recall import rank, recall_kinds
from memory.types import KINDS, SCHEMA_VERSION, Memory

__all__ = ["KINDS", "SCHEMA_VERSION", "Memory", "MemoryStore", "export_json", "open_store"]


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
        self._knowledge: dict[str, KnowledgeBase] = {}

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
            raise MemoryNotFoundError(f"no memory {memory_id!r} for user {self.user!r} (see `assistant memory list`)")
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
            raise MemoryNotFoundError(f"no memory {sorted(missing)[0]!r} for user {self.user!r} (see `assistant memory list`)")
        # Memories that were superseded by a forgotten one become live again only if the
        # forgotten one was a plain update; forgetting is about text, so we simply unlink.
        dependants = [m for m in self.col.get(where={"superseded_by": {"$in": sorted(ids)}})] if ids else []
        for m in dependants:
            m.superseded_by = ""
        if dependants:
            self.col.update_meta(dependants)
        self.col.rebuild_without(ids)
        return len(ids)

    def forget_matching(self, query: str, min_similarity: float = 0.5) -> builtins.list[Memory]:
        with self.writing():
            return self._forget_matching(query, min_similarity)

    def _forget_matching(self, query: str, min_similarity: float) -> builtins.list[Memory]:
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

    def list(self, kinds: Sequence[str] | None = None, include_superseded: bool = False) -> builtins.list[Memory]:
        clauses: builtins.list[dict[str, Any]] = []
        if kinds:
            clauses.append({"kind": {"$in": list(kinds)}})
        if not include_superseded:
            clauses.append({"superseded_by": ""})
        where = None if not clauses else clauses[0] if len(clauses) == 1 else {"$and": clauses}
        self.refresh()
        return sorted(self.col.get(where=where), key=lambda m: m.created)

    def search(self, query: str, k: int = 10, kinds: Sequence[str] | None = None, include_superseded: bool = False) -> builtins.list[Memory]:
        clauses: builtins.list[dict[str, Any]] = []
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
        self, query: str, notes: KnowledgeBase | None = None, *, k: int = 6, min_similarity: float = 0.35,
        budget_tokens: int = 200, count_tokens: Callable[[str], int] | None = None,
    ) -> builtins.list[Memory]:
        """Ranked memories for ``query`` (and chunks of ``notes``, a pack's knowledge): similarity +
        recency + kind, thresholded, deduped, in budget (``memory.recall.rank``)."""
        now = time.time()
        candidates = self.search(query, k=k * 3, kinds=recall_kinds(query))
        if notes is not None:
            candidates += notes.query(query, k * 2)
        return rank(candidates, k=k, min_similarity=min_similarity, budget_tokens=budget_tokens,
                    count_tokens=count_tokens, now=now)

    # ------------------------------------------------------------------ learning from chat
    def learn_from_message(self, text: str, pack: str, turn_id: str = "", hints: Sequence[str] = ()) -> builtins.list[Memory]:
        """Extract facts and preferences from a user message and store them (superseding old ones)."""
        from memory.extract import extract

        added: builtins.list[Memory] = []
        for item in extract(text, hints):
            if item.op == "negate" and item.attribute:
                # "I no longer eat meat": the negation supersedes what it denies.
                pass
            added.append(
                self.add(item.text, item.kind, pack=pack, source_turn=turn_id, attribute=item.attribute)
            )
        return added

    # ------------------------------------------------------------------ knowledge
    def knowledge(self, pack: str, files: Sequence[Path]) -> KnowledgeBase:
        """Pack ``pack``'s knowledge base; ``files`` (its notes) are ingested when it is first opened."""
        if pack not in self._knowledge:
            self._knowledge[pack] = KnowledgeBase.open(pack, self.embedder, files)
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



def _clean(text: str) -> str:
    from assistant.text import clean_text

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
