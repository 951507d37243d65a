"""Pack knowledge: a pack's Markdown notes, chunked by heading, embedded into a vector collection
shared by every user of the machine (``$ASSISTANT_HOME/knowledge/<pack>/``).

The caller says which files a pack's notes are (``Pack.knowledge_files()``); nothing here finds
or reads packs. Ingestion is by content hash: an unchanged file is not re-embedded, a changed one
replaces its chunks, a removed one loses them.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from assistant import paths
from memory.chroma import VectorCollection
from memory.types import Memory


class KnowledgeBase:
    """A pack's knowledge documents, chunked by heading, shared by every user of the machine."""

    _open: dict[str, "KnowledgeBase"] = {}
    _lock = threading.Lock()

    def __init__(self, pack_id: str, embedder: Any) -> None:
        self.pack_id = pack_id
        self.col = VectorCollection(paths.knowledge_dir(pack_id), embedder)

    @classmethod
    def open(cls, pack_id: str, embedder: Any, files: Sequence[Path]) -> "KnowledgeBase":
        """The pack's knowledge base, opened once per process (and data directory); the first
        open ingests ``files`` (new or changed ones only)."""
        key = f"{paths.home()}|{pack_id}"
        with cls._lock:
            if key not in cls._open:
                kb = cls(pack_id, embedder)
                try:
                    kb.sync(files)
                except Exception:
                    kb.close()
                    raise
                cls._open[key] = kb
            return cls._open[key]

    def close(self) -> None:
        self.col.close()

    def sync(self, files: Sequence[Path]) -> tuple[int, int]:
        """Ingest new or changed documents (by content hash); drop removed ones. Never duplicates."""
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

