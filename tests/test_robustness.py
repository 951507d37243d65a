"""Bad input that cannot crash, stores that repair themselves, children that die with their parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from assistant import settings as settings_mod
from assistant.errors import BadInputError, ConfigError
from assistant.generation import GenParams
from assistant.text import clean_text
from cli.main import build_parser, main

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- ranges
@pytest.mark.parametrize("kw, words", [
    ({"top_p": 0}, "top_p = 0 is out of range: it must be greater than 0 and at most 1"),
    ({"temperature": -1}, "temperature = -1 is out of range: it must be between 0 and 5"),
    ({"max_new_tokens": -5}, "max_new_tokens = -5 is out of range: it must be between 1 and 8192"),
    ({"temperature": float("nan")}, "temperature = nan"),
    ({"top_p": float("inf")}, "top_p = inf"),
])
def test_gen_params_name_the_valid_range(kw, words):
    with pytest.raises(BadInputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        GenParams(**kw)


@pytest.mark.parametrize("argv, words", [
    (["ask", "hi", "--top-p", "0"], "--top-p: 0 is out of range: it must be greater than 0 and at most 1"),
    (["ask", "hi", "--max-tokens", "-3"], "--max-tokens: -3 is out of range: it must be between 1 and 8192"),
    (["ask", "hi", "--temperature", "-0.5"], "--temperature: -0.5 is out of range: it must be between 0 and 5"),
    (["ask", "hi", "--temperature", "nan"], "--temperature: nan is out of range"),
    (["memory", "search", "x", "-k", "0"], "-k: 0 is out of range: it must be between 1 and 1000"),
    (["adapters", "prune", "--keep", "-1"], "--keep: -1 is out of range"),
])
def test_cli_options_are_range_checked_before_anything_loads(argv, words, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert words in capsys.readouterr().err


def test_settings_name_the_range(home):
    with pytest.raises(ConfigError, match="must be greater than 0 and at most 1"):
        settings_mod.load(env={"ASSISTANT_GENERATION_TOP_P": "0"})
    with pytest.raises(ConfigError, match="chat.user"):
        settings_mod.load(env={"ASSISTANT_CHAT_USER": "../x"})


# ---------------------------------------------------------------- bytes that are not UTF-8
@pytest.mark.slow
def test_memory_add_with_invalid_utf8_is_replaced_not_fatal(home, capsys):
    raw = b"I like caf\xe9 au lait \xff\xfe."
    text = raw.decode("utf-8", "surrogateescape")  # how Python hands such argv bytes over
    assert main(["memory", "add", "--user", "alice", text]) == 0
    assert main(["memory", "list", "--user", "alice"]) == 0
    out = capsys.readouterr().out
    assert "I like caf\ufffd au lait \ufffd\ufffd." in out


@pytest.mark.slow
def test_binary_bytes_on_stdin_for_ask_do_not_crash(home):
    env = dict(os.environ, ASSISTANT_MEMORY_ENABLED="false", ASSISTANT_MODEL_NAME=str(home / "no-model"))
    proc = subprocess.run([sys.executable, "-m", "cli", "ask", "-q", "-"], input=b"\xff\xfe\x00bad \xc3(",
                          capture_output=True, env=env, cwd=ROOT, timeout=300)
    assert b"Traceback" not in proc.stderr
    assert proc.returncode != 0 and b"error:" in proc.stderr  # the missing model, clearly, not the bytes


def test_tokenizer_takes_whatever_clean_text_returns(tiny_tokenizer):
    for raw in ["ok\udcff", "a\ud800b", "\x00\x01", b"\xff\xfe".decode("utf-8", "surrogateescape")]:
        assert isinstance(tiny_tokenizer.encode(clean_text(raw)), list)


# ---------------------------------------------------------------- fuzz (bounded in time)
@hsettings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=200))
@pytest.mark.slow
def test_fuzz_clean_text_always_encodes(text):
    out = clean_text(text)
    out.encode("utf-8")
    if all(not (0xD800 <= ord(c) <= 0xDFFF) for c in text):
        assert out == text


@hsettings(max_examples=80, deadline=None)
@given(temperature=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10, 10),
       top_p=st.floats(allow_nan=True, allow_infinity=True), max_new_tokens=st.integers(-10**6, 10**6))
def test_fuzz_gen_params_are_valid_or_refused_with_a_range(temperature, top_p, max_new_tokens):
    try:
        p = GenParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    except BadInputError as exc:
        assert "it must be" in str(exc)
    else:
        assert 0 <= p.temperature <= 5 and 0 < p.top_p <= 1 and 1 <= p.max_new_tokens <= 8192


_FLAGS = ["--temperature", "--top-p", "--max-tokens", "--seed"]


@hsettings(max_examples=80, deadline=None)
@given(flag=st.sampled_from(_FLAGS), value=st.text(max_size=12))
@pytest.mark.slow
def test_fuzz_option_values_parse_or_exit_cleanly(flag, value):
    parser = build_parser()
    try:
        args = parser.parse_args(["ask", "hi", flag, value])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        overrides = {"temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_tokens,
                     "seed": args.seed}
        GenParams(**{k: v for k, v in overrides.items() if v is not None})


@hsettings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(message=st.text(max_size=300), reply=st.text(max_size=100))
def test_fuzz_journal_takes_any_message(home, message, reply):
    from assistant.journal import Journal, Turn, new_turn_id

    j = Journal("fuzz")
    try:
        conv = j.new_conversation("general")
        t = j.record(Turn(new_turn_id(), conv.id, "general", time.time(), message,
                          [{"role": "user", "content": message}], reply))
        assert j.turn(t.id).message == clean_text(message)
    finally:
        j.close()


# ---------------------------------------------------------------- damaged stores
@pytest.mark.parametrize("damage", ["truncate", "delete", "garbage"])
@pytest.mark.slow
def test_damaged_vector_index_is_rebuilt_with_a_notice(home, damage, capsys):
    from memory.store import MemoryStore

    s = MemoryStore("alice", settings_mod.MemorySettings())
    for text in ("I am allergic to peanuts.", "I live in Glasgow.", "My sister is called Ines.", "I play tennis."):
        s.add(text, "fact")
    s.close()
    for f in (home / "users" / "alice" / "memory").rglob("*.bin"):
        if damage == "truncate":
            os.truncate(f, f.stat().st_size // 3)
        elif damage == "delete":
            f.unlink()
        else:
            f.write_bytes(os.urandom(64))
    s = MemoryStore("alice", settings_mod.MemorySettings())
    hits = s.search("Which nuts should I avoid?", k=4)
    assert hits[0].text == "I am allergic to peanuts."
    assert len({h.id for h in hits}) == len(hits) == 4
    s.close()
    assert "rebuilt it from the store's 4 records" in capsys.readouterr().err


@pytest.mark.parametrize("rows", [101, 129])
def test_an_index_created_past_its_first_size_is_not_called_damaged(home, rows, capsys):
    """bench/kills.py found this: once a rebuild (a forget) wrote more than 100 memories at once,
    chromadb's files held ``count`` entries, not ``max_elements``, and every later open of the
    store called the index damaged and rebuilt it, with a notice, at each start of every process."""
    from memory.store import MemoryStore

    s = MemoryStore("alice", settings_mod.MemorySettings())
    added = [s.add(f"Note {i}: the locker code is LCK{i}X.", "fact") for i in range(rows + 1)]
    s.forget([added[-1].id])  # the rebuild child writes the `rows` others in one go
    s.close()
    capsys.readouterr()
    s = MemoryStore("alice", settings_mod.MemorySettings())
    assert s.col.notices == []
    assert s.search("Note 7: the locker code is LCK7X.", k=3)[0].id == added[7].id
    assert len(s.list()) == rows
    s.close()
    assert "was damaged" not in capsys.readouterr().err


def _queue_keeps_its_records(root: Path) -> None:
    """What a kill during chromadb's index save leaves: the log records since the last save
    (chromadb purges them only after a save finished; here they are kept to rebuild that state)."""
    import sqlite3

    con = sqlite3.connect(root / "chroma.sqlite3")
    con.execute("""UPDATE embeddings_queue_config SET config_json_str = '{"automatically_purge":false,"_type":"EmbeddingsQueueConfigurationInternal"}'""")
    con.commit()
    con.close()


@pytest.mark.parametrize("torn", [True, False])
def test_a_torn_index_save_is_put_back_and_the_log_replayed(home, monkeypatch, capsys, torn):
    """bench/kills.py found this: a kill while chromadb rewrote its HNSW files in place left them
    torn, and the store had to be re-embedded from its records. Now the index as last saved is put
    back and chromadb replays the log, so every acknowledged memory is found without a repair."""
    import sqlite3

    from memory import chroma_files
    from memory.store import MemoryStore

    texts = [f"Note {i}: my locker code is LCK{i}X." for i in range(6)]
    s = MemoryStore("alice", settings_mod.MemorySettings())
    for t in texts:
        s.add(t, "fact")
    s.close()
    root = home / "users" / "alice" / "memory"
    _queue_keeps_its_records(root)
    s = MemoryStore("alice", settings_mod.MemorySettings())
    with monkeypatch.context() as patch:
        patch.setattr(chroma_files, "end_index_write", lambda root: None)  # killed before it
        while True:  # until a write saves the index (chromadb does every second one)
            texts.append(f"Note {len(texts)}: my locker code is LCK{len(texts)}X.")
            s.add(texts[-1], "fact")
            mark = json.loads((root / chroma_files.WRITE_MARK).read_text())["segments"]
            if chroma_files._vector_positions(root) != mark:
                break
        s.close()
    if torn:  # killed mid-save: the files half rewritten, SQLite still at the last save
        con = sqlite3.connect(root / "chroma.sqlite3")
        for seg, pos in mark.items():
            con.execute("UPDATE max_seq_id SET seq_id = ? WHERE segment_id = ?", (int(pos), seg))
        con.commit()
        con.close()
        for f in root.glob("*/data_level0.bin"):
            os.truncate(f, f.stat().st_size // 3)
    capsys.readouterr()
    s = MemoryStore("alice", settings_mod.MemorySettings())
    assert bool(s.col.rollbacks) == torn
    assert s.col.notices == []  # no repair, nothing re-embedded
    assert not (root / chroma_files.WRITE_MARK).exists()
    for t in texts:
        assert s.search(t, k=1)[0].text == t
    assert len(s.list()) == len(texts)
    s.close()
    err = capsys.readouterr().err
    assert "rebuilt it from" not in err
    assert ("was interrupted" in err) == torn


def test_damaged_journal_is_moved_aside_and_readable_rows_kept(home, capsys):
    from assistant.journal import Journal, Turn, new_turn_id

    j = Journal("alice")
    conv = j.new_conversation("general")
    for i in range(60):
        j.record(Turn(new_turn_id(), conv.id, "general", time.time(), f"message {i} " + "x" * 300, [], f"reply {i}"))
    j.close()
    path = home / "users" / "alice" / "journal.sqlite3"
    data = bytearray(path.read_bytes())
    page = 4096
    data[page * 9 : page * 10] = os.urandom(page)  # one damaged leaf page of the turns table
    path.write_bytes(bytes(data))
    j = Journal("alice")
    kept = j.turns()
    assert 30 <= len(kept) <= 60  # the rows on the other pages are kept
    assert all(t.message.startswith("message ") for t in kept)
    conv2 = j.new_conversation("general")  # and it takes new writes
    j.record(Turn(new_turn_id(), conv2.id, "general", time.time(), "after", [], "ok"))
    j.close()
    assert list((home / "users" / "alice").glob("journal.sqlite3.damaged-*"))
    assert "was damaged" in capsys.readouterr().err


def test_garbage_journal_is_replaced_not_fatal(home):
    from assistant.journal import Journal

    path = home / "users" / "alice" / "journal.sqlite3"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database" * 100)
    j = Journal("alice")
    assert j.turns() == []
    j.close()


# ---------------------------------------------------------------- children die with their parent
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.slow
def test_rebuild_child_dies_with_its_parent(tmp_path):
    """The parent starts the store's rebuild child and is killed; the child must not live on."""
    from memory.chroma import CHILD_CODE

    read_fd, write_fd = os.pipe()  # the test keeps the child's stdin open: only the parent's death can end it
    parent_code = (
        "import os, subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', {CHILD_CODE!r}, {str(ROOT)!r}, str(os.getpid())], "
        f"stdin={read_fd}, pass_fds=({read_fd},))\n"
        "print(p.pid, flush=True)\ntime.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True,
                              pass_fds=(read_fd,))
    try:
        child = int(parent.stdout.readline())
        time.sleep(3)  # let the child get to its stdin read
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 20
        while time.time() < deadline and _alive(child):
            time.sleep(0.2)
        assert not _alive(child), "the rebuild child outlived its parent"
    finally:
        os.close(write_fd)
        os.close(read_fd)
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
