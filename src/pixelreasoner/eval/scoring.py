r"""Answer checking: the evaluation metric and the RL correctness reward.

The answer is the content of the last ``\boxed{...}`` in the model's generated text — never the
prompt, which itself asks for ``\boxed{}``, and never the whole response when there is no box.
It is compared with the gold answer (a string or a list of accepted strings) in this order:
choice letters when the item has options; numbers (fractions, percents, units, scientific
notation, the words zero to twenty) with a relative tolerance; normalized strings; multi-span
answers as unordered sets. InfographicVQA is scored with :func:`anls` instead.

Everything here is a pure function of strings and nothing raises on model output.

>>> score_response(r"Zooming in, the label reads 12 cm. \boxed{12}", "12 cm")
(True, '12')
>>> score_response("I think it is 12.", "12")
(False, None)
>>> score_answer("(B) red", "B", choices=["blue", "red"])
True
>>> score_answer("1", "1, 2"), score_answer("2 and 1", "1, 2")
(False, True)

The released checker (``handle_boxed``/``do_verify`` in the release's
``curiosity_driven_rl/openrlhf/trainer/ppo_utils/experience_maker.py``) hands the text from the
last "boxed" onwards to math_verify. Its LaTeX equivalences are kept: ``x^{2}`` is ``x^2``,
``\{1,2\}`` is ``{1,2}``, ``\boxed{{5}}`` is 5, ``\boxed 5`` is a box, and ``\varnothing`` and
``∅`` are ``\emptyset``.

Defects of the released checker that are not repeated here (SPEC §5): it parsed the whole
response when there was no box; its choice-letter branch never ran; it stripped unit names
inside words ("percentage" became "age"); a multi-span gold such as "1, 2" accepted any answer.

Other deliberate differences from the released checker:

- the words zero to twenty are numbers ("three" is 3); the release never reads number words;
- a percent on one side also matches its bare number (45% and 45) for any gold; the release
  added the bare number only for a gold given as a list;
- a last box that never closes holds no answer; the release read on to the end of the response;
- a box without braces holds one token (``\boxed 5 apples and 7 pears`` is 5); the release read
  on to the end and could take a later number (7).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

REL_TOL = 1e-4
"""Relative tolerance for numeric answers (3.0 == 3, 0.75 == 3/4, but 0.33 != 1/3)."""

ANLS_THRESHOLD = 0.5
"""Normalized Levenshtein distance at or above which an ANLS item scores 0 (DocVQA/InfoVQA)."""

# "The answer is B" is read as a letter only in a short box: a long sentence that merely starts
# with "the answer is" is reasoning, not a choice.
_MAX_PHRASE_CHARS = 60
# A trailing unit is at most this many words ("12 cm", "3 square metres", "5 red cars").
_MAX_UNIT_WORDS = 3

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Whole-answer number words only: "one" inside a sentence ("one of them") is not a number.
# fmt: off
_NUMBER_NAMES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
)
# fmt: on
_NUMBER_WORDS = {word: float(value) for value, word in enumerate(_NUMBER_NAMES)}

# ---------------------------------------------------------------------------------------------
# Box extraction
# ---------------------------------------------------------------------------------------------

# "\boxed" or "\fbox" as a whole command word ("\boxedfoo" is another command), then its argument.
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")
# Sentence punctuation after an unbraced argument ("\boxed 5." or "\boxed 5, so ...").
_TRAILING_PUNCT = ".,;:!?"


def _braced_group(text: str, start: int) -> int | None:
    """The index of the ``}`` closing the ``{`` at ``text[start]``; ``\\{``/``\\}`` are literal."""
    depth = 0
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\":  # an escaped character (\{, \}, \\) never opens or closes a group
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _unbraced_argument(text: str, start: int) -> str | None:
    r"""The argument of a box written without braces (``\boxed 5``): one token, up to a space,
    ``$`` or an unmatched ``}`` outside braces, so ``\boxed\frac{1}{2}`` keeps its fraction
    whole. Trailing sentence punctuation is dropped; ``None`` when nothing is left or a brace
    never closes."""
    i = start
    while i < len(text) and not text[i].isspace() and text[i] not in "$}":
        if text[i] == "\\":
            i += 2
        elif text[i] == "{":
            close = _braced_group(text, i)
            if close is None:
                return None
            i = close + 1
        else:
            i += 1
    return text[start:i].rstrip(_TRAILING_PUNCT) or None


def extract_boxed(text: str) -> str | None:
    r"""The content of the last ``\boxed{...}`` (or ``\fbox{...}``) in ``text``.

    Braces nest; ``\{`` and ``\}`` are literal. A box written without braces takes one token,
    as LaTeX does, but a whole number or command: ``\boxed 12.`` gives ``12`` and
    ``\boxed\frac{1}{2}`` gives ``\frac{1}{2}``. ``None`` when there is no box, or the last
    one is never closed or holds nothing but punctuation. Redundant braces
    (``\boxed{{5}}``) are kept here and dropped by :func:`normalize`. Pass only the model's
    generated text: the prompt contains ``\boxed{}``.

    >>> extract_boxed(r"so \boxed{3} ... no, \boxed{\frac{1}{2}}.")
    '\\frac{1}{2}'
    >>> extract_boxed(r"\boxed {B}"), extract_boxed(r"\fbox{7}"), extract_boxed(r"\boxed{}")
    ('B', '7', '')
    >>> extract_boxed(r"the answer is $\boxed 12$."), extract_boxed(r"\boxed{{5}}")
    ('12', '{5}')
    >>> extract_boxed("no box here") is None, extract_boxed(r"\boxed{1} \boxed{2") is None
    (True, True)
    """
    commands = list(_BOX_COMMAND.finditer(text))
    if not commands:
        return None
    start = commands[-1].end()
    if text[start : start + 1] != "{":
        return _unbraced_argument(text, start)
    close = _braced_group(text, start)
    return None if close is None else text[start + 1 : close]


# ---------------------------------------------------------------------------------------------
# Normalization
# ---------------------------------------------------------------------------------------------

_WRAPPER = re.compile(
    r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox|operatorname)\s*\{([^{}]*)\}"
)
_LATEX_SPACE = re.compile(r"\\(?:[,;:! ]|quad\b|qquad\b)")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)\b")
# 1,234 and 12,345,678.5 but not 1,23 / 1,2345 / "1, 234" (a list) / the digits of 0.123,456.
_THOUSANDS = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?!\d|,\d)")
_PERCENT = re.compile(r"(?<=\d)\s*(?:%|percent\b)")
_COMMA = re.compile(r"\s*,\s*")
# x^{2} is x^2 and a_{1} is a_1; only a one-character script, since x^10 is x^1 followed by 0.
_ONE_CHAR_SCRIPT = re.compile(r"([\^_])\s*\{\s*([A-Za-z0-9])\s*\}")
_EMPTY_SET = re.compile(r"\\(?:varnothing|emptyset)(?![A-Za-z])|\u2205")
_NESTING = {"{": 1, "(": 1, "[": 1, "}": -1, ")": -1, "]": -1}


def _has_top_level_list(s: str) -> bool:
    """Whether ``s`` has a comma or semicolon outside any brackets (escapes skipped)."""
    depth = 0
    for char in re.sub(r"\\.", "", s):
        depth += _NESTING.get(char, 0)
        if depth == 0 and char in ",;":
            return True
    return False


def _strip_group_braces(s: str) -> str:
    r"""``s`` without LaTeX grouping braces around all of it: ``{{5}}`` is ``5``. Braces around
    a list stay: ``{1,2}`` is the set ``\{1,2\}`` (and :func:`normalize` writes it so)."""
    while s.startswith("{") and _braced_group(s, 0) == len(s) - 1 and not _has_top_level_list(s[1:-1]):
        s = s[1:-1].strip()
    return s


def normalize(text: str) -> str:
    r"""Canonical form for string comparison.

    Lowercase, strip, drop surrounding ``$``/``\(...\)``/``\[...\]``, unwrap ``\text{}`` and
    ``\mathrm{}``, collapse whitespace, drop a trailing period, remove thousands separators
    (only 3-digit groups), write ``\%``, ``45 %`` and ``45 percent`` as ``45%``, and put one
    space after each comma. LaTeX spellings of one thing become one: braces around a
    one-character script go (``x^{2}`` is ``x^2``; ``x^{10}`` stays, as ``x^10`` is ``x^1 0``),
    grouping braces around the whole answer go (``{{5}}`` is ``5``), a list in plain braces is
    the set ``\{...\}``, and ``\varnothing`` and ``∅`` are ``\emptyset``. Unit names are never
    touched, so words stay whole. Normalizing twice changes nothing.

    >>> normalize(r"  $\text{The  Red Car}$. ")
    'the red car'
    >>> normalize("1,234,567"), normalize("1,23"), normalize(r"45\%"), normalize("(1,2)")
    ('1234567', '1, 23', '45%', '(1, 2)')
    >>> normalize("Percentage"), normalize("income")
    ('percentage', 'income')
    >>> print(normalize("x^{2}"), normalize("{{5}}"), normalize("{1,2}"), normalize(r"\varnothing"))
    x^2 5 \{1, 2\} \emptyset
    """
    s = _LATEX_SPACE.sub(" ", text)
    s = _LEFT_RIGHT.sub("", s)
    unwrapped = None
    while unwrapped != s:  # innermost wrappers first, so \text{\textbf{x}} unwraps fully
        unwrapped, s = s, _WRAPPER.sub(r"\1", s)
    s = _ONE_CHAR_SCRIPT.sub(r"\1\2", s)
    s = _EMPTY_SET.sub(r"\\emptyset", s)
    s = s.replace("\\%", "%").replace("\\$", "$").replace("\u2212", "-").lower()
    s = s.strip().rstrip(".").strip()
    s = s.strip("$").strip()
    for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right):
            s = s[len(left) : -len(right)].strip()
    s = _strip_group_braces(s)
    if s.startswith("{") and _braced_group(s, 0) == len(s) - 1:  # a list in plain braces: a set
        s = f"\\{{{s[1:-1]}\\}}"
    s = " ".join(s.split()).rstrip(".").rstrip()
    s = _THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), s)
    s = _PERCENT.sub("%", s)
    return _COMMA.sub(", ", s).strip()


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------

_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_SIGNED = rf"[-+]?\s*{_NUM}"
# Leading "≈", "~" or "x =", then a sign, a currency symbol, a sign ("-$12", "$-12").
_HEAD = re.compile(r"(?:(?:\\approx|≈|~)\s*|[a-z]\s*=\s*)?(?P<s1>[-+]?)\s*(?:[$€£¥]\s*(?P<s2>[-+]?)\s*)?")
_CORE = re.compile(
    rf"\\[dt]?frac\s*\{{\s*(?P<fn>{_SIGNED})\s*\}}\s*\{{\s*(?P<fd>{_SIGNED})\s*\}}"
    rf"|\\[dt]?frac(?P<fn1>\d)(?P<fd1>\d)"
    rf"|(?P<m>{_NUM})\s*(?:\\times|\\cdot|×|\*|x)\s*10\s*\^\s*\{{?\s*(?P<e>[-+]?\d+)\s*\}}?"
    rf"|(?P<n>{_NUM})\s*/\s*(?P<d>{_NUM})"
    rf"|(?P<p>{_NUM}(?:e[-+]?\d+)?)"
)
_DEGREE = re.compile(r"(?:\^\s*\{?\s*\\circ\s*\}?|°)\s*")
# A unit is letters only, optionally squared/cubed or per-something: cm, kg, m^2, km/h, °c.
_UNIT_WORD = r"[^\W\d_]+(?:\^\{?[23]\}?|[²³])?(?:/[^\W\d_]+(?:\^\{?[23]\}?|[²³])?)?"
_UNIT = re.compile(rf"{_UNIT_WORD}(?:\s+{_UNIT_WORD}){{0,{_MAX_UNIT_WORDS - 1}}}")


@dataclass(frozen=True)
class _Number:
    value: float
    percent: bool


def _to_float(text: str) -> float:
    return float(text.replace(" ", ""))


def _core_value(core: re.Match[str]) -> float | None:
    """The value of a matched number core; ``None`` for a zero denominator."""
    if core["fn"] is not None or core["fn1"] is not None:
        num, den = _to_float(core["fn"] or core["fn1"]), _to_float(core["fd"] or core["fd1"])
    elif core["m"] is not None:
        return _to_float(f"{core['m']}e{core['e']}")  # float() gives inf where 10.0 ** e would raise
    elif core["n"] is not None:
        num, den = _to_float(core["n"]), _to_float(core["d"])
    else:
        return _to_float(core["p"])
    return num / den if den else None


def _parse(text: str) -> _Number | None:
    """A whole answer read as one number with an optional trailing percent sign or unit."""
    s = normalize(text)
    if s in _NUMBER_WORDS:
        return _Number(_NUMBER_WORDS[s], percent=False)
    head = _HEAD.match(s)
    if head is None:  # pragma: no cover - every part of _HEAD is optional
        return None
    rest = s[head.end() :]
    core = _CORE.match(rest)
    if core is None:
        return None
    value = _core_value(core)
    if value is None:
        return None
    negative = (head["s1"] == "-") != (head["s2"] == "-")
    suffix = rest[core.end() :].strip()
    percent = suffix.startswith("%")
    degree = _DEGREE.match(suffix)
    suffix = suffix[1:].strip() if percent else suffix[degree.end() :] if degree else suffix
    if suffix and not _UNIT.fullmatch(suffix):
        return None
    return _Number(-value if negative else value, percent)


def parse_number(text: str) -> float | None:
    r"""The number a whole answer states, or ``None`` if it is not a single number.

    Integers, decimals, signs, ``3/4``, ``\frac{3}{4}``/``\dfrac``, scientific notation
    (``1e3``, ``1.5 \times 10^{3}``), thousands separators, currency (``$12``), degrees, and the
    words zero to twenty (only as the whole answer). A percent keeps the number shown; use
    :func:`numbers_match` for 45% == 0.45. A trailing unit (letters after the number, at most
    three words) is ignored; text *before* the number, or another number after it, makes it a
    sentence, which is not parsed: a box holding "there are 12 apples" is not 12.

    >>> parse_number(r"\dfrac{3}{4}"), parse_number("-1,234.5"), parse_number("45%")
    (0.75, -1234.5, 45.0)
    >>> parse_number("3.5kg"), parse_number("$12"), parse_number("1e3"), parse_number("twelve")
    (3.5, 12.0, 1000.0, 12.0)
    >>> parse_number("income 12") is None, parse_number("3 or 4") is None, parse_number("1/0") is None
    (True, True, True)
    """
    number = _parse(text)
    return None if number is None else number.value


def _close(a: float, b: float, rel_tol: float) -> bool:
    return math.isclose(a, b, rel_tol=rel_tol)


def numbers_match(a: str, b: str, rel_tol: float = REL_TOL) -> bool:
    """Whether two answers state the same number (relative tolerance ``rel_tol``).

    A percent on one side only also matches its fraction (45% and 0.45) or its bare number
    (45% and 45, since "what percentage ..." golds are written both ways).

    >>> numbers_match("45%", "0.45"), numbers_match("0.45", "45"), numbers_match("3/4", "0.75")
    (True, False, True)
    """
    x, y = _parse(a), _parse(b)
    if x is None or y is None:
        return False
    if _close(x.value, y.value, rel_tol):
        return True
    if x.percent == y.percent:
        return False
    pct, plain = (x, y) if x.percent else (y, x)
    return _close(pct.value / 100.0, plain.value, rel_tol)


# ---------------------------------------------------------------------------------------------
# Multiple choice
# ---------------------------------------------------------------------------------------------

# Explicit letter forms, tried with fullmatch on normalized text ("B." has lost its period).
_LETTER_FORMS = (
    re.compile(r"[(\[]([a-z])[)\]]\s*.*"),  # (b), [b], (b) red
    re.compile(r"([a-z])[.:)](?:\s+.*)?"),  # b) ; b: ; b. red ; b) red
    re.compile(r"([a-z])"),  # b
)
_PHRASE = re.compile(
    r"(?:the\s+)?(?:(?:correct|final|right|best)\s+)?(?:answer|option|choice)\b\s*(?:is\b\s*)?[:\-]?\s*"
    r"(?:(?:option|choice)\s+)?(?:[(\[]([a-z])[)\]]|([a-z])(?=$|[.:)]))"
)
_MARKED_LETTER = re.compile(r"[(\[]([a-z])[)\]]")
_ANSWER_PREFIX = re.compile(r"(?:the\s+)?(?:(?:correct|final)\s+)?answer\b\s*(?:is\b\s*)?[:\-]?\s*")
_OPTION_MARK = re.compile(r"(?:[(\[]([a-z])[)\]]|([a-z])[.:)])\s*(.+)")


def _explicit_letter(s: str) -> str | None:
    if len(set(_MARKED_LETTER.findall(s))) > 1:  # "(A) or (B)" hedges; it names no single letter
        return None
    for form in _LETTER_FORMS:
        match = form.fullmatch(s)
        if match:
            return match[1]
    if len(s) <= _MAX_PHRASE_CHARS:
        match = _PHRASE.match(s)
        if match:
            return match[1] or match[2]
    return None


def _in_range(letter: str, choices: Sequence[str] | None) -> bool:
    return choices is None or _LETTERS.index(letter) < len(choices)


def _option_text(option: str, index: int) -> str:
    """An option normalized, without its own "(B) " marker when the data includes one."""
    s = normalize(option)
    match = _OPTION_MARK.fullmatch(s)
    if match and (match[1] or match[2]) == _LETTERS[index]:
        return match[3]
    return s


def _match_option(s: str, options: list[str]) -> int | None:
    """The one option equal to ``s`` (as text, else as a number); ``None`` if none or several."""
    for same in (lambda o: o == s, lambda o: numbers_match(o, s)):
        hits = [i for i, option in enumerate(options) if same(option)]
        if hits:
            return hits[0] if len(hits) == 1 else None
    return None


def choice_letter(text: str, choices: Sequence[str] | None = None) -> str | None:
    r"""The multiple-choice letter an answer names (uppercase), or ``None``.

    Explicit forms: ``B``, ``b``, ``(B)``, ``[B]``, ``B.``, ``B)``, ``B:``, ``B. red``,
    ``(B) red``, and in a short answer ``Option B`` / ``the answer is (B)``. A letter must be
    followed by punctuation or the end, so "Blue" is not B and "A cat" is not A. An explicit
    letter wins over any text after it; two marked letters ("(A) or (B)") name none. With
    ``choices``, a letter past the last option does not count, and the option text itself names
    its letter ("red" → B when ``choices[1] == "red"``, case- and whitespace-insensitive, also
    when the option is stored as "(B) red"), as does "A cat" when option A is "cat".

    >>> [choice_letter(t) for t in ["(B)", "b", "C. red", "Option D", "Blue", "A cat"]]
    ['B', 'B', 'C', 'D', None, None]
    >>> choice_letter("Red", ["blue", "red"]), choice_letter("E", ["blue", "red"])
    ('B', None)
    """
    s = normalize(text)
    if not s:
        return None
    letter = _explicit_letter(s)
    if letter is not None and _in_range(letter, choices):
        return letter.upper()
    if not choices:
        return None
    options = [_option_text(option, i) for i, option in enumerate(choices)]
    prefix = _ANSWER_PREFIX.match(s) if len(s) <= _MAX_PHRASE_CHARS else None
    for candidate in dict.fromkeys((s, s[prefix.end() :] if prefix else s)):
        index = _match_option(candidate, options)
        if index is not None:
            return _LETTERS[index].upper()
    spaced = re.fullmatch(r"([a-z])\s+(.+)", s)
    if spaced and _in_range(spaced[1], choices) and spaced[2] == options[_LETTERS.index(spaced[1])]:
        return spaced[1].upper()
    return None


# ---------------------------------------------------------------------------------------------
# Correctness
# ---------------------------------------------------------------------------------------------

# Multi-span separators: commas, semicolons, "&" and the word "and" ("red, blue, and green").
_SPAN_SEP = re.compile(r"\s*(?:,|;|&|\band\b)\s*")


def _spans(s: str) -> list[str]:
    """The parts of a normalized answer; a bracketed tuple/interval/set stays whole (ordered)."""
    bracketed = s[:1] in "([{" and s[-1:] in ")]}"
    if bracketed or (s.startswith("\\{") and s.endswith("\\}")):
        return [s]
    return list(dict.fromkeys(part for part in _SPAN_SEP.split(s) if part))


def _same_answer(pred: str, gold: str) -> bool:
    """Numbers by value, else normalized strings (both arguments already normalized)."""
    if _parse(pred) is not None and _parse(gold) is not None:
        return numbers_match(pred, gold)
    return pred == gold


def _same_spans(pred: list[str], gold: list[str]) -> bool:
    """The same set of parts, in any order, nothing missing and nothing extra."""
    if len(pred) != len(gold):
        return False
    unused = list(pred)
    for part in gold:
        hit = next((p for p in unused if _same_answer(p, part)), None)
        if hit is None:
            return False
        unused.remove(hit)
    return True


def _matches(prediction: str, gold: str, choices: Sequence[str] | None) -> bool:
    if choices:
        pred_letter, gold_letter = choice_letter(prediction, choices), choice_letter(gold, choices)
        if pred_letter is not None and gold_letter is not None:
            return pred_letter == gold_letter
    pred, ref = normalize(prediction), normalize(gold)
    if _same_answer(pred, ref):
        return True
    gold_spans = _spans(ref)
    return len(gold_spans) > 1 and _same_spans(_spans(pred), gold_spans)


def score_answer(
    prediction: str | None, gold: str | Sequence[str], choices: Sequence[str] | None = None
) -> bool:
    r"""Whether an extracted answer is correct; ``gold`` may list several accepted answers.

    ``None`` or an empty answer is wrong. With ``choices`` the letters are compared (the gold
    may be a letter or the option text); otherwise, or when a letter cannot be read, numbers
    are compared by value (:func:`numbers_match`), then normalized strings, then — for a gold
    with several parts separated by commas, semicolons, "&" or "and" — the sets of parts.

    >>> score_answer(r"\frac{3}{4}", "0.75"), score_answer("45%", "0.45"), score_answer("12 cm", "12")
    (True, True, True)
    >>> score_answer("red", "B", ["blue", "red"]), score_answer("C", ["A", "B"], ["x", "y", "z"])
    (True, False)
    >>> [score_answer(p, "1, 2") for p in ["2, 1", "1 and 2", "1", "3", "1, 2, 3"]]
    [True, True, False, False, False]
    """
    if prediction is None or not normalize(prediction):
        return False
    golds = [gold] if isinstance(gold, str) else list(gold)
    return any(_matches(prediction, g, choices) for g in golds if normalize(g))


def score_response(
    response: str, gold: str | Sequence[str], choices: Sequence[str] | None = None
) -> tuple[bool, str | None]:
    r"""Extract the boxed answer from the model's generated text and score it.

    Returns ``(correct, answer)``; without a box it is ``(False, None)`` — the rest of the
    response is never read as an answer.

    >>> score_response(r"The answer is \boxed{B}.", "red", choices=["blue", "red"])
    (True, 'B')
    >>> score_response("The answer is B.", "B", choices=["blue", "red"])
    (False, None)
    """
    answer = extract_boxed(response)
    if answer is None:
        return False, None
    return score_answer(answer, gold, choices), answer


# ---------------------------------------------------------------------------------------------
# ANLS (InfographicVQA / DocVQA)
# ---------------------------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions), O(len(a)·len(b)) dynamic programme.

    >>> levenshtein("kitten", "sitting"), levenshtein("", "abc"), levenshtein("same", "same")
    (3, 3, 0)
    """
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))  # distances from a[:0] to every prefix of b
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def _anls_normalize(text: str) -> str:
    return " ".join(text.lower().split())


def anls(prediction: str, golds: Sequence[str], threshold: float = ANLS_THRESHOLD) -> float:
    """Average Normalized Levenshtein Similarity of one item: the best over ``golds`` of
    ``1 - NL``, with ``NL = levenshtein / max(len)`` after lowercasing and collapsing spaces,
    and 0 where ``NL >= threshold``. A benchmark's ANLS is the mean over its items.

    >>> anls("Population", ["population"]), anls("pupulation", ["population"])
    (1.0, 0.9)
    >>> anls("abcd", ["abxy"]), anls("12", ["twelve", "12"]), anls("x", [])
    (0.0, 1.0, 0.0)
    """
    pred = _anls_normalize(prediction)
    best = 0.0
    for gold in [golds] if isinstance(golds, str) else golds:
        ref = _anls_normalize(gold)
        longest = max(len(pred), len(ref))
        distance = levenshtein(pred, ref) / longest if longest else 0.0
        best = max(best, 1.0 - distance if distance < threshold else 0.0)
    return best
