"""chromadb's files on disk, read without chromadb: whether the HNSW index was persisted, whether
its files are sane, the records salvaged from ``chroma.sqlite3`` when the index is damaged, and
the crash recovery of a rebuild's folder swap (see ``memory.chroma``).

chromadb's index reader trusts its files (a truncated one can crash the process in native code),
so these checks run before chromadb opens a folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

from assistant.process import pid_alive
from memory import sealed
from memory.types import META_FIELDS

INDEX_MARKER = "index_metadata.pickle"
# What chromadb's HNSW save writes (the id map last: its presence means "persisted").
HNSW_FILES = ("header.bin", "data_level0.bin", "length.bin", "link_lists.bin", INDEX_MARKER)
WRITE_MARK = ".index-write"
BACKUP_DIR = ".index-backup"


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


def recover(root: Path) -> list[str]:
    """Finish or undo a swap that a crash interrupted, then undo a torn index save (see the
    module's docstring); returns the segments whose index was put back to its last save."""
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
    return recover_index_write(root)


def _vector_positions(root: Path) -> dict[str, str]:
    """Each vector segment's id and the log position its saved index holds ('0': none yet)."""
    import sqlite3

    db = root / "chroma.sqlite3"
    if not db.is_file():
        return {}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = con.execute(
                "SELECT s.id, COALESCE(m.seq_id, 0) FROM segments s LEFT JOIN max_seq_id m ON m.segment_id = s.id "
                "WHERE s.scope = 'VECTOR'"
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return {}  # not a store chromadb finished creating (or damaged: opening it repairs)
    return {str(seg): str(seq) for seg, seq in rows}


def _signature(seg: Path) -> list[list[Any]] | None:
    out: list[list[Any]] = []
    for name in HNSW_FILES:
        try:
            st = (seg / name).stat()
        except OSError:
            return None
        out.append([name, st.st_size, st.st_mtime_ns])
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def begin_index_write(root: Path) -> None:
    """Keep a copy of each saved index (unless the kept one is current) and mark the write."""
    segments: dict[str, str] = {}
    for seg_id, position in _vector_positions(root).items():
        seg = root / seg_id
        sig = _signature(seg)
        if sig is None:
            continue  # no saved index: chromadb has nothing to tear
        backup = root / BACKUP_DIR / seg_id
        stamp = {"signature": sig, "position": position}
        if _read_json(backup / "stamp.json") != stamp:
            tmp = root / BACKUP_DIR / f"{seg_id}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True, mode=0o700)
            for name in HNSW_FILES:
                shutil.copyfile(seg / name, tmp / name)
            if _signature(seg) != sig:  # changed while copied: no write may be under way, but be sure
                shutil.rmtree(tmp, ignore_errors=True)
                continue
            _write_json(tmp / "stamp.json", stamp)
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(tmp, backup)
        segments[seg_id] = position
    if segments:
        _write_json(root / WRITE_MARK, {"pid": os.getpid(), "segments": segments})


def end_index_write(root: Path) -> None:
    (root / WRITE_MARK).unlink(missing_ok=True)


@contextlib.contextmanager
def index_write(root: Path) -> Iterator[None]:
    """Around every chromadb call that may save the index (hold the store's lock)."""
    begin_index_write(root)
    try:
        yield
    finally:
        end_index_write(root)


def recover_index_write(root: Path) -> list[str]:
    """Put back the saved index of a write whose process died while chromadb was saving it."""
    mark = _read_json(root / WRITE_MARK)
    if mark is None:
        (root / WRITE_MARK).unlink(missing_ok=True)  # unreadable: written half, before any save
        return []
    pid = int(mark.get("pid", 0))
    if pid and pid != os.getpid() and pid_alive(pid):
        return []  # a live writer's mark (it holds the lock; this open does not)
    restored: list[str] = []
    positions = _vector_positions(root)
    for seg_id, position in dict(mark.get("segments", {})).items():
        if positions.get(seg_id) != position:
            continue  # the save finished (SQLite records its position last): the files are whole
        backup, seg = root / BACKUP_DIR / seg_id, root / seg_id
        stamp = _read_json(backup / "stamp.json")
        if not stamp or stamp.get("position") != position or _signature(seg) == stamp.get("signature"):
            continue  # untouched since the copy, or no copy of that save
        for name in HNSW_FILES:
            shutil.copyfile(backup / name, seg / f"{name}.restore")
            os.replace(seg / f"{name}.restore", seg / name)
        restored.append(seg_id)
    if restored:
        print(f"[memory] an index save in {root} was interrupted; put back the index as last saved "
              "(the log replays the writes since)", file=sys.stderr, flush=True)
    (root / WRITE_MARK).unlink(missing_ok=True)
    return restored

