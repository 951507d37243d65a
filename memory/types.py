"""What the memory package hands out: one ``Memory`` row (a user's fact, preference or episode,
or a chunk of pack knowledge). Callers outside memory/ map it to their own types (the core turns
recalled memories into ``assistant.prompt.Recalled``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1
KINDS = ("fact", "preference", "episode", "knowledge")


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


# The metadata fields a stored row carries (everything but id, text and the query's similarity).
META_FIELDS = frozenset(Memory.__dataclass_fields__) - {"id", "text", "similarity"}


def from_row(mid: str, doc: str, meta: dict[str, Any], distance: float | None = None) -> Memory:
    """A Memory from a stored row; ``distance`` (cosine) becomes ``similarity`` in [0, 1]."""
    known = {k: meta[k] for k in META_FIELDS if k in meta}
    sim = None if distance is None else max(0.0, min(1.0, 1.0 - float(distance)))
    return Memory(id=mid, text=doc, similarity=sim, **known)
