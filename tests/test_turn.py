"""A turn is made in send() and finished however the caller reads the reply."""

from assistant import settings as settings_mod
from assistant.core import Assistant


def _chat(tiny_engine):
    settings = settings_mod.load(env={})
    settings.memory.enabled = False
    return Assistant(settings, engine=tiny_engine).chat("ann", "general")


def test_the_turn_id_is_known_before_the_first_token_and_is_the_journals(tiny_engine):
    chat = _chat(tiny_engine)
    reply = chat.send("Tell me about soup.", temperature=0, max_new_tokens=6)
    planned = reply.turn_id
    assert planned  # an API stream can name its completion before any text
    reply.collect()
    turn = chat.journal.turn(planned)
    assert turn is not None and turn.reply == reply.text and chat.last_turn_id == planned


def test_a_reply_abandoned_midway_is_still_journalled_with_what_was_shown(tiny_engine):
    chat = _chat(tiny_engine)
    heard = []
    chat.assistant.listeners.append(lambda user, pack: heard.append((user, pack)))
    reply = chat.send("Tell me a long story about bread.", temperature=0, max_new_tokens=40)
    stream = iter(reply)
    first = next(stream)
    stream.close()  # the client went away (an HTTP stream closed, a TUI stopped reading)
    turn = chat.journal.turn(reply.turn_id)
    assert turn is not None, "the abandoned turn was lost"
    assert turn.reply == first == reply.text and turn.finish_reason == "cancelled"
    assert heard == [("ann", "general")]  # the learner hears of it like any turn
    assert chat.history and chat.history[-1][1] == first  # the next turn's context has what was shown
