"""What a question about the user asks for: the attribute extraction names it by ("What is my
trade?" asks for the job), whether it is about the user's own health, and what kind of thing an
answer must contain (a name, a relative, an amount, a phone number, an email address).

Used by ``memory.recall``; general, not tied to any pack or suite.
"""

from __future__ import annotations

import re
from typing import AbstractSet, Any

_MY_NP = re.compile(r"\b(?:my|our)\s+((?:[a-z]+'s\s+)?[a-z]+(?:\s+[a-z]+)?)", re.I)
_NAME_Q = re.compile(r"\b(name|called|named)\b", re.I)
_WHO_Q = re.compile(r"^\s*who\b", re.I)
_PERSON_WORD = re.compile(r"\b(wife|husband|partner|son|daughter|kids?|children|child|baby|mum|mom|mother|dad|father|"
                          r"parents?|brother|sister|twins?|grand\w+|aunt|uncle|cousin|stepson|stepdaughter)\b", re.I)
_AMOUNT_Q = re.compile(r"^\s*(how old|what age)\b|\bhow much\b|\bhow many\b(?! people)", re.I)
_NUMBER_WORD = re.compile(r"\d|\b(one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|dozen|twenty|thirty|"
                          r"forty|fifty|hundred|thousand|half|twice|once|single|a couple)\b", re.I)
_NOT_NAMES = frozenset("""i i'm i've i'd i'll my we we're we've our the a an on in at hi hello hey so and but big good
    news it this that just also quick update he she they you your yes no oh well ok okay btw by please""".split())


# What a question asks about, as extraction names it: a memory extracted with that attribute
# answers it whatever its words ("What is my trade?" ~ "I'm a self-employed electrician", job).
_ASKED_ATTRIBUTE: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(job|trade|profession|career|occupation|for a living|employer|employed)\b|\bfor work\b|"
                r"\b(do|did) (i|we) work\b(?! out)|\bwhat do (i|we) do\b(?! (for|about|with|if|when|to)\b)", re.I), "job"),
    (re.compile(r"\b(live|living(?<!a living)|reside)\b|\bwhere am i based\b|\bhome ?town\b|"
                r"\bwhat (city|town|country|state|part of \w+(?: \w+)?) (do|am) (i|we)\b", re.I), "residence"),
    (re.compile(r"\bdiet\b|\bdo (i|we) eat (meat|fish)\b", re.I), "diet"),
    (re.compile(r"\bhow old am i\b|\bmy age\b|\bwhat age am i\b", re.I), "age"),
    (re.compile(r"\bwhat(?:'s| is) my name\b|\bam i called\b|\bmy (first |last )?name\b(?!')", re.I), "name"),
    (re.compile(r"\b(how many (people|of us)|household|family of)\b", re.I), "household_size"),
    (re.compile(r"\b(am i|are we) (married|single|engaged|divorced)\b|\bmarital\b", re.I), "marital_status"),
    (re.compile(r"\bbudget\b", re.I), "budget"),
]
_OTHER = re.compile(r"\b(?:my|our) (?:\w+ )?(?:wife|husband|partner|spouse|son|daughter|kids?|children|child|baby|mum|mom|"
                    r"mother|dad|father|parents?|brother|sister|siblings?|friend|boss|manager|colleague|neighbou?r|"
                    r"landlord|landlady|tenant|flatmate|roommate|grand\w+|aunt|uncle|cousin|niece|nephew|fianc\w*|"
                    r"boyfriend|girlfriend|employer|employee|client|dog|cat|pet|horse)\b", re.I)
# A question about the user's health: a memory stating a condition, an allergy or a medicine answers
# it ("What medical condition do I have?" ~ "I have coeliac disease": cosine 0.19, no word shared).
_HEALTH_Q = re.compile(r"\b(conditions?|illness(es)?|diseases?)\b.*\b(do|did) (i|we) (have|suffer|live)\b|"
                       r"\b(medical|health) (problems?|issues?|history|conditions?)\b|\b(am|was|were) (i|we) diagnosed\b", re.I)


def asked_attributes(question: str) -> set[str]:
    """The attributes a question about the user asks for; none when it asks about someone else's,
    or names a thing of the user's that no attribute is ("Does my medication work?")."""
    q = question.replace("’", "'")
    if _OTHER.search(q):
        return set()
    asked = {name for pattern, name in _ASKED_ATTRIBUTE if pattern.search(q)}
    for m in _MY_NP.finditer(q):
        if not any(pattern.search("my " + m.group(1)) for pattern, _ in _ASKED_ATTRIBUTE):
            return set()
    return asked


def _on_topic(question: str, asked: AbstractSet[str], memory: Any, words: str) -> bool:
    """Whether the memory states what the question asks about (by attribute or, for health, by what it names)."""
    from memory.extract import states_health

    if memory.attribute and memory.attribute in asked:
        return True
    own = not _OTHER.search(question.replace("’", "'"))
    return own and bool(_HEALTH_Q.search(question)) and states_health(words)


_PHONE_Q = re.compile(r"\b(phone|mobile|cell|telephone|landline)( number)?\b|\bnumber (to call|to ring)\b", re.I)
_EMAIL_Q = re.compile(r"\be-?mail( address)?\b", re.I)
_PHONE = re.compile(r"(?:\+?\d[\d ()-]{5,}\d)")


def answer_type(question: str) -> str:
    """What an answer to ``question`` must contain: "phone" (a phone number), "email", "name" (a
    proper name), "amount" (a number), or "" (anything)."""
    if _PHONE_Q.search(question):
        return "phone"
    if _EMAIL_Q.search(question) and re.search(r"\b(what|which)\b", question, re.I):
        return "email"
    if _NAME_Q.search(question):
        return "name"
    if _WHO_Q.search(question):
        if re.match(r"^\s*who(?:'s| is| are| was| were) (?:my|our)\b", question, re.I):
            return "name"  # "Who is my dentist?" needs a name
        return "person"  # "Who in my family has a food allergy?" ~ "My daughter is allergic to eggs"
    if _AMOUNT_Q.search(question):
        return "amount"
    return ""


def has_answer_type(text: str, wanted: str) -> bool:
    if wanted == "phone":  # "£1,050 a month" is no phone number
        return any(len(re.sub(r"\D", "", m)) >= 6 for m in _PHONE.findall(text))
    if wanted == "email":
        return re.search(r"[\w.+-]+@[\w-]+\.[\w.]+", text) is not None
    if wanted == "person":
        return has_answer_type(text, "name") or _PERSON_WORD.search(text) is not None
    if wanted == "amount":
        return _NUMBER_WORD.search(text) is not None
    if wanted == "name":
        words = re.findall(r"\b[A-Z][\w'.-]*", text)
        return any(w.lower().rstrip(".,'") not in _NOT_NAMES for w in words)
    return True


