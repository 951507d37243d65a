"""Recall for grounded answers: which of the user's memories answer a question about them, and
which sentences of the pack's notes answer a domain question.

Embedding similarity alone cannot tell "Which city do I live in?" -> "I moved to Lyon" (related)
from "What is my sister's name?" -> "My locker code is 5812" (unrelated, yet similar in shape:
both are about "my" something). So relevance here is two signals together:

- the cosine similarity of question and memory (MiniLM, in [0, 1]), and
- lexical evidence: the question's content words (stemmed, expanded with a small table of
  everyday synonyms for personal attributes: "live" ~ "moved", "city", "home") found in the
  memory. When the question names a thing of the user's ("my sister's name", "my oven"), the
  memory must mention that thing.

Nothing here knows any benchmark or pack: the synonym table is about people's lives in general.
Every user turn is kept as an episode (see ``assistant.core``); an episode whose turn yielded
extracted facts is represented by those facts (so a superseded fact cannot come back through its
episode), others are candidates in their own right, so natural chat that the extraction rules
miss is still recalled.

``rank`` is the general recall (``MemoryStore.recall``): similarity + recency + kind,
thresholded, deduplicated and kept within a token budget.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass
from typing import AbstractSet, Any, Callable, Iterable, Sequence

from memory.asks import _MY_NP, _on_topic, answer_type, asked_attributes, has_answer_type
from memory.changes import asks_about_past, current_part, only_past, replaces, strongly_changes

__all__ = ["personal", "relevance", "rank", "replaces", "untold", "note_sentences", "episode_text", "asked_attributes",
           "answer_type", "has_answer_type"]

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_STOP = frozenset(
    """a an the of to in on at for from by with about as and or but if so than then that this these those
    is are am was were be been being do does did done have has had having will would shall should can could
    may might must i i'm i've i'd me my mine myself we we're our ours us you your yours you're he she it its
    they them their what which who whom whose when where why how there here any some all each every no not
    tell told say said know knew remember recall mention mentioned please again ever usually normally
    currently still really just also too very much many lot kind sort type thing things something anything
    now today get got go going like one ones yes okay ok hi hello hey thanks""".split()
)
# Everyday synonyms for what people say about themselves (question word -> words a statement
# of it uses). General, not tied to any pack or suite.
_EXPAND: dict[str, tuple[str, ...]] = {
    "live": ("live", "lived", "living", "move", "moved", "city", "town", "home", "based", "reside", "relocat"),
    "city": ("live", "move", "moved", "city", "town", "based", "home"),
    "where": ("live", "move", "moved", "city", "town", "country", "based", "from"),
    "country": ("country", "from", "live", "move", "moved", "home", "grew", "born"),
    "people": ("people", "family", "cook", "household", "us", "kid", "child", "children", "two", "three", "four", "five", "six"),
    "family": ("family", "people", "household", "kid", "child", "children", "wife", "husband", "partner", "son",
               "daughter", "mum", "mom", "mother", "dad", "father", "brother", "sister", "baby", "twin", "parent",
               "grandma", "grandpa", "grandmother", "grandfather"),
    "allergic": ("allerg", "intoleran", "react"),
    "allergy": ("allerg", "intoleran"),
    "eat": ("eat", "vegetarian", "vegan", "pescatarian", "diet", "meat", "food", "halal", "kosher", "gluten"),
    "diet": ("diet", "eat", "vegetarian", "vegan", "pescatarian", "keto", "halal", "kosher"),
    "job": ("job", "work", "works", "worked", "career", "profession", "employ", "freelance"),
    "work": ("work", "job", "career", "employ", "profession", "freelance"),
    "household": ("household", "family", "people", "us", "live", "cook", "kid", "child", "children"),
    "home": ("home", "house", "flat", "apartment", "condo", "rent", "own", "live", "mortgage"),
    "do": (),
    "budget": ("budget", "spend", "dollar", "pound", "euro", "week", "month"),
    "spend": ("budget", "spend", "dollar", "pound", "euro"),
    "name": ("name", "called", "call"),
    "old": ("age", "old", "year", "born"),
    "age": ("age", "old", "year", "born"),
    "drive": ("drive", "car"),
    "car": ("car", "drive"),
    "pet": ("pet", "dog", "cat"),
    "dog": ("dog", "puppy", "pet"),
    "cat": ("cat", "kitten", "pet"),
    "instrument": ("instrument", "play", "piano", "guitar", "violin", "cello", "drum", "flute", "learn"),
    "hobby": ("hobby", "enjoy", "love", "play", "learn"),
    "appliance": ("appliance", "oven", "fryer", "cooker", "microwave", "stove", "hob", "use"),
    "medication": ("medication", "medicine", "take", "taking", "prescri", "tablet", "pill"),
    "medicine": ("medication", "medicine", "take", "taking", "prescri"),
    "condition": ("condition", "diagnos", "have", "suffer"),
    "married": ("married", "wife", "husband", "partner", "divorc", "engaged", "single"),
    "wife": ("wife", "married", "partner"),
    "husband": ("husband", "married", "partner"),
}


def _by_stem() -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for word, more in _EXPAND.items():
        out[stem(word)] = out.get(stem(word), ()) + more
    return out


def stem(word: str) -> str:
    """A crude English stem: enough to match 'allergic'/'allergy', 'moved'/'move', 'kids'/'kid'."""
    w = word.lower().replace("’", "'")
    if w.endswith("'s"):
        w = w[:-2]
    for suffix, repl in (("ies", "y"), ("ing", ""), ("ied", "y"), ("ed", ""), ("es", ""), ("s", ""), ("ic", ""), ("y", "")):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            return w[: -len(suffix)] + repl
    return w


_EXPAND_BY_STEM = _by_stem()  # focus terms are stems: "family" -> "famil"


def content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower().replace("’", "'")) if w not in _STOP and not w.startswith("i'")]


def _stems(words: Iterable[str]) -> set[str]:
    return {stem(w) for w in words}




def focus_terms(question: str) -> set[str]:
    """Stems of the thing the question asks about, when it names one of the user's own:
    "my sister's name" -> {sister}; "my weekly grocery budget" -> {weekly, grocery}."""
    out: set[str] = set()
    for m in _MY_NP.finditer(question.replace("’", "'")):
        phrase = m.group(1).lower()
        if "'s " in phrase:  # the possessor is the thing: my sister's name -> sister
            phrase = phrase.split("'s ")[0]
        words = [w for w in phrase.split() if w not in _STOP]
        out |= _stems(words)
    return out


def _matches(terms: AbstractSet[str], text_stems: AbstractSet[str]) -> set[str]:
    """Question stems found in the memory (prefix match both ways for short variants)."""
    hits = set()
    for t in terms:
        for s in text_stems:
            if t == s or (len(t) >= 4 and len(s) >= 4 and (s.startswith(t) or t.startswith(s))):
                hits.add(t)
                break
    return hits


@dataclass
class Scored:
    memory: Any
    similarity: float
    overlap: int
    focus_hit: bool
    score: float


def query_terms(question: str) -> set[str]:
    words = content_words(question)
    terms = _stems(words)
    for w in list(words) + re.findall(r"\b(where|live|eat|do)\b", question.lower()):
        for extra in _EXPAND.get(w, ()) + _EXPAND.get(stem(w), ()):
            terms.add(stem(extra))
    return terms


# A memory this similar to a question about the user answers it without a word in common (MiniLM
# cosine; below it, unrelated statements of the same shape score up to ~0.35).
STRONG_SIMILARITY = 0.4
# A memory is quoted beside the best one only when it scores within this margin of it.
SECOND_MEMORY_MARGIN = 0.35
def relevance(question: str, memories: Sequence[Any], similarities: Sequence[float]) -> list[Scored]:
    """Score each memory for the question; only those with enough evidence are returned, best first."""
    terms = query_terms(question)
    focus = focus_terms(question)
    focus |= {stem(x) for f in list(focus) for x in _EXPAND_BY_STEM.get(f, ())}
    out: list[Scored] = []
    wanted = answer_type(question)
    possessive = any("'s " in m.group(1) for m in _MY_NP.finditer(question.replace("’", "'")))
    # the user's own attributes, not another person's ("What does my husband do for a living?")
    asked = asked_attributes(question) if not possessive else set()
    for memory, sim in zip(memories, similarities, strict=False):
        words = episode_text(memory.text)
        text_stems = _stems(content_words(words))
        hits = _matches(terms, text_stems)
        focus_hit = bool(focus and _matches(focus, text_stems))
        if wanted and not has_answer_type(words, wanted):
            continue  # "my neighbour's name": a memory about the neighbour without a name does not answer it
        if sim >= 0.1 and _on_topic(question, asked, memory, words):
            out.append(Scored(memory, sim, len(hits), True, sim + 0.08 * len(hits) + 0.2))
            continue
        if focus and possessive:
            # the person asked about must be mentioned ("my sister's name" is not "My name is Alice")
            ok = (focus_hit and sim >= 0.15) or sim >= 0.75
        elif focus:
            # the thing asked about is mentioned, or the memory is close in meaning ("What was my
            # job?" ~ "I was a warehouse supervisor.")
            ok = (focus_hit and sim >= 0.15) or sim >= 0.45
        else:
            # the question's words, or a close meaning ("What health condition do I have?" ~ "I
            # have type 2 diabetes": no word in common, cosine 0.44)
            ok = (len(hits) >= 1 and sim >= 0.25) or (len(hits) >= 2 and sim >= 0.15) or sim >= STRONG_SIMILARITY
        if ok:
            out.append(Scored(memory, sim, len(hits), focus_hit, sim + 0.08 * len(hits) + (0.2 if focus_hit else 0.0)))
    out.sort(key=lambda s: -s.score)
    return out


_EPISODE = re.compile(r"^On \d{4}-\d{2}-\d{2} \(in [^)]*\) you wrote: ", re.S)


def episode_text(text: str) -> str:
    """The user's own words of an episode ("On DATE (in Pack) you wrote: ...")."""
    return _EPISODE.sub("", text)


def is_question(text: str) -> bool:
    t = text.strip()
    return t.endswith("?") or re.match(
        r"^(what|which|who|when|where|why|how|is|are|can|could|should|would|do|does|did|will|any|give|suggest|tell|help)\b",
        t, re.I) is not None


def personal(store: Any, question: str, k: int = 3, pool: int = 40) -> list[Scored]:
    """The user's memories that answer ``question``, best first (facts, preferences, and the
    episodes that no extracted fact stands for)."""
    candidates = store.search(question, k=pool, kinds=("fact", "preference", "episode"))
    if not candidates:
        return []
    told: dict[str, list[str]] = {}  # turn -> the facts extracted from it (superseded ones too)
    for m in store.list(kinds=("fact", "preference"), include_superseded=True):
        if m.source_turn:
            told.setdefault(m.source_turn, []).append(m.text)
    kept = []
    for m in candidates:
        if m.kind == "episode":
            words = episode_text(m.text)
            if is_question(words):
                continue
            if m.source_turn in told:
                rest = untold(words, told[m.source_turn])
                if not rest:
                    continue
                m = dataclasses.replace(m, text=rest)
        kept.append(m)
    scored = relevance(question, kept, [m.similarity or 0.0 for m in kept])
    chosen: list[Scored] = []
    seen_attr: set[str] = set()
    # Newest first among equally relevant ones: an update beats what it replaced.
    scored.sort(key=lambda s: (-round(s.score, 1), -(s.memory.updated or s.memory.created)))
    for s in scored:
        attr = s.memory.attribute
        if attr and attr in seen_attr:
            continue
        if attr:
            seen_attr.add(attr)
        chosen.append(s)
    terms = query_terms(question)
    chosen = _newest(chosen, scored, kept, terms, answer_type(question))
    chosen = [s for s in chosen if not any(replaces(o.memory, s.memory, terms) for o in chosen if o is not s)]
    # a far weaker one is only near the topic ("How many people do I cook for?" ~ "My locker code
    # at the cooking school is 5812"): it is not quoted beside the answer
    if chosen:
        best = max(s.score for s in chosen)
        chosen = [s for s in chosen if s.score >= best - SECOND_MEMORY_MARGIN]
    if not asks_about_past(question):
        chosen = _as_of_now(chosen, _stems(content_words(question)))  # the question's own words
    return chosen[:k]


# A later statement this similar to the question takes the place of the one it changed.
CHANGE_MIN_SIMILARITY = 0.2


def _newest(chosen: list[Scored], scored: Sequence[Scored], candidates: Sequence[Any], terms: AbstractSet[str],
            wanted: str) -> list[Scored]:
    """Each chosen memory, or the latest later statement that changed it: one that answers the
    question too, or one that names what the chosen one said (a word of it the question does not
    have) and says it changed, though it is less like the question ("What race am I training
    for?": "I'm training for a 10K race" -> "I signed up for a half marathon instead of the 10K")."""
    relevant = {id(s.memory) for s in scored}
    out: list[Scored] = []
    for s in chosen:
        old_words = _stems(content_words(episode_text(s.memory.text)))
        later = []
        for c in candidates:
            if (c.similarity or 0.0) < CHANGE_MIN_SIMILARITY or not replaces(c, s.memory, terms):
                continue
            words = episode_text(c.text)
            if wanted and not has_answer_type(words, wanted):
                continue
            names_old = bool((_stems(content_words(words)) & old_words) - set(_matches(old_words, terms)) - terms)
            if id(c) in relevant or (strongly_changes(words) and names_old):
                later.append(c)
        if later:
            newest = max(later, key=lambda c: c.updated or c.created)
            s = Scored(newest, newest.similarity or 0.0, s.overlap, s.focus_hit, s.score)
        if all(o.memory.id != s.memory.id for o in out):
            out.append(s)
    return out


def _as_of_now(chosen: list[Scored], terms: AbstractSet[str]) -> list[Scored]:
    """For a question about now: what is over is not quoted beside what is now, and a change
    statement is quoted without its old value (see ``memory.changes``); a clause with a word of the
    question stays ("Do I smoke?" ~ "I quit smoking in May")."""
    def asked(clause: str) -> bool:
        return bool(_matches(terms, _stems(content_words(clause))))

    if any(not only_past(episode_text(s.memory.text)) for s in chosen):
        chosen = [s for s in chosen if not only_past(episode_text(s.memory.text)) or asked(episode_text(s.memory.text))]
    out = []
    for s in chosen:
        body = episode_text(s.memory.text)
        now = current_part(body, keep=asked)
        if now != body:
            s = dataclasses.replace(s, memory=dataclasses.replace(s.memory, text=s.memory.text[: len(s.memory.text) - len(body)] + now))
        out.append(s)
    return out


def untold(words: str, facts: Sequence[str]) -> str:
    """The part of a user's turn that the facts extracted from it do not say: its clauses with a
    content word that none of the facts has ("I'm 45 and I cycle to work every day", with the fact
    "I'm 45." -> "I cycle to work every day."). Extraction keeps only the statement shapes it knows;
    the rest of the turn stays recallable this way, while a clause a fact stands for (and so a
    superseded value) does not come back through its episode."""
    from memory.extract import clauses

    known = _stems(w for f in facts for w in content_words(f))
    rest = [c for c in clauses(words) if not is_question(c) and _stems(content_words(c)) - known]
    return " ".join(c if c.endswith((".", "!")) else c.rstrip(",;:- ") + "." for c in rest)


def split_sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])", text.strip())
    return [p.strip() for p in parts if p.strip()]


_PRONOUN_LED = re.compile(r"^(it|its|this|these|that|those|they|their|them|he|she|such)\b", re.I)


@dataclass
class NoteSentence:
    text: str
    memory: Any  # the knowledge chunk it came from
    similarity: float
    score: float


def note_sentences(embedder: Any, question: str, chunks: Sequence[Any], top: int = 2,
                   chunk_weight: float = 0.15) -> list[NoteSentence]:
    """The sentences of the recalled note chunks that best answer ``question``.

    A sentence is embedded with its note's title and heading ("Freezer storage: Raw chicken
    pieces: about 9 months."), so that a list item keeps the context that makes it true."""
    items: list[tuple[str, str, Any]] = []
    for chunk in chunks:
        m = re.match(r"^([^:\n]{1,80}): ", chunk.text)
        title = m.group(1) if m else ""
        body = chunk.text[m.end():] if m else chunk.text
        heading = chunk.citation.partition(" > ")[2] if getattr(chunk, "citation", "") else ""
        context = " - ".join(x for x in (title, heading) if x)
        previous = ""
        for raw in split_sentences(body):
            led = bool(_PRONOUN_LED.match(raw))
            # "It can cover money ..." says nothing without the sentence that says what "it" is
            sent = f"{previous} {raw}" if led and previous and len(f"{previous} {raw}".split()) <= 80 else raw
            if 2 <= len(sent.split()) <= 80:  # list items such as "France: Paris." count
                items.append((sent, f"{context}: {sent}" if context else sent, chunk))
            if not led:
                previous = raw
    if not items:
        return []
    vectors = embedder.embed([question] + [ctx for _, ctx, _ in items])
    q = vectors[0]
    terms = _stems(content_words(question))
    scored = []
    for (sent, ctx, chunk), v in zip(items, vectors[1:], strict=False):
        sim = float(sum(a * b for a, b in zip(q, v, strict=False)))
        hits = len(_matches(terms, _stems(content_words(ctx))))
        scored.append(NoteSentence(sent, chunk, sim, sim + 0.04 * hits + chunk_weight * (chunk.similarity or 0.0)))
    scored.sort(key=lambda s: -s.score)
    return scored[:top]


# ---------------------------------------------------------------- the general recall's ranking
_KIND_WEIGHT = {"fact": 0.05, "preference": 0.05, "episode": -0.08, "knowledge": 0.0}
_EPISODE_QUERY = re.compile(r"\b(talk(ed)? about|discuss(ed)?|last time|earlier|before|previous(ly)?|remember when)\b", re.I)


def recall_kinds(query: str) -> list[str]:
    """The kinds of memory the general recall searches: episodes only when asked about the past."""
    return ["fact", "preference"] + (["episode"] if _EPISODE_QUERY.search(query) else [])


def rank(candidates: Sequence[Any], *, k: int = 6, min_similarity: float = 0.35, budget_tokens: int = 200,
         count_tokens: Callable[[str], int] | None = None, now: float | None = None) -> list[Any]:
    """The best ``k`` candidates by similarity + kind + recency, each above its threshold (pack
    knowledge needs 0.1 more), without duplicate texts, within ``budget_tokens``."""
    now = time.time() if now is None else now
    scored = []
    for m in candidates:
        sim = m.similarity or 0.0
        threshold = min_similarity + (0.1 if m.kind == "knowledge" else 0.0)
        if sim < threshold:
            continue
        age_days = max(0.0, now - (m.updated or m.created)) / 86400
        score = sim + _KIND_WEIGHT[m.kind] + 0.05 * math.exp(-age_days / 30)
        scored.append((score, m))
    scored.sort(key=lambda pair: -pair[0])
    chosen: list[Any] = []
    seen: set[str] = set()
    used = 0
    count = count_tokens or (lambda t: len(t.split()) * 4 // 3 + 1)
    for _, m in scored:
        key = re.sub(r"\W+", " ", m.text.lower()).strip()
        if key in seen:
            continue
        cost = count(m.text) + 6
        if used + cost > budget_tokens:
            continue
        seen.add(key)
        used += cost
        chosen.append(m)
        if len(chosen) >= k:
            break
    return chosen
