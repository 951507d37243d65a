"""`assistant chat`, the plain line chat: answers, /commands, and the learner's background
rounds announced between answers (the same rounds and sentences as the TUI and the API server).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from assistant.errors import AssistantError
from cli.common import err, gen_overrides, print_sources

CHAT_HELP = """commands:
  /good            rate the last answer +1 (it is learned from)
  /bad             rate the last answer -1 (then /correct teaches the right one)
  /correct TEXT    give the better answer to the last question (it is learned from)
  /continue        continue an answer that stopped at the token limit
  /learning        what is waiting to be learned, and the live adapter
  /memories        show what I remember about you
  /reset           start a new conversation
  /exit            quit (Ctrl-D too)"""

# What /continue sends: the cut answer is in the history, so the model picks up from its end.
CONTINUE_PROMPT = "Continue your last answer exactly where it stopped, without repeating it."


class _ChatLearning:
    """The line chat runs the learner's background rounds like the TUI and the API server, and
    prints when one starts and finishes (between answers, never inside one)."""

    def __init__(self, assistant: Any) -> None:
        from personalization.learner import attach

        attach(assistant)
        import threading

        self.assistant = assistant
        self.learner = assistant.learner
        self.on = assistant.settings.learning.enabled
        self._lock = threading.Lock()
        self._busy = False
        self._held: list[str] = []
        self._running: set[tuple[str, str]] = set()
        if self.on:
            self.learner.listeners.append(self._event)
            self.learner.start()

    def _event(self, user: str, pack: str, event: Any) -> None:
        from assistant.learning_notice import round_line

        phase = event.get("phase")
        key = (user, pack)
        if phase == "training" and key in self._running:
            return  # one line per round start, not one per step
        if phase == "training":
            self._running.add(key)
        elif phase in ("done", "failed"):
            self._running.discard(key)
        line = round_line(dict(event), self.assistant.settings.learning)
        if line:
            self._say(f"[{line}]")

    def _say(self, text: str) -> None:
        with self._lock:
            if self._busy:
                self._held.append(text)
                return
        err(f"\n{text}")
        sys.stderr.write("you> ")
        sys.stderr.flush()

    def busy(self, value: bool) -> None:
        with self._lock:
            self._busy = value
            held, self._held = (self._held, []) if not value else ([], self._held)
        for text in held:
            err(text)

    def outlook(self, chat: Any) -> str:
        from assistant.learning_notice import feedback_outlook

        return feedback_outlook(self.assistant, chat.user, chat.pack.id, background=self.on)

    def status(self, chat: Any) -> str:
        status = self.learner.status(chat.user, chat.pack.id)
        need = self.assistant.settings.learning.min_new_examples
        running = " · a round is running" if status.running else ""
        return (f"{status.pending}/{need} new examples · live adapter: {status.live or 'none (base model)'}{running}"
                + ("" if self.on else " · automatic rounds are off (learning.enabled = false)"))

    def close(self) -> None:
        if not self.on:
            return
        if self._running:
            err("[stopping the learning round in progress: it runs again next time]")
        self.learner.stop()
        if self._event in self.learner.listeners:
            self.learner.listeners.remove(self._event)


def _chat_answer(chat: Any, text: str, args: argparse.Namespace) -> None:
    from assistant.generation import CancelToken

    cancel = CancelToken()
    reply = chat.send(text, cancel=cancel, **gen_overrides(args))
    sys.stdout.write("assistant> ")
    try:
        for chunk in reply:
            sys.stdout.write(chunk)
            sys.stdout.flush()
    except KeyboardInterrupt:
        cancel.cancel()
        for _ in reply:  # let the turn finish its bookkeeping
            pass
        sys.stdout.write(" [cancelled]")
    if reply.stats.finish_reason == "length":
        sys.stdout.write(f"…[stopped at {reply.stats.completion_tokens} tokens — type /continue to continue]")
    sys.stdout.write("\n")
    print_sources(reply)


def _chat_command(text: str, chat: Any, assistant: Any, learning: _ChatLearning, args: argparse.Namespace) -> bool:
    """Run one /command; False for /exit."""
    word, _, rest = text.partition(" ")
    rest = rest.strip()
    if word in ("/exit", "/quit"):
        return False
    if word == "/help":
        print(CHAT_HELP)
    elif word == "/reset":
        chat.reset()
        print("(new conversation)")
    elif word == "/good":
        chat.rate(1)
        print(f"(rated +1, {learning.outlook(chat)})")
    elif word == "/bad":
        chat.rate(-1)
        print("(rated -1: a bad answer alone is not trained on; /correct TEXT teaches the right one)")
    elif word == "/correct":
        if not rest:
            raise AssistantError("say the better answer: /correct TEXT")
        chat.correct(rest)
        print(f"(correction {learning.outlook(chat)})")
    elif word == "/continue":
        last = chat.journal.turn(chat.last_turn_id) if chat.last_turn_id else None
        if last is None or last.finish_reason != "length":
            print("(the last answer is complete: it did not stop at the token limit)")
        else:
            learning.busy(True)
            try:
                _chat_answer(chat, CONTINUE_PROMPT, args)
            finally:
                learning.busy(False)
    elif word == "/learning":
        print(f"({learning.status(chat)})")
    elif word == "/memories":
        store = assistant.memory(chat.user)
        for m in store.list() if store else []:
            print(f"  {m.id} [{m.kind}] {m.text}")
    else:
        print(f"unknown command {word}; /help lists them")
    return True


def run_chat(args: argparse.Namespace, assistant: Any) -> int:
    """`assistant chat`: read lines until /exit or end of input."""
    chat = assistant.chat(args.user, args.pack, use_memory=not args.no_memory, use_adapter=not args.no_adapter)
    err(f"chatting as {chat.user} with the {chat.pack.name} pack. /help for commands, /exit to quit.")
    if chat.pack.disclaimer:
        err(chat.pack.disclaimer)
    learning = _ChatLearning(assistant)
    try:
        while True:
            try:
                line = input("you> ")
            except EOFError:
                print()
                return 0
            text = line.strip()
            if not text:
                continue
            try:
                if text.startswith("/"):
                    if not _chat_command(text, chat, assistant, learning, args):
                        return 0
                    continue
                learning.busy(True)
                try:
                    _chat_answer(chat, text, args)
                finally:
                    learning.busy(False)
            except AssistantError as exc:
                err(f"error: {exc}")
    finally:
        learning.close()
