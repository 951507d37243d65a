"""The user's stated answer style, applied to the answer as it streams: right by construction, not
by hoping that a 135M model follows "How I want answers: ..." in its prompt.

What can be done to any answer without knowing its content is done here:

- **numbered steps** ("For recipes, please always give me numbered steps"): an answer of two or
  more sentences becomes "1. ...", "2. ...", one per line;
- **bullet points** ("answer in bullet points"): the same with "- ";
- **temperature units** ("Always give temperatures in Fahrenheit"): every temperature is given in
  that unit first, the other in brackets ("220 °C" -> "425 °F (220 °C)"; oven heats are rounded
  as recipes give them, other temperatures to the degree);
- **metric units** ("Please use metric units: grams and millilitres, never cups"): cups,
  spoons, ounces, pounds, pints and inches in ml, g and cm (1 cup = 240 ml), temperatures in °C;
- **British words** ("Please use British words like courgette and aubergine"): the common
  American kitchen and everyday words are swapped for the British ones.

Also: the form of address the user asked for ("Please address me as Mrs. Díaz") starts the
answer, no exclamation marks or emojis when asked, and a closing line the user asked for ("end
every answer with a short line that starts with 'In short:'") repeats the answer's first sentence.

Sentence limits are kept by ``answering.GroundedStream``; what needs the model (a carb count, the
servings) stays in the prompt.
"""

from __future__ import annotations

import re
from typing import Sequence

_NUMBERED = re.compile(r"\bnumbered\b|\bnumber(ed)? (the |my |your )?steps\b|\bstep[- ]by[- ]step\b", re.I)
_BULLETS = re.compile(r"\bbullet(s|ed| points?)?\b|\bas a (bulleted )?list\b", re.I)
_FAHRENHEIT = re.compile(r"\bfahrenheit\b|°\s?F\b", re.I)
_CELSIUS = re.compile(r"\b(celsius|centigrade)\b|°\s?C\b", re.I)
_METRIC = re.compile(r"\bmetric\b|\b(grams|millilitres|milliliters|kilograms|litres|liters)\b|\bno cups\b|\bnever cups\b", re.I)
_BRITISH = re.compile(r"\bbritish\b|\buk (english|words|spelling|terms)\b", re.I)
_NEGATED = re.compile(r"\b(no|not|never|don'?t|stop|without)\b", re.I)

_US_TO_UK = {
    "zucchini": "courgette", "zucchinis": "courgettes", "eggplant": "aubergine", "eggplants": "aubergines",
    "cilantro": "coriander", "arugula": "rocket", "scallion": "spring onion", "scallions": "spring onions",
    "bell pepper": "pepper", "bell peppers": "peppers", "cookie": "biscuit", "cookies": "biscuits",
    "fries": "chips", "potato chips": "crisps", "candy": "sweets", "broil": "grill", "broiler": "grill",
    "plastic wrap": "cling film", "aluminum foil": "tin foil", "aluminum": "aluminium", "skillet": "frying pan",
    "stovetop": "hob", "powdered sugar": "icing sugar", "confectioners' sugar": "icing sugar",
    "all-purpose flour": "plain flour", "cornstarch": "cornflour", "ground beef": "beef mince",
    "heavy cream": "double cream", "shrimp": "prawns", "garbanzo beans": "chickpeas", "beet": "beetroot",
    "beets": "beetroot", "rutabaga": "swede", "molasses": "treacle", "takeout": "takeaway", "check": "bill",
    "mold": "mould", "molds": "moulds", "moldy": "mouldy", "gray": "grey", "defense": "defence", "offense": "offence",
    "attorney": "solicitor", "attorneys": "solicitors", "apartment": "flat", "apartments": "flats",
    "color": "colour", "flavor": "flavour", "flavors": "flavours", "favorite": "favourite", "center": "centre",
}
# ("power of attorney" is the British term too)
_UK_PATTERN = re.compile(r"(?<!power of )(?<!powers of )(?<!letter of )\b("
                         + "|".join(sorted(map(re.escape, _US_TO_UK), key=len, reverse=True)) + r")\b", re.I)
# "74 °C (165 °F)", "220°C", "425 degrees F", "-18 °C"
_TEMP = re.compile(r"(-?\d+(?:\.\d+)?)\s?(?:°\s?|degrees? )(C|F)\b(?:\s*\((-?\d+(?:\.\d+)?)\s?(?:°\s?|degrees? )(C|F)\))?")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _wants(style: Sequence[str], pattern: re.Pattern[str]) -> bool:
    """A style text asks for it ("use bullet points"), not against it ("don't use bullet points")."""
    for s in style:
        m = pattern.search(s)
        if m and not _NEGATED.search(" ".join(s[: m.start()].split()[-4:])):
            return True
    return False


def _convert(value: float, unit: str) -> int:
    """Celsius <-> Fahrenheit as recipes and food-safety tables give them: oven heats (250 °F /
    120 °C and up) to the nearest 25 °F or 10 °C (220 °C -> 425 °F, 350 °F -> 180 °C), the rest to
    the degree (74 °C -> 165 °F, 165 °F -> 74 °C, -18 °C -> 0 °F)."""
    if unit == "C":
        f = value * 9 / 5 + 32
        return int(25 * round(f / 25)) if f >= 250 else round(f)
    c = (value - 32) * 5 / 9
    return int(10 * round(c / 10)) if c >= 120 else round(c)


def temperatures_in(text: str, unit: str) -> str:
    """Every temperature in ``text`` given in ``unit`` ("C" or "F") first, the other in brackets."""
    other = "F" if unit == "C" else "C"

    def one(m: re.Match[str]) -> str:
        value, given, paired, paired_unit = m.group(1), m.group(2).upper(), m.group(3), m.group(4)
        if given == unit:
            return m.group(0)
        if paired and paired_unit and paired_unit.upper() == unit:
            return f"{paired} °{unit} ({value} °{given})"
        return f"{_convert(float(value), given)} °{unit} ({value} °{other})"

    return _TEMP.sub(one, text)


# US cooking measures and what they are in metric ("2 cups" -> "480 ml").
_MEASURE = re.compile(
    r"(?<![\w/])(\d+(?:\.\d+)?(?:\s+\d/\d)?|\d/\d|half an?|a quarter of an?|a|an|one|two|three|four)\s+"
    r"(cups?|tablespoons?|tbsp|teaspoons?|tsp|fl(?:uid)? ?oz|ounces?|oz|pounds?|lbs?|inch(?:es)?|quarts?|pints?|"
    r"miles?|feet|foot|ft|yards?|gallons?)\b"
    r"(?:\s+of)?", re.I)
_TO_METRIC = {"cup": (240, "ml"), "tablespoon": (15, "ml"), "tbsp": (15, "ml"), "teaspoon": (5, "ml"), "tsp": (5, "ml"),
              "fl oz": (30, "ml"), "floz": (30, "ml"), "fluid oz": (30, "ml"), "ounce": (28, "g"), "oz": (28, "g"),
              "pound": (454, "g"), "lb": (454, "g"), "inch": (2.54, "cm"), "quart": (950, "ml"), "pint": (475, "ml"),
              "mile": (1.6, "km"), "feet": (0.3, "m"), "foot": (0.3, "m"), "ft": (0.3, "m"), "yard": (0.9, "m"),
              "gallon": (3.8, "litres")}
_WORD_AMOUNT = {"half a": 0.5, "half an": 0.5, "a quarter of a": 0.25, "a quarter of an": 0.25, "a": 1, "an": 1,
                "one": 1, "two": 2, "three": 3, "four": 4}


def _amount(text: str) -> float:
    text = text.lower().strip()
    if text in _WORD_AMOUNT:
        return _WORD_AMOUNT[text]
    total = 0.0
    for part in text.split():
        if "/" in part:
            num, den = part.split("/")
            total += int(num) / int(den)
        else:
            total += float(part)
    return total


def metric(text: str) -> str:
    """US cooking measures in metric ("1/2 cup of milk" -> "120 ml milk"), temperatures in °C."""
    def one(m: re.Match[str]) -> str:
        unit = m.group(2).lower().rstrip("s").replace("inche", "inch").replace("lb", "lb")
        unit = "fl oz" if unit.startswith("fl") else unit
        factor, name = _TO_METRIC.get(unit, _TO_METRIC.get(unit.rstrip("e"), (0, "")))
        if not factor:
            return m.group(0)
        value = _amount(m.group(1)) * factor
        if name in ("cm", "km", "m", "litres"):
            shown = f"{value:.1f}".rstrip("0").rstrip(".")
        elif name == "g" and value >= 1000 or name == "ml" and value >= 1000:
            shown, name = f"{value / 1000:.2f}".rstrip("0").rstrip("."), "kg" if name == "g" else "litres"
        else:
            shown = str(int(5 * round(value / 5)) if value >= 20 else round(value))
        return f"{shown} {name}"

    return temperatures_in(_MEASURE.sub(one, text), "C")


_ARTICLE = re.compile(r"\b(an?|An?) (" + "|".join(sorted({re.escape(v) for v in _US_TO_UK.values()}, key=len, reverse=True))
                      + r")\b")


def british(text: str) -> str:
    def one(m: re.Match[str]) -> str:
        word = _US_TO_UK[m.group(1).lower()]
        return word[0].upper() + word[1:] if m.group(1)[0].isupper() else word

    out = _UK_PATTERN.sub(one, text)
    if out == text:
        return text

    def article(m: re.Match[str]) -> str:  # "an attorney" -> "a solicitor"
        a = "an" if m.group(2)[0].lower() in "aeiou" else "a"
        return (a.capitalize() if m.group(1)[0].isupper() else a) + " " + m.group(2)

    return _ARTICLE.sub(article, out)


_ADDRESS = re.compile(r"\b(?:call|address) me (?:as )?((?:Mr|Mrs|Ms|Dr|Miss|Prof)\.? [A-Z][\w'-]+|[A-Z][\w'-]+)")
_NO_EXCLAIM = re.compile(r"\b(no|don'?t use|never use|without|avoid) (any )?exclamation( marks?| points?)?\b", re.I)
_NO_EMOJI = re.compile(r"\b(no|don'?t use|never use|without|avoid) (any )?emojis?\b", re.I)
_CLOSING = re.compile(r"\b(?:end|finish|close) (?:every|each|all|your|my)? ?(?:answers?|repl(?:y|ies)|responses?) with .{0,40}?"
                      r"(?:starts?|starting|begins?|beginning) with ['\"“‘]([^'\"”’]{1,30})['\"”’]", re.I)
_OPENING = re.compile(r"\b(?:start|begin|open) (?:every|each|all|your|my)? ?(?:answers?|repl(?:y|ies)|responses?) with "
                      r"['\"“‘]([^'\"”’]{1,30})['\"”’]", re.I)
_EMOJI = re.compile("[\U0001F300-\U0001FAFF\u2600-\u27BF]\ufe0f?")


class Formatter:
    """Feeds the answer's pieces through; ``feed`` and ``flush`` return what to show."""

    def __init__(self, style: Sequence[str]) -> None:
        self.list_mark = "1." if _wants(style, _NUMBERED) else "-" if _wants(style, _BULLETS) else ""
        fahrenheit, celsius = _wants(style, _FAHRENHEIT), _wants(style, _CELSIUS)
        self.unit = "F" if fahrenheit and not celsius else "C" if celsius and not fahrenheit else ""
        self.metric = _wants(style, _METRIC)
        self.british = _wants(style, _BRITISH)
        self.address = next((m.group(1) for s in style for m in [_ADDRESS.search(s)] if m), "")
        self.no_exclaim = any(_NO_EXCLAIM.search(s) for s in style)
        self.no_emoji = any(_NO_EMOJI.search(s) for s in style)
        self.closing = next((m.group(1).strip() for s in style for m in [_CLOSING.search(s)] if m), "")
        self.opening = next((m.group(1).strip() for s in style for m in [_OPENING.search(s)] if m), "")
        self._first = ""  # the answer's first sentence (for a closing line)
        self._pending = ""  # text not yet a whole sentence (lists only)
        self._items: list[str] = []  # sentences held until a second one shows it is a list
        self._shown = 0

    @property
    def active(self) -> bool:
        return bool(self.list_mark or self.unit or self.metric or self.british or self.address or self.no_exclaim
                    or self.no_emoji or self.closing or self.opening)

    def _words(self, text: str) -> str:
        if self.no_exclaim:
            text = text.replace("!", ".")
        if self.no_emoji:
            text = re.sub(r"\s{2,}", " ", _EMOJI.sub("", text))
        if not self._first and text.strip():
            self._first = text.strip()
            if self.address and not self.list_mark and not text.startswith(self.address):
                rest = text.lstrip()
                if len(rest) > 1 and rest[1].islower() and not re.match(r"^I\b", rest):
                    rest = rest[0].lower() + rest[1:]
                text = f"{self.address}, {rest}"
            if self.opening and not self.list_mark and not text.lstrip().startswith(self.opening):
                text = f"{self.opening} {text.lstrip()}"
        if self.metric:
            text = metric(text)
        if self.unit:
            text = temperatures_in(text, self.unit)
        return british(text) if self.british else text

    def _item(self, sentence: str) -> str:
        self._shown += 1
        mark = f"{self._shown}." if self.list_mark == "1." else "-"
        return ("\n" if self._shown > 1 else "") + f"{mark} {sentence}"

    def feed(self, piece: str) -> str:
        self._pending += piece  # whole sentences only: "2" + "20 °C" is one temperature
        parts = _SENTENCE.split(self._pending)
        self._pending = parts.pop()
        done = [self._words(p.strip()) for p in parts if p.strip()]
        if not done:
            return ""
        if not self.list_mark:
            out = "".join((" " if self._shown else "") + d for d in done)
            self._shown += len(done)
            return out
        if self._shown == 0 and len(self._items) + len(done) < 2:
            self._items += done  # one sentence is no list: wait for a second
            return ""
        out = "".join(self._item(s) for s in self._items + done)
        self._items = []
        return out

    def flush(self) -> str:
        return self._flush() + self._closing_line()

    def _closing_line(self) -> str:
        if not self.closing or not self._first:
            return ""
        label = self.closing if self.closing.endswith(":") else self.closing + ":"
        return f"\n{label} {self._first}"

    def _flush(self) -> str:
        rest = self._words(self._pending.strip()) if self._pending.strip() else ""
        self._pending = ""
        if not self.list_mark:
            return (" " if self._shown and rest else "") + rest
        held = self._items + ([rest] if rest else [])
        self._items = []
        if self._shown == 0 and len(held) < 2:
            return " ".join(held)  # a one-sentence answer stays a sentence
        return "".join(self._item(s) for s in held)
