"""Memory rows in the form chromadb keeps them when the data directory is encrypted.

A document (the memory's text) is stored sealed (``crypto.DataKey.seal_text``, its associated
data naming the memory id, so a sealed text cannot be moved onto another memory). The metadata
fields that carry the user's words (``TEXT_FIELDS``) are replaced by keyed tokens, equal for
equal values, so the store can still filter on them (a new fact supersedes the old one by its
attribute), and their values travel sealed in one ``sealed`` field. Ids, kinds, times, turn ids
and the embeddings stay as they are: the index searches the embeddings, and docs/privacy.md says
what they expose.

Reading is tolerant: a plain row (written before encryption was on, or by an interrupted
conversion) reads as it is; a sealed one without the key is an error that changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

from assistant import crypto
from assistant.errors import LockedError

TEXT_FIELDS = ("attribute", "citation")
SEALED = "sealed"


def _need(key: crypto.DataKey | None) -> crypto.DataKey:
    if key is None:
        raise LockedError(
            f"this memory store holds encrypted memories, but {crypto.state_path()} is missing: restore that "
            "file from a backup of the data directory. Nothing was read or changed."
        )
    return key


def seal_doc(key: crypto.DataKey, mid: str, text: str) -> str:
    return key.seal_text(text, f"memory:{mid}")


def open_doc(key: crypto.DataKey | None, mid: str, doc: Any) -> Any:
    if not crypto.is_sealed_text(doc):
        return doc
    return _need(key).open_text(doc, f"memory:{mid}")


def seal_meta(key: crypto.DataKey, mid: str, meta: dict[str, Any] | None) -> dict[str, Any] | None:
    if meta is None or meta.get(SEALED):
        return meta
    out = dict(meta)
    hidden = {f: out[f] for f in TEXT_FIELDS if isinstance(out.get(f), str) and out[f]}
    for f, value in hidden.items():
        out[f] = key.token(value, f"memory-{f}")
    out[SEALED] = key.seal_text(json.dumps(hidden), f"memory-meta:{mid}") if hidden else ""
    return out


def open_meta(key: crypto.DataKey | None, mid: str, meta: dict[str, Any] | None) -> dict[str, Any] | None:
    if meta is None or SEALED not in meta:
        return meta
    out = dict(meta)
    sealed = out.pop(SEALED)
    if sealed:
        out.update(json.loads(_need(key).open_text(sealed, f"memory-meta:{mid}")))
    return out


def seal_where(key: crypto.DataKey | None, where: dict[str, Any] | None) -> dict[str, Any] | None:
    """A chromadb ``where`` filter with the values of ``TEXT_FIELDS`` turned into their tokens."""
    if not where or key is None:
        return where
    out: dict[str, Any] = {}
    for name, cond in where.items():
        if name in ("$and", "$or"):
            out[name] = [seal_where(key, c) for c in cond]
        elif name in TEXT_FIELDS:
            out[name] = _seal_cond(key, name, cond)
        else:
            out[name] = cond
    return out


def _seal_cond(key: crypto.DataKey, field: str, cond: Any) -> Any:
    def tok(value: Any) -> Any:
        return key.token(value, f"memory-{field}") if isinstance(value, str) and value else value

    if isinstance(cond, dict):
        return {op: [tok(v) for v in val] if isinstance(val, list) else tok(val) for op, val in cond.items()}
    return tok(cond)


def plain_row(key: crypto.DataKey | None, mid: str, doc: Any, meta: dict[str, Any] | None) -> tuple[Any, Any]:
    return open_doc(key, mid, doc), open_meta(key, mid, meta)


def stored_row(key: crypto.DataKey | None, seal: bool, mid: str, doc: str, meta: dict[str, Any] | None,
               ) -> tuple[str, dict[str, Any] | None]:
    """A row as it is to be written: sealed when ``seal``, else as it is."""
    if not seal:
        return doc, meta
    key = _need(key)
    return seal_doc(key, mid, doc), seal_meta(key, mid, meta)


def to_form(rows: dict[str, list], key: crypto.DataKey | None, seal: bool) -> dict[str, list]:
    """``rows`` (ids, documents, metadatas, embeddings as the store holds them) in the form asked
    for: every row sealed, or every row plain."""
    out = dict(rows, documents=[], metadatas=[])
    for mid, doc, meta in zip(rows["ids"], rows["documents"], rows["metadatas"], strict=True):
        doc, meta = plain_row(key, mid, doc, meta)
        doc, meta = stored_row(key, seal, mid, doc, meta)
        out["documents"].append(doc)
        out["metadatas"].append(meta)
    return out


def plain_documents(rows: dict[str, list], key: crypto.DataKey | None) -> list[str]:
    """The memories' texts of ``rows`` (to embed them)."""
    return [open_doc(key, mid, doc) for mid, doc in zip(rows["ids"], rows["documents"], strict=True)]
