"""Rule-based extraction of facts and preferences from a user's message.

The default model (135M parameters) cannot be trusted to emit JSON, so extraction is rules:
self-statements, preferences, constraints (allergies, diets, budgets), corrections
("actually, I ..."), negations ("I no longer ...") and explicit "remember that ...". Each item
gets an ``attribute`` (e.g. ``residence``, ``diet``, ``allergy:peanuts``) so that a newer
statement about the same attribute supersedes the older one.

Measured on ``data/memory/extraction_set.jsonl`` by ``python -m bench.extraction``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

# --- what makes a sentence *not* a memory ---------------------------------------------------
_QUESTION_START = re.compile(
    r"^(what|which|who|whom|whose|when|where|why|how|is|are|am|was|were|do|does|did|can|could|should|"
    r"would|will|shall|may|might|have|has|had|any|tell me|give me|show me|list|explain|describe|suggest|"
    r"recommend|help|please (give|tell|show|suggest|explain|help|make|list|write)|make|write|find|convert|"
    r"let'?s)\b",
    re.I,
)
_NOT_ABOUT_ME = re.compile(
    r"^(i (think|guess|suppose|wonder|believe|feel like|reckon|hope|bet|doubt|might|may|could|would|'d like|"
    r"want to know|need to know|was wondering|am wondering|'m wondering|am thinking|'m thinking|am considering|"
    r"'m considering|am planning|'m planning|plan to|am going to|'m going to|will|'ll|just wanted|wanted|"
    r"understand|see|agree|mean|forgot|don'?t know|do not know|don'?t think)|i(?:'m| am) (thinking|wondering|considering|planning|going to|"
    r"not sure|at the|on my way|off to|about to)|if i|when i|maybe|perhaps|never mind|nevermind)\b",
    re.I,
)
_TRANSIENT = re.compile(
    r"\b(today|tonight|right now|at the moment|this (morning|afternoon|evening|week|weekend)|"
    r"hungry|thirsty|tired|bored|sleepy|in a (rush|hurry)|running late|sure|not sure|unsure|confused|glad|"
    r"sorry|ready|done|back|here|excited|curious|grateful|thankful|happy to|okay|ok|fine|good|great|starving|"
    r"stressed|worried|nervous|anxious about|since yesterday|tomorrow|yesterday|last night|this year's)\b"
    r"|\bthat (idea|one|option|recipe|answer)\b|\b(the|your) (second|first|last|other) (one|option|answer|version)\b",
    re.I,
)
_SMALL_TALK = re.compile(r"^(hi|hello|hey|thanks|thank you|ok|okay|great|cool|nice|yes|no|sure|bye|good (morning|night))\b", re.I)

# --- explicit requests and operations --------------------------------------------------------
_REMEMBER = re.compile(
    r"^(?:(?:please|pls|plz)\s+)?(?:remember|note|make a note|keep in mind|don'?t forget|do not forget|for future reference|"
    r"save this|for the record|fyi)\b(?:\s+(?:that|this))?[\s,:;-]*",
    re.I,
)
_CORRECTION = re.compile(r"^(?:actually|correction|to correct myself|sorry,? i meant|i meant|no,)[\s,:;-]+", re.I)
_NEGATE = re.compile(
    r"\b(no longer|not .{0,40}\b(any ?more|any longer)|n'?t .{0,40}\b(any ?more|any longer)|i quit|i stopped|i've stopped|i have stopped|i gave up)\b",
    re.I,
)
_UPDATE = re.compile(
    r"\b(moved to|now (live|work|am|have|use|eat|rent|own|take)|i now\b|i'm now\b|i am now\b|changed (jobs|job|my)|"
    r"switched to|these days|started (working|a new|taking)|just (started|moved|got)|recently (got|moved|started|became)|"
    r"new job|got (married|divorced|engaged)|became a)\b",
    re.I,
)

# --- self-statements -------------------------------------------------------------------------
_FAMILY = r"(?:wife|husband|partner|son|daughter|kids?|children|child|baby|mum|mom|mother|dad|father|parents?|brother|sister|dog|cat|pet|puppy|kitten|family|household|grandma|grandmother|grandpa|grandfather|twins?|toddler|stepson|stepdaughter|fiancée?|spouse|boyfriend|girlfriend)"
_SELF = re.compile(
    r"^(?:and |but |also,? |so )?(i|i'm|i am|i've|i have|i'd|my|we|we're|we are|we've|we have|our|me and|my partner and i)\b", re.I
)
_OTHER_PERSON = re.compile(
    r"^(my|our) (friend|friends|colleague|colleagues|coworker|co-worker|boss|manager|neighbou?r|flatmate|roommate|"
    r"housemate|classmate|teacher|doctor|client|customer|cousin|uncle|aunt)s?\b(?!.*\b(me|my)\b)",
    re.I,
)
_PREFERENCE = re.compile(
    r"\b(like|likes|love|loves|enjoy|enjoys|prefer|prefers|hate|hates|dislike|dislikes|can'?t stand|avoid|"
    r"don'?t (like|eat|drink|want|use)|do not (like|eat|drink|want)|won'?t eat|never eat|rather|favou?rite|"
    r"vegetarian|vegan|pescatarian|keto|paleo|halal|kosher|gluten[- ]free|dairy[- ]free|plant[- ]based|drinks?|drinking|teetotal|"
    r"budget|spend|keep (answers|it|replies|responses)|answers? (short|brief|under)|always (use|give|answer|reply|include|show|mention)|"
    r"never (use|give|suggest|include)|no emojis?|in metric|in fahrenheit|in celsius|bullet points?|"
    r"call me|address me|i'?m trying to (eat|cut|avoid|lose)|fan of|mind|metric|imperial|plain english|jargon|"
    r"from now on|can'?t eat|cannot eat)\b|\b(under|below|max(imum)?|less than) [£$€]\s?\d",
    re.I,
)
_MEDICAL_FACT = re.compile(
    r"\b(allerg\w*|intoleran\w*|celiac|coeliac|diabet\w*|asthma\w*|pregnan\w*|blood pressure|diagnos\w*|"
    r"medication|prescri\w*|inhaler|epipen|condition|metformin|insulin|warfarin|statins?)\b",
    re.I,
)
# Long-term conditions people name when they talk about their health (for recall, not extraction).
_CONDITION = re.compile(
    r"\b(hypertension|arthritis|epilep\w*|migraines?|eczema|psoriasis|crohn'?s|colitis|ibs|copd|depression|anxiety|"
    r"adhd|autism|thyroid|hypothyroid\w*|cancer|gout|ana?emi[ac]|cholesterol|heart (disease|condition|failure)|"
    r"kidney disease|sleep apno?ea|lupus|osteoporosis|multiple sclerosis|parkinson'?s|dementia|endometriosis|"
    r"pcos|fibromyalgia|glaucoma|tinnitus|hiv|hepatitis)\b", re.I)


def states_health(text: str) -> bool:
    """Whether ``text`` names a health condition, an allergy, a pregnancy or a medicine."""
    # "in great condition" is about a car; a named condition or "a heart condition" is health
    bare = re.sub(r"\b(medical )?conditions?\b", "", text, flags=re.I)
    return _MEDICAL_FACT.search(bare) is not None or _CONDITION.search(text) is not None
_FACT_VERB = re.compile(
    r"^(?:and |but |also,? |so )?(?:i|we|me and \w+|my partner and i)(?:'m| am|'ve| have| had|'d| was| were| are|'re)?\s*"
    r"(?:also |now |just |recently |currently |still |actually )?"
    r"(am|'m|are|'re|have|'ve|has|had|got|own|rent|live|lived|work|worked|study|studied|cook|speak|drive|"
    r"use|take|was|were|run|teach|earn|grew up|come from|moved|became|became|go|attend|train|play|keep|volunteer|"
    r"sleep|suffer|need|can'?t|cannot|don'?t|do not|never|changed|switched|upgraded|quit|stopped|gave up|no longer|"
    r"only|want|want to|bought|sold|adopted|got|married|retired|joined|turned)\b",
    re.I,
)
_SPLIT = re.compile(r"(?<!\bMr\.)(?<!\bMrs\.)(?<!\bMs\.)(?<!\bDr\.)(?<!\bSt\.)(?<=[.!?;])\s+|\n+")
_ASK_TO_REMEMBER = re.compile(r"^(?:could|can|would|will) you (?:please )?((?:remember|note|keep in mind)\b.*?)\??$", re.I)
_LEADING_ADVERB = re.compile(
    r"^(?:now|these days|nowadays|also|and|but|so|anyway|btw|by the way|well|ok|okay|(?:it )?turns out(?: that)?|"
    r"fun fact|update|(?:big |good |some |quick |great )?news|guess what|heads up|just so you know|for context)[,:!\s]+",
    re.I,
)
_CONTEXT = re.compile(r"^(?:for|with|in|when it comes to|whenever you (?:give|suggest|write)) (?:\w+ ){0,3}?\w+,\s*"
                      r"(?=(?:please |can you |could you )?(?:always|never|give|use|answer|reply|keep|write|list|put|tell|include)\b)", re.I)
_NO_SUBJECT = re.compile(r"^(?:just )?(got|bought|moved|started|adopted|sold|finished|joined|left) ", re.I)
_INSTRUCTION = re.compile(
    r"^(?:please )?(?:give|explain|write|answer|reply|use|don'?t use|do not use|don'?t|never|always|keep|"
    r"stop|avoid|address|call|end|start|begin|finish)\b.*\b(from now on|to me|with me|for me|when you (reply|answer|respond)|"
    r"no jargon|emojis?|plain english|always|every time|in (fahrenheit|celsius|metric|imperial)|numbered|bullet points?|"
    r"steps|british|american|metric units?|me as|(every|each|all|your) (answers?|repl(y|ies)|responses?))\b",
    re.I,
)
_TAIL_QUESTION = re.compile(r"[,;:-]\s*(so|and|but)?\s*(what|which|how|can|could|should|is|are|do|does|any|where|when|who|would)\b.*$", re.I)


@dataclass
class Extracted:
    text: str
    kind: str  # "fact" or "preference"
    op: str  # "add", "update", "negate", "remember"
    attribute: str = ""


_ATTRIBUTES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\bcook for (\w+)|\b(family|household) of (\w+)|\bthere are (\w+) of us\b", re.I), "household_size"),
    (re.compile(r"\b(live|living|moved|reside|based|from|grew up|home is|relocated)\b.*\b(in|to)\b", re.I), "residence"),
    (re.compile(r"\b(?:i|we) (?:now |also |still )?teach (?!(?:my|myself|him|her|them|us|me|our|kids to)\b)|"
                r"\bi'?m (?:now )?(?:a )?teach(?:ing|er)\b|"
                r"\b(work|job|employ\w*|career|profession|am an? \w+ (nurse|teacher|engineer|developer|lawyer|doctor|chef))\b|\bi'?m an? (nurse|teacher|engineer|developer|lawyer|doctor|chef|student|accountant|designer|manager|programmer|writer|farmer|driver|retired)\b", re.I), "job"),
    (re.compile(r"\b(vegetarian|vegan|pescatarian|keto|paleo|plant-based|eat meat|eat fish|omnivore)\b", re.I), "diet"),
    (re.compile(r"\bbudget\b", re.I), "budget"),
    (re.compile(r"\b(married|divorced|single|engaged|widowed)\b", re.I), "marital_status"),
    (re.compile(r"\b(answers?|replies|responses|keep it)\b.*\b(short|brief|long|detailed|sentences?|words?)\b", re.I), "answer_length"),
    (re.compile(r"\b(fahrenheit|celsius|metric|imperial)\b", re.I), "units"),
    (re.compile(r"\b(call me|my name is|i'?m called)\b", re.I), "name"),
    (re.compile(r"\b(years? old|i'?m \d{1,3}\b|born in|turned \d{1,3}\b)", re.I), "age"),
]
# "my new GP is ..." names the same thing as "my GP is ...": the change words are not part of it
_NAMED_ATTR = re.compile(
    r"\bmy (?:(?:new|current|latest|present|usual|regular) )?((?:\w+'s )?\w+(?: \w+)?) "
    r"(?:is|are|was|has become) (?!not\b)", re.I)
_ALLERGY = re.compile(r"\ballerg\w* (?:to )?(\w+(?: \w+)?)|\b(\w+) allergy\b|\bintolerant to (\w+)|\b(\w+) intoleran", re.I)


def attribute_of(sentence: str) -> str:
    """The attribute a sentence states ("allergy:peanut", "residence", "my:oven"; "" if none): a
    newer memory with the same attribute supersedes the older one."""
    m = _ALLERGY.search(sentence)
    if m:
        item = next(g for g in m.groups() if g).lower()
        return f"allergy:{item.split()[0].rstrip('s')}"
    for pattern, name in _ATTRIBUTES:
        if pattern.search(sentence):
            return name
    m = _NAMED_ATTR.search(sentence)
    if m and not _PREFERENCE.search(sentence):
        return "my:" + m.group(1).lower()
    return ""


def _sentences(text: str) -> list[str]:
    out = []
    for part in _SPLIT.split(text.strip()):
        part = part.strip()
        if not part:
            continue
        ask = _ASK_TO_REMEMBER.match(part)
        if ask:
            out.append(ask.group(1))
            continue
        if part.endswith("?"):
            # "I have a shellfish allergy, so which starters are safe?" -> keep the statement
            stem = _TAIL_QUESTION.sub("", part).strip()
            if stem and stem != part and not stem.endswith("?"):
                out.append(stem)
            continue
        out.append(part)
    return out


def _classify(sentence: str, hints: Sequence[str]) -> tuple[str, str] | None:
    """(kind, op) for a sentence about the user, or None."""
    s = sentence.strip().rstrip(".!").strip()
    op = "add"
    m = _REMEMBER.match(s)
    if m:
        rest = s[m.end():].strip()
        if not rest or re.match(r"^(when|what|the|to|my (recipe|answer))\b", rest, re.I) and not re.match(r"^my\b", rest, re.I):
            return None
        s, op = rest, "remember"
        if not _SELF.match(s) and not re.match(r"^(no|always|never|keep|use|answer|reply|don'?t|avoid)\b", s, re.I):
            return None
        if re.match(r"^(no|always|never|keep|use|answer|reply|don'?t|avoid)\b", s, re.I):
            return ("preference", op) if not re.search(r"\b(step|recipe|salt|the)\b", s, re.I) or re.search(r"\bfor me\b", s, re.I) else None
    else:
        c = _CORRECTION.match(s)
        if c:
            s, op = s[c.end():].strip(), "update"
    s = _LEADING_ADVERB.sub("", s)
    s = _CONTEXT.sub("", s)  # "For recipes, please always give me numbered steps"
    if _NO_SUBJECT.match(s):
        s = "I " + s[0].lower() + s[1:]
    if _SMALL_TALK.match(s) and len(s.split()) <= 4:
        return None
    if op != "remember" and _INSTRUCTION.match(s):
        return "preference", op
    if re.match(r"^you (don'?t|do not|no longer) need to|^you can stop", s, re.I):
        return "preference", "negate"
    if _QUESTION_START.match(s) or _NOT_ABOUT_ME.match(s):
        return None
    if not _SELF.match(s) or _OTHER_PERSON.match(s):
        if op != "remember" and re.match(r"^(keep|always|never|please (keep|always|never|use|answer)|use|answer|no emojis)\b", s, re.I):
            return ("preference", op)
        return None
    if op == "add" and _TRANSIENT.search(s) and not _PREFERENCE.search(s) and not _MEDICAL_FACT.search(s):
        return None
    if op == "add" and re.match(r"^i (love|like|prefer|hate) (that|this|it|the|your|when)\b", s, re.I):
        return None
    if re.match(r"^i (moved|put|added|took|left|turned|set|used|made|tried|followed|burnt|burned) (the|it|that|this|your)\b", s, re.I):
        return None
    if op == "add" and re.match(r"^(i|we) (need|want|am looking|'m looking|have to|must|should)\b", s, re.I) and not _PREFERENCE.search(s):
        return None
    if op != "remember":
        if _NEGATE.search(s):
            op = "negate"
        elif op == "add" and _UPDATE.search(s):
            op = "update"
    if op in ("negate", "update", "remember") and _SELF.match(s):
        return ("preference" if _PREFERENCE.search(s) or re.search(r"\b(eat|drink|answers?)\b", s, re.I) else "fact"), op
    is_family = re.match(rf"^(my|our) {_FAMILY}\b", s, re.I) is not None
    if _MEDICAL_FACT.search(s) or is_family:
        return "fact", op
    if _PREFERENCE.search(s) or any(h.lower() in s.lower() for h in hints if h.lower() in ("vegetarian", "vegan")):
        return "preference", op
    if _FACT_VERB.match(s) or re.match(r"^(my|our) \w+", s, re.I):
        return "fact", op
    return None


# "I live in Paris and I have a small gas oven": two facts, so that a move supersedes the city
# and not the oven. Split before a new subject, or before a bare verb that continues "I ...".
_CLAUSE = re.compile(
    r"\s*(?:,\s*)?\b(?:and|but|plus|while)\s+(?=(?:also\s+)?(?:i|i'm|i've|i'd|we|we're|we've|my|our)\b)"
    r"|\s*(?:,\s*)?\band\s+(?=(?:live|work|have|cook|use|own|speak|drive|eat|study|teach|rent|keep|take)\b)",
    re.I,
)
_AUXILIARY = re.compile(r"\b(is|are|was|were|has|have|had|does|do|did|can|will|would|'s|'re|'ve)\b", re.I)
_NAME_ONLY = re.compile(r"^(?i:hi|hello|hey)?[,!\s]*(?i:i'?m|i am|my name is|this is|call me)\s+([A-Z][a-z]+(?: [A-Z][a-z]+)?)[.!]?$")
_BACK_REFERENCE = re.compile(r"\b(it|its|them|this|that|these|those|there|one|him|her)\b", re.I)


def _clauses(sentence: str) -> list[str]:
    parts = _CLAUSE.split(sentence)
    if len(parts) == 1:
        return parts
    first = parts[0].strip()
    has_verb = re.match(r"^(?:i|i'm|i've|i'd|we|we're|we've)\b", first, re.I) or re.search(r"\b(is|are|was|were|has|have)\b", first, re.I)
    if not has_verb or any(_BACK_REFERENCE.search(p) for p in parts[1:]):
        return [sentence]
    out = [parts[0]]
    for part in parts[1:]:
        part = part.strip()
        if re.match(r"^(?:my|our)\b", part, re.I) and not _AUXILIARY.search(part) and len(part.split()) < 4:
            out[-1] = f"{out[-1].rstrip()} and {part}"  # "I cook for me and my wife": "my wife" is not a clause
            continue
        if not re.match(r"^(?:also\s+)?(?:i|i'm|i've|i'd|we|we're|we've|my|our)\b", part, re.I):
            part = "I " + part
        out.append(part[0].upper() + part[1:])
    return [p for p in out if len(p.split()) >= 2]


def clauses(message: str) -> list[str]:
    """``message`` cut the way extraction reads it: sentences, then clauses with their own subject."""
    return [c.strip() for s in _sentences(message) for c in _clauses(s) if c.strip()]


def extract(message: str, hints: Sequence[str] = ()) -> list[Extracted]:
    """Facts and preferences stated in ``message`` (empty for questions and small talk)."""
    items: list[Extracted] = []
    sentences = []
    for s in _sentences(message):
        name = _NAME_ONLY.match(s.strip())
        if name:
            items.append(Extracted(text=f"My name is {name.group(1)}.", kind="fact", op="add", attribute="name"))
            continue
        sentences += _clauses(s)
    for sentence in sentences:
        if len(sentence) > 400:
            continue
        result = _classify(sentence, hints)
        if result is None:
            continue
        kind, op = result
        text = sentence.strip()
        if not text.endswith((".", "!")):
            text += "."
        items.append(Extracted(text=text, kind=kind, op=op, attribute=attribute_of(text)))
    return items
