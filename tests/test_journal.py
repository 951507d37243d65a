import sqlite3
import time

from assistant.journal import SCHEMA_VERSION, Journal, Turn, new_turn_id


def _turn(conv, message="hello", reply="hi"):
    return Turn(id=new_turn_id(), conversation_id=conv, pack="chef", created=time.time(), message=message,
                prompt=[{"role": "user", "content": message}], reply=reply)


def test_records_turns_feedback_and_conversations(home):
    j = Journal("alice")
    conv = j.new_conversation("chef")
    t = j.record(_turn(conv.id, "How do I boil an egg?", "Boil it for 7 minutes."))
    j.rate(t.id, -1)
    j.correct(t.id, "Simmer it for 9 minutes for a hard yolk.")
    got = j.turn(t.id)
    assert got.rating == -1 and got.correction.startswith("Simmer")
    assert [f.id for f in j.feedback("chef")] == [t.id]
    assert j.conversations()[0].title == "How do I boil an egg?"
    db = sqlite3.connect(j.path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_deleted_turns_leave_no_text_on_disk(home):
    j = Journal("bob")
    conv = j.new_conversation("chef")
    j.record(_turn(conv.id, "my secret is Zanzibar42", "noted"))
    j.delete_turns()
    j.close()
    for f in j.path.parent.glob("journal.sqlite3*"):
        assert b"Zanzibar42" not in f.read_bytes()
