"""Planning a grounded answer, and streaming the model's part of it through the numbers check.

``plan_answer`` decides, before the model runs, what the answer is built from (see
``assistant.grounding`` for the why): a fixed answer from the user's memories or an honest
abstention for a question about the user; the best sentences of the pack's notes as the start of
a domain answer, which the model continues; and the answer style the user asked for.
``GroundedStream`` runs the engine and lets through only sentences whose numbers are supported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from assistant import grounding
from assistant.generation import CancelToken, GenParams, GenStats
from assistant.prompt import Recalled

# A note sentence leads the answer only when it is this similar to the question (MiniLM cosine).
LEAD_MIN_SIMILARITY = 0.45
# The second-best sentence joins the lead when it scores within this margin of the best (on the
# packs' eval sets, two sentences held the answer 87-91% of the time, one 78-81%).
LEAD_SECOND_MARGIN = 0.15
# Notes (chunks) below this similarity are not given to the model at all.
NOTE_MIN_SIMILARITY = 0.3
# After a lead from the notes, the model's sentences must mostly use the notes' words.
DRIFT_MIN_SUPPORT = 0.6
LEAD_CONTINUATION_SENTENCES = 1
_STYLE = re.compile(
    r"\b(answers?|repl(y|ies)|responses?|sentences?|bullet|metric|imperial|celsius|fahrenheit|units?|jargon|"
    r"plain english|emojis?|concise|brief|short|detail(ed)?|step[- ]by[- ]step|formal|casual|call me|numbered|"
    r"steps|british|american|spelling|address me|exclamation|tone|uk (terms|english|words))\b",
    re.I,
)
_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
_LIMIT = re.compile(
    r"\b(under|less than|fewer than|no more than|at most|max(?:imum)?(?: of)?|within|in|to) (\d+|one|two|three|four|five|six|seven|eight|nine|ten) sentences?\b",
    re.I,
)


@dataclass
class Plan:
    recalled: list[Recalled] = field(default_factory=list)  # what the model is shown
    used: list[Recalled] = field(default_factory=list)  # what the answer was built from
    answer: str | None = None  # a fixed answer (the model is skipped)
    kind: str = ""  # "memory" or "abstain" for a fixed answer
    lead: str = ""  # the notes' sentences the answer starts with
    style: list[str] = field(default_factory=list)  # the user's stated answer-style preferences
    max_sentences: int | None = None
    check_numbers: bool = False
    constraint: Any = None  # for the decode loop: a grammar (structured output), a logprob recorder

    @property
    def shaped(self) -> bool:
        """A grammar shapes the reply (structured output): the model's reply as is, unchecked.
        A recorder alone (logprobs) leaves the answer as it would be without it."""
        return self.constraint is not None and getattr(self.constraint, "shapes_output", True)


def sentence_limit(style: Sequence[str]) -> int | None:
    """The most sentences an answer may have, from what the user asked for (None: no limit)."""
    limit = None
    for text in style:
        m = _LIMIT.search(text)
        if m:
            n = int(m.group(2)) if m.group(2).isdigit() else _NUMBER_WORDS[m.group(2).lower()]
            n = n - 1 if m.group(1).lower() in ("under", "less than", "fewer than") else n
            limit = max(1, n) if limit is None else min(limit, max(1, n))
        elif re.search(r"\b(short|brief|concise)\b", text, re.I) and limit is None:
            limit = 3
    return limit


def _to_recalled(memories: Sequence[Any], text_of: Any = None) -> list[Recalled]:
    return [Recalled(f"m{i}", m.id, m.kind, text_of(m.text) if text_of else m.text, m.citation)
            for i, m in enumerate(memories, 1)]


def recalled_for(store: Any, text: str, pack: Any, count_tokens: Any, settings: Any) -> list[Recalled]:
    """What the general recall (``MemoryStore.recall``) ranks for ``text`` among the user's
    memories and ``pack``'s notes, as prompt objects; ``settings``: the memory settings."""
    memories = store.recall(
        text, store.knowledge(pack.id, pack.knowledge_files()), k=settings.recall_k,
        min_similarity=settings.min_similarity, budget_tokens=settings.budget_tokens, count_tokens=count_tokens,
    )
    return _to_recalled(memories)


def store_recall(chat: Any, text: str, store: Any) -> list[Recalled]:
    """The memories (and notes) the general recall ranks for ``text``."""
    return recalled_for(store, text, chat.pack, chat.assistant.engine.count_tokens, chat.assistant.settings.memory)


def style_preferences(store: Any) -> list[str]:
    return [m.text for m in store.list(kinds=("preference",)) if _STYLE.search(m.text)]


# A request for a suggestion ("Suggest a dessert for me", "What should I cook tonight?"): what
# the user can't or won't have matters to it whatever its words.
_SUGGESTION = re.compile(r"\b(suggest|recommend|ideas?|what (should|could|can) (i|we) (make|cook|eat|have|bake|try|order|drink)|"
                         r"plan (a|my|our) (meal|dinner|lunch|menu|week))\b", re.I)
STANDING_LIMIT = 4


def standing_constraints(store: Any, skip: set[str]) -> list[Any]:
    """The user's diet, allergies, health conditions and likes or dislikes (not answer style),
    newest first, that a suggestion must respect."""
    from memory.extract import states_health

    out = []
    for m in sorted(store.list(kinds=("fact", "preference")), key=lambda m: -(m.updated or m.created)):
        if m.id in skip or _STYLE.search(m.text):
            continue
        attr = m.attribute or ""
        if attr == "diet" or attr.startswith("allergy:") or m.kind == "preference" or states_health(m.text):
            out.append(m)
        if len(out) >= STANDING_LIMIT:
            break
    return out


def plan_answer(chat: Any, text: str, store: Any) -> Plan:
    from memory import recall

    plan = Plan()
    if store is None:
        return plan
    plan.style = style_preferences(store)
    plan.max_sentences = sentence_limit(plan.style)
    if not grounding.wants_answer(text):
        from memory.extract import extract

        told = [item.text for item in extract(text, chat.pack.extraction_hints)]
        if told:
            plan.answer, plan.kind = grounding.acknowledge(told), "noted"
            return plan
    if grounding.is_personal_question(text):
        found = [s.memory for s in recall.personal(store, text)]
        plan.used = plan.recalled = _to_recalled(found, recall.episode_text)
        if found:
            plan.answer, plan.kind = grounding.personal_answer([r.text for r in plan.used]), "memory"
        else:
            plan.answer, plan.kind = grounding.abstain_text(text), "abstain"
        return plan
    recalled = [r for r in store_recall(chat, text, store) if r.kind != "knowledge"]
    if _SUGGESTION.search(text):
        recalled += _to_recalled(standing_constraints(store, {r.memory_id for r in recalled}))
    has_notes = bool(chat.pack.knowledge_files())
    plan.check_numbers = has_notes
    notes: list[Any] = []
    if has_notes:
        plan.lead, notes = domain_notes(store.embedder, store.knowledge(chat.pack.id, chat.pack.knowledge_files()), text)
    plan.recalled = recalled + _to_recalled(notes)
    for i, r in enumerate(plan.recalled, 1):
        r.short_id = f"m{i}"
    # Everything the model was shown can be in its answer (the lead's notes first): all are sources.
    plan.used = list(plan.recalled)
    return plan


def domain_notes(embedder: Any, notes_base: Any, text: str) -> tuple[str, list[Any]]:
    """What the pack's notes give a message: the lead (their sentences an answer to a question
    starts with; "" for none) and the note chunks shown to the model, the lead's first.

    A question is shown notes only when some of their sentences answer it; other messages get
    the closest note. Pack training (``personalization.grounded``) builds its prompts with this too."""
    chunks = [c for c in notes_base.query(text, 4) if (c.similarity or 0) >= NOTE_MIN_SIMILARITY]
    if not chunks:
        return "", []
    if not grounding.is_question(text):
        return "", chunks[:1]
    lead = _lead(embedder, notes_base, text, chunks)
    if not lead:
        return "", []
    order = list(dict.fromkeys(b.memory.id for b in lead))
    by_id = {c.id: c for c in chunks} | {b.memory.id: b.memory for b in lead}
    notes = [by_id[i] for i in order] + [c for c in chunks if c.id not in order][:1]
    return " ".join(b.text for b in lead), notes


# "What is the difference between a will and a power of attorney?": an answer needs both.
_COMPARED = re.compile(r"\b(?:difference|differences|distinction) between ([^,?]+?) and ([^,?]+?)"
                       r"(?=\s*(?:,|\band (?:which|what|how|who|should|do|does|is|can)\b|[?.!]|$))|"
                       r"((?:[\w'-]+ ){0,2}[\w'-]+) (?:vs\.?|versus) ([^,?.!]+)", re.I)


def compared(question: str) -> list[str]:
    """The two things a question compares ("a will", "a power of attorney"), or []."""
    m = _COMPARED.search(question.strip())
    if not m:
        return []
    return [g.strip() for g in m.groups() if g]


def _lead(embedder: Any, notes_base: Any, text: str, chunks: Sequence[Any]) -> list[Any]:
    """The notes' sentences an answer to ``text`` starts with: the best one or two; for a
    comparison, the best about each of the two things compared."""
    from memory import recall

    things = compared(text)
    if things:
        lead: list[Any] = []
        for thing in things:
            found = [c for c in notes_base.query(thing, 3) if (c.similarity or 0) >= NOTE_MIN_SIMILARITY]
            best = recall.note_sentences(embedder, f"What is {thing}?", found, top=1)
            lead += [b for b in best if b.similarity >= LEAD_MIN_SIMILARITY and b.text not in {x.text for x in lead}]
        if len(lead) == len(things):
            return lead
    best = recall.note_sentences(embedder, text, chunks, top=2)
    lead = [b for b in best if b.similarity >= LEAD_MIN_SIMILARITY]
    if len(lead) > 1 and lead[0].text in lead[1].text:
        lead = lead[1:]  # "X" and "X It ...": the one that holds the other
    elif len(lead) > 1 and (lead[1].score < lead[0].score - LEAD_SECOND_MARGIN or lead[1].text in lead[0].text):
        lead = lead[:1]
    return lead


def _sentences(text: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()])


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


class GroundedStream:
    """The model's part of an answer, let out sentence by sentence once checked.

    Sentences stating a number found in none of ``support`` are withheld (and a note says so);
    generation stops once the user's sentence limit is reached.
    """

    def __init__(self, engine: Any, ids: list[int], params: GenParams, session: Any, cancel: CancelToken | None,
                 plan: Plan, support: Sequence[str]) -> None:
        self.engine, self.ids, self.params, self.session = engine, ids, params, session
        self.outer = cancel
        self.plan = plan
        self.support = list(support)
        self.text = ""
        self.withheld: list[str] = []
        self.stats = GenStats()
        self._known: set[str] | None = None

    def _limited(self) -> bool:
        limit = self.plan.max_sentences
        if limit is not None and _sentences(self.plan.lead + " " + self.text) >= limit:
            return True
        # after a lead from the notes, the model adds at most this many sentences of its own
        return bool(self.plan.lead) and _sentences(self.text) >= LEAD_CONTINUATION_SENTENCES

    def _drifts(self, piece: str) -> bool:
        """After a lead from the notes, a sentence whose content words are mostly not in the notes,
        the question or the memories is the model's own invention: the answer ends before it."""
        if not self.plan.lead:
            return False
        from memory.recall import content_words, stem

        if piece.rstrip().endswith(":"):
            return True  # a heading or "The answer is:" with nothing checkable after it
        words = [stem(w) for w in content_words(piece)]
        if len(words) < 3:
            return False
        known = self._known_stems()
        return sum(w in known for w in words) / len(words) < DRIFT_MIN_SUPPORT

    def _repeats(self, piece: str) -> bool:
        """The model saying again what the answer already says (it loops on the notes' sentences)."""
        from memory.recall import content_words, stem

        words = {stem(w) for w in content_words(piece)}
        if len(words) < 3:
            return False
        said = [s for s in re.split(r"(?<=[.!?])\s+", self.plan.lead + " " + self.text) if s.strip()]
        return any(len(words & {stem(w) for w in content_words(s)}) >= 0.8 * len(words) for s in said)

    def _known_stems(self) -> set[str]:
        if self._known is None:
            from memory.recall import content_words, stem

            # the notes and memories the model was given, and the question (the first support text)
            given = [self.plan.lead] + [r.text for r in self.plan.recalled] + self.support[:1]
            self._known = {stem(w) for s in given for w in content_words(s)}
        return self._known

    def _let_out(self, piece: str) -> str:
        if not self.plan.check_numbers:
            return piece
        checked = grounding.check_numbers(piece, self.support)
        self.withheld += checked.withheld
        if checked.withheld:
            return (checked.text + " ") if checked.text else ""
        return piece

    def __iter__(self) -> Iterator[str]:
        if self.plan.lead and self._limited():
            return
        inner = CancelToken()
        if self.plan.constraint is not None:
            gen = self.engine.stream(self.ids, self.params, session=self.session, cancel=inner,
                                     constraint=self.plan.constraint)
        else:
            gen = self.engine.stream(self.ids, self.params, session=self.session, cancel=inner)
        buffered = not self.plan.shaped and (
            self.plan.check_numbers or self.plan.max_sentences is not None or bool(self.plan.lead))
        buf = ""
        stopped_by_us = False
        for chunk in gen:
            if self.outer is not None and self.outer.cancelled:
                inner.cancel()
            if not buffered:
                self.text += chunk
                yield chunk
                continue
            buf += chunk
            while not stopped_by_us:
                m = _SENTENCE_END.search(buf)
                if not m:
                    break
                piece, buf = buf[: m.end()], buf[m.end():]
                if self._drifts(piece) or self._repeats(piece):
                    stopped_by_us = True
                    inner.cancel()
                    break
                out = self._let_out(piece)
                if out:
                    self.text += out
                    yield out
                if self._limited():
                    stopped_by_us = True
                    inner.cancel()
        cut_short = gen.stats.finish_reason == "length" and not buf.rstrip().endswith((".", "!", "?"))
        if self.plan.lead and cut_short:
            buf = ""  # an unfinished sentence after the notes adds nothing checkable
        if buf and not stopped_by_us and not self._drifts(buf):
            out = self._let_out(buf)
            if out:
                self.text += out
                yield out
        self.stats = gen.stats
        if stopped_by_us:
            self.stats.finish_reason = "stop"
        if self.withheld:
            note = ("\n" if self.text else "") + grounding.withheld_note(self.withheld)
            self.text += note
            yield note
