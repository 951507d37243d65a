"""chromadb's files on disk, read without chromadb: whether the HNSW index was persisted, whether
its files are sane, the records salvaged from ``chroma.sqlite3`` when the index is damaged, and
the crash recovery of a rebuild's folder swap (see ``memory.chroma``).

chromadb's index reader trusts its files (a truncated one can crash the process in native code),
so these checks run before chromadb opens a folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from memory import sealed
from memory.types import META_FIELDS

INDEX_MARKER = "index_metadata.pickle"


def index_persisted(root: Path, col: Any) -> bool:
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
        return all((root / r[0] / INDEX_MARKER).is_file() for r in rows)
    return any(root.glob(f"*/{INDEX_MARKER}"))



def index_files_sane(root: Path) -> bool:
    """Whether every persisted HNSW index under ``root`` has files of the sizes its header states.

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
        # A fresh index's files hold max_el elements; one saved after chromadb resized it holds
        # only the used ones (count); the reader needs at least count whole elements of each.
        if len(raw) != 100 or count > max_el or not per_el:
            return False
        if level0 % per_el or not count * per_el <= level0 <= max_el * per_el:
            return False
        if lengths % 4 or not count * 4 <= lengths <= max_el * 4:
            return False
        if count and entry >= count:
            return False
    return True


def salvage_rows(root: Path) -> dict[str, list]:
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
    fields = META_FIELDS | {sealed.SEALED}
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


def recover(root: Path) -> None:
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

