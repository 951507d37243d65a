"""Forgetting that reaches the journal and the adapters, user delete, private file modes, and
several processes on one user at once. Real chromadb, real embedder, real SQLite."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assistant import paths, privacy
from assistant.adapters import WEIGHTS, AdapterStore
from assistant.journal import Journal, Turn, new_turn_id
from assistant.settings import Settings
from cli.main import main
from personalization import dataset

SECRET = "FORGETMEPIN4412"
ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.slow  # processes, servers, the terminal UI or the real embedder at every step


def _files_with(root: Path, needle: bytes) -> list[Path]:
    """Every file under ``root`` whose bytes hold ``needle`` (SQLite free pages, WAL, HNSW files too)."""
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


def _turn(conv: str, message: str, prompt_extra: str = "", reply: str = "ok", memory_ids=(), **kw) -> Turn:
    prompt = [{"role": "system", "content": "You are helpful." + (f"\nWhat you know about the user:\n- {prompt_extra}" if prompt_extra else "")},
              {"role": "user", "content": message}]
    return Turn(new_turn_id(), conv, "general", time.time(), message, prompt, reply, list(memory_ids), **kw)


@pytest.fixture
def alice(home):
    """alice said her PIN hint; a later turn recalled it, rated and corrected; another is unrelated."""
    from memory.store import MemoryStore

    settings = Settings()
    journal = Journal("alice")
    conv = journal.new_conversation("general")
    t1 = journal.record(_turn(conv.id, f"My PIN hint is {SECRET}.", reply=f"Noted: your PIN hint is {SECRET}."))
    store = MemoryStore("alice", settings.memory)
    secret = store.add(f"My PIN hint is {SECRET}.", "fact", source_turn=t1.id)
    tea = store.add("I like green tea.", "preference")
    t2 = journal.record(_turn(conv.id, "What is my PIN hint?", f"My PIN hint is {SECRET}.",
                              reply=f"It is {SECRET}.", memory_ids=[secret.id, tea.id]))
    journal.rate(t2.id, 1)
    journal.correct(t2.id, f"Your PIN hint is {SECRET}.")
    t3 = journal.record(_turn(conv.id, "What tea do I like?", "I like green tea.", reply="Green tea.",
                              memory_ids=[tea.id]))
    journal.rate(t3.id, 1)
    store.close()
    journal.close()
    return {"settings": settings, "secret": secret, "tea": tea, "turns": (t1, t2, t3)}


def test_forget_leaves_no_byte_of_the_text_anywhere(home, alice):
    assert _files_with(home, SECRET.encode())  # it is there before
    receipt = privacy.forget("alice", alice["settings"], ids=[alice["secret"].id])
    assert [m[0] for m in receipt.memories] == [alice["secret"].id]
    assert _files_with(home, SECRET.encode()) == []
    t1, t2, t3 = alice["turns"]
    journal = Journal("alice")
    assert journal.turn(t1.id) is None  # the turn that said it
    kept = journal.turn(t2.id)  # the turn that quoted it is kept, rewritten
    assert kept is not None and SECRET not in json.dumps(kept.prompt) + kept.reply + (kept.correction or "")
    assert alice["secret"].id not in kept.memory_ids
    assert journal.turn(t3.id).reply == "Green tea."  # unrelated turns untouched
    # The next learning round's dataset has no example containing it.
    from memory.store import MemoryStore

    store = MemoryStore("alice", alice["settings"].memory)
    data = dataset.build(journal.turns(), store.list(kinds=("fact", "preference")), [], "sys")
    texts = json.dumps([[e.messages, e.answer] for e in data.train + data.heldout])
    assert SECRET not in texts and "green tea" in texts.lower()
    assert [m.text for m in store.search("What is my PIN hint?", k=5)] == ["I like green tea."]
    store.close()
    journal.close()
    assert "1 turn(s) deleted, 1 rewritten" in receipt.text()


def test_forget_by_search_from_the_cli(home, alice, capsys):
    assert main(["memory", "forget", "--user", "alice", "--search", SECRET]) == 0
    out = capsys.readouterr().out
    assert "forgot 1 memories" in out and "journal:" in out
    assert _files_with(home, SECRET.encode()) == []


def _version(store: AdapterStore, ledger: dict | None, created: float) -> str:
    staged = store.staging_dir()
    (staged / WEIGHTS).write_bytes(b"weights")
    meta = {"created": created, "steps": 1}
    if ledger is not None:
        meta["ledger"] = ledger
    return store.publish(staged, meta)


def test_forgetting_what_the_live_adapter_learned_rolls_it_back(home, alice):
    store = AdapterStore("alice", "general")
    t1, t2, t3 = alice["turns"]
    v1 = _version(store, {"turns": [t3.id], "memories": [alice["tea"].id]}, time.time())
    v2 = _version(store, {"turns": [t2.id, t3.id], "memories": [alice["secret"].id, alice["tea"].id]}, time.time())
    assert store.current() == v2
    receipt = privacy.forget("alice", alice["settings"], ids=[alice["secret"].id])
    assert store.current() == v1
    assert store.versions() == [v1]
    text = receipt.text()
    assert f"live version {v2} had learned it; rolled back to {v1}" in text
    assert "retrains without it" in text
    state = json.loads((store.root / "state.json").read_text())
    assert state["last_round_at"] == 0.0


@pytest.mark.parametrize("crash_in", ["journal", "adapters"])
def test_a_forget_cut_short_can_be_finished_by_forgetting_again(home, alice, crash_in):
    """bench/kills.py found this: killed after the memory store dropped the memory but before the
    journal was scrubbed, the journal kept quoting it, and no forget could name it any more."""
    store = AdapterStore("alice", "general")
    t1, t2, t3 = alice["turns"]
    _version(store, {"turns": [t3.id], "memories": [alice["tea"].id]}, time.time())
    v2 = _version(store, {"turns": [t2.id], "memories": [alice["secret"].id]}, time.time())

    def killed(*a, **kw):
        raise SystemExit("killed")

    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit):
        if crash_in == "journal":
            mp.setattr(Journal, "scrub", killed)
        else:
            mp.setattr(privacy, "unlearn", killed)
        privacy.forget("alice", alice["settings"], ids=[alice["secret"].id])
    receipt = privacy.forget("alice", alice["settings"], ids=[alice["secret"].id])  # the user tries again
    assert [m[0] for m in receipt.memories] == [alice["secret"].id]
    assert _files_with(home, SECRET.encode()) == []
    assert v2 not in store.versions()


def test_a_version_without_ledger_made_after_the_memory_is_taken_out(home, alice):
    store = AdapterStore("alice", "general")
    old = _version(store, None, alice["secret"].created - 100)  # before the memory existed
    new = _version(store, None, time.time())
    privacy.forget("alice", alice["settings"], ids=[alice["secret"].id])
    assert store.current() == old and store.versions() == [old]
    assert new not in store.versions()


def test_learner_records_a_training_ledger(home):
    from assistant.adapters import training_ledger

    turns = [_turn("c", "hello", memory_ids=["m1"]), _turn("c", "other", memory_ids=["m2"])]
    ex = dataset.Example([{"role": "user", "content": "hello"}], "hi", "rating", turn_id=turns[0].id)
    data = dataset.Dataset(train=[ex])

    class Fact:
        id = "m9"

    ledger = training_ledger(data, turns, [Fact()])
    assert ledger == {"turns": [turns[0].id], "memories": ["m1", "m9"]}


def test_user_delete_leaves_no_byte_of_their_text(home, alice, capsys):
    from memory.store import MemoryStore

    bob = MemoryStore("bob", alice["settings"].memory)
    bob.add("Bob's locker code is BOBKEEPS77.", "fact")
    bob.close()
    assert main(["user", "delete", "alice", "--yes"]) == 0
    assert "deleted user alice" in capsys.readouterr().out
    assert _files_with(home, SECRET.encode()) == []
    assert _files_with(home, b"green tea") == []
    assert _files_with(home, b"BOBKEEPS77")  # other users untouched
    assert not (home / "users" / "alice").exists()


def test_files_are_private_from_creation(home, alice, tmp_path):
    out = tmp_path / "export.json"
    assert main(["memory", "export", "--user", "alice", "--out", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    store = AdapterStore("alice", "general")
    _version(store, None, time.time())
    for p in [home / "users", *(home / "users").rglob("*")]:
        mode = stat.S_IMODE(p.lstat().st_mode)
        want = 0o700 if p.is_dir() else 0o600
        assert mode == want, f"{p} is {oct(mode)}"


_WORKER = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from assistant.settings import MemorySettings
from assistant.errors import StoreBusyError
from memory.store import MemoryStore
tag, n = sys.argv[2], int(sys.argv[3])
store = MemoryStore("alice", MemorySettings())
added, forgotten = [], []
for i in range(n):
    for attempt in range(20):
        try:
            m = store.add(f"Worker {tag} fact {i}: the code word is {tag}WORD{i}.", "fact")
            break
        except StoreBusyError:
            time.sleep(0.2)
    added.append((m.id, m.text))
    if i % 2 == 1:
        victim = added[-2]
        for attempt in range(20):
            try:
                store.forget([victim[0]])
                break
            except StoreBusyError:
                time.sleep(0.2)
        forgotten.append(victim)
print(json.dumps({"added": added, "forgotten": forgotten}))
"""


@pytest.mark.timeout(900)
@pytest.mark.parametrize("workers", [3])
def test_several_processes_add_and_forget_for_one_user(home, workers):
    env = dict(os.environ, ASSISTANT_HOME=str(home), ASSISTANT_LOCK_WAIT_S="60")
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(ROOT), f"w{k}", "4"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(workers)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=800)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    from memory.store import MemoryStore

    store = MemoryStore("alice", Settings().memory)
    have = {m.id: m.text for m in store.list()}
    for r in results:
        for mid, text in r["forgotten"]:
            assert mid not in have
            assert all(text not in m.text for m in store.search(text, k=5))
        for mid, text in r["added"]:
            if [mid, text] not in r["forgotten"]:
                assert have.get(mid) == text
                assert store.search(text, k=1)[0].id == mid
    store.close()
    forgotten_words = [t.split("is ")[-1].rstrip(".") for r in results for _, t in r["forgotten"]]
    for word in forgotten_words:
        assert _files_with(home, word.encode()) == []


def test_busy_store_says_who_holds_it(home):
    from assistant.errors import StoreBusyError
    from memory.locking import user_lock

    folder = paths.user_dir("alice")
    folder.mkdir(parents=True)
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from memory.locking import user_lock\n"
            f"with user_lock(__import__('pathlib').Path({str(folder)!r})):\n    print('held', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        with pytest.raises(StoreBusyError, match=f"in use by PID {holder.pid}, try again|in use by PID {holder.pid}"):
            with user_lock(folder, wait_s=0.5):
                pass
        assert time.perf_counter() - t0 < 5
    finally:
        holder.kill()
        holder.wait()
    with user_lock(folder, wait_s=2):  # released when its holder dies
        pass


def test_a_reader_sees_another_process_forget(home):
    """The TUI keeps its store open while a CLI forgets: its next read must not serve the memory."""
    from memory.store import MemoryStore

    settings = Settings()
    tui = MemoryStore("alice", settings.memory)
    m = tui.add(f"My PIN hint is {SECRET}.", "fact")
    tui.add("I like green tea.", "preference")
    assert main(["memory", "forget", "--user", "alice", m.id]) == 0  # another store object, as another process would
    assert all(SECRET not in x.text for x in tui.list())
    assert all(SECRET not in x.text for x in tui.search("PIN hint", k=5))
    tui.add("I live in Leeds.", "fact")  # and it can still write
    assert {x.text for x in tui.list()} == {"I like green tea.", "I live in Leeds."}
    tui.close()
