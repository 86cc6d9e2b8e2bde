r"""The answer checker (evaluation metric and RL correctness reward), as tables.

Rows whose id starts with ``released-defect-`` pin a defect of the released checker (SPEC §5)
that must not come back; the comment above each says what broke.

Rules chosen for ambiguous cases (see the module docstrings):
- number words: "zero" to "twenty", only as the whole answer ("one of them" is not 1);
- a number inside a sentence is not parsed ("there are 12 apples" is not 12), but a trailing
  unit of at most three words is ("12 apples" is 12);
- percent: parse_number keeps the number shown (45% → 45.0); a percent on one side matches
  both its fraction (0.45) and its bare number (45);
- multi-span: a gold is split on commas, semicolons, "&" and "and"; the prediction must hold the
  same set of parts in any order; bracketed tuples such as "(1, 2)" keep their order;
- LaTeX spellings the released checker (math_verify) treats as equal are equal here too:
  ``x^{2}``/``x^2``, ``\{1,2\}``/``{1,2}``, ``\boxed{{5}}``/``5``, ``\boxed 5`` (one token),
  ``\varnothing``/``\emptyset``.
"""

from __future__ import annotations

import pytest

from pixelreasoner.eval.scoring import (
    anls,
    choice_letter,
    extract_boxed,
    levenshtein,
    normalize,
    numbers_match,
    parse_number,
    score_answer,
    score_response,
)
from pixelreasoner.protocol.prompts import NOTOOL_SUFFIX

P = pytest.param
COLORS = ["blue", "red", "green", "yellow"]

# ---------------------------------------------------------------------------------------------
# extract_boxed
# ---------------------------------------------------------------------------------------------

BOX_ROWS = [
    P(r"\boxed{5}", "5", id="simple"),
    P(r"First \boxed{3}, then on reflection \boxed{4}.", "4", id="last-box-wins"),
    P(r"\boxed{\frac{1}{2}}", r"\frac{1}{2}", id="nested-braces"),
    P(r"\boxed{\text{(B) red}}", r"\text{(B) red}", id="nested-text"),
    P(r"\boxed{a^{b^{c}}} done", "a^{b^{c}}", id="deeply-nested"),
    P("The answer is 12.", None, id="no-box"),
    P(r"\boxed{12", None, id="unbalanced"),
    P(r"\boxed{1} and later \boxed{2", None, id="last-unbalanced-earlier-closed"),
    P(r"\boxed{}", "", id="empty-box"),
    P(r"So the count is \boxed{7} and that settles it.", "7", id="box-mid-text"),
    P(r"\boxed {x}", "x", id="space-before-brace"),
    P(r"\boxed  {  y }", "  y ", id="spaces-kept-inside"),
    P(r"\fbox{C}", "C", id="fbox"),
    P(r"\boxed{A} then \fbox{B}", "B", id="fbox-after-boxed"),
    P(r"\boxed{\{1, 2\}}", r"\{1, 2\}", id="escaped-braces-are-literal"),
    P("boxed{5}", None, id="missing-backslash"),
    P(r"\boxed{\boxed{9}}", "9", id="box-in-box"),
]


@pytest.mark.parametrize(("text", "expected"), BOX_ROWS)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


# ---------------------------------------------------------------------------------------------
# normalize
# ---------------------------------------------------------------------------------------------

NORMALIZE_ROWS = [
    P("  Red  ", "red", id="strip-lower"),
    P("$x+1$", "x+1", id="surrounding-dollars"),
    P(r"\text{red car}", "red car", id="text-unwrapped"),
    P(r"\mathrm{kg}", "kg", id="mathrm-unwrapped"),
    P(r"\text{\textbf{bold}}", "bold", id="nested-wrappers"),
    P("the   red\n car", "the red car", id="collapse-whitespace"),
    P("Paris.", "paris", id="trailing-period"),
    P("1,234", "1234", id="thousands"),
    P("12,345,678.5", "12345678.5", id="thousands-with-decimal"),
    P("1,23", "1, 23", id="not-thousands-two-digits"),
    P("1, 234", "1, 234", id="not-thousands-list"),
    P(r"45\%", "45%", id="escaped-percent"),
    P("45 percent", "45%", id="percent-word"),
    P(r"\(5\)", "5", id="inline-math-delimiters"),
    # released-defect: units were stripped inside words, "percentage" became "age".
    P("percentage", "percentage", id="released-defect-unit-in-word-percentage"),
    # released-defect: "cm" was stripped inside "income".
    P("Income", "income", id="released-defect-unit-in-word-income"),
]


@pytest.mark.parametrize(("text", "expected"), NORMALIZE_ROWS)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


# ---------------------------------------------------------------------------------------------
# parse_number
# ---------------------------------------------------------------------------------------------

NUMBER_ROWS = [
    P("12", 12.0, id="int"),
    P("3.25", 3.25, id="decimal"),
    P(".5", 0.5, id="leading-dot"),
    P("-7", -7.0, id="negative"),
    P("\u22127", -7.0, id="unicode-minus"),
    P("+7", 7.0, id="plus"),
    P("3/4", 0.75, id="slash-fraction"),
    P(r"\frac{3}{4}", 0.75, id="latex-frac"),
    P(r"\dfrac{1}{8}", 0.125, id="dfrac"),
    P(r"\frac34", 0.75, id="frac-shorthand"),
    P(r"-\frac{3}{4}", -0.75, id="negative-frac"),
    P("1/0", None, id="zero-denominator"),
    P(r"1 \times 10^{999}", float("inf"), id="huge-exponent-no-overflow-error"),
    P("45%", 45.0, id="percent-keeps-number"),
    P(r"12.5\%", 12.5, id="escaped-percent"),
    P("1e3", 1000.0, id="scientific-e"),
    P("1.5e-3", 0.0015, id="scientific-negative-exponent"),
    P(r"1.5 \times 10^{3}", 1500.0, id="scientific-times"),
    P("1,234", 1234.0, id="thousands"),
    P("12 cm", 12.0, id="unit-word"),
    P("3.5kg", 3.5, id="unit-attached"),
    P(r"12\text{ cm}^2", 12.0, id="unit-latex-squared"),
    P("60 km/h", 60.0, id="unit-per"),
    P("12 apples", 12.0, id="noun-as-unit"),
    P("$12", 12.0, id="currency-dollar"),
    P(r"\$12.50", 12.5, id="currency-escaped"),
    P("-$3", -3.0, id="negative-currency"),
    P(r"45^\circ", 45.0, id="degrees-latex"),
    P("45°C", 45.0, id="degrees-celsius"),
    P("x = 5", 5.0, id="variable-assignment"),
    P("twelve", 12.0, id="word-number"),
    P("Zero.", 0.0, id="word-number-zero"),
    P("twenty-one", None, id="word-number-beyond-twenty"),
    P("one of them", None, id="word-number-in-phrase"),
    P("there are 12 apples", None, id="number-in-sentence"),
    P("3 or 4", None, id="two-numbers"),
    P("1 1/2", None, id="mixed-number-unsupported"),
    P("red", None, id="not-a-number"),
    # released-defect: unit names were removed inside words; a word is never a number here.
    P("percentage", None, id="released-defect-unit-in-word-percentage-not-number"),
    # released-defect: "cm" inside "income" was stripped; text before a number is a sentence.
    P("income 12", None, id="released-defect-unit-in-word-income-12"),
]


@pytest.mark.parametrize(("text", "expected"), NUMBER_ROWS)
def test_parse_number(text: str, expected: float | None) -> None:
    value = parse_number(text)
    if expected is None:
        assert value is None
    else:
        assert value == pytest.approx(expected)


NUMBERS_MATCH_ROWS = [
    P("45%", "0.45", True, id="percent-vs-fraction"),
    P("0.45", "45%", True, id="fraction-vs-percent"),
    P("45%", "45", True, id="percent-vs-bare-number"),
    P("45", "0.45", False, id="bare-numbers-differ"),
    P("45%", "0.46", False, id="percent-wrong"),
    P("3", "3.0", True, id="int-vs-float"),
    P("100", "100.005", True, id="within-rel-tol"),  # |diff| / 100 = 5e-5 < 1e-4
    P("100", "100.02", False, id="outside-rel-tol"),  # 2e-4 > 1e-4
    P("red", "red", False, id="not-numbers"),
]


@pytest.mark.parametrize(("a", "b", "expected"), NUMBERS_MATCH_ROWS)
def test_numbers_match(a: str, b: str, expected: bool) -> None:
    assert numbers_match(a, b) is expected


# ---------------------------------------------------------------------------------------------
# choice_letter
# ---------------------------------------------------------------------------------------------

CHOICE_ROWS = [
    P("B", None, "B", id="bare"),
    P("b", None, "B", id="lowercase"),
    P("(B)", None, "B", id="parens"),
    P("[B]", None, "B", id="brackets"),
    P("B.", None, "B", id="period"),
    P("B)", None, "B", id="close-paren"),
    P("B:", None, "B", id="colon"),
    P("B. red", None, "B", id="period-text"),
    P("(B) red", None, "B", id="parens-text"),
    P("B) red", None, "B", id="close-paren-text"),
    P("Option B", None, "B", id="option-word"),
    P("the answer is B", None, "B", id="answer-phrase"),
    P("The correct answer is (C) green", None, "C", id="answer-phrase-parens-text"),
    P("Answer: D", None, "D", id="answer-colon"),
    P(r"\text{(B) red}", COLORS, "B", id="latex-text-wrapped"),
    P("red", COLORS, "B", id="option-text"),
    P("  RED ", COLORS, "B", id="option-text-case-space"),
    P("red", ["(A) blue", "(B) red"], "B", id="option-stored-with-marker"),
    P("the answer is green", COLORS, "C", id="answer-phrase-option-text"),
    P("A cat", ["cat", "dog"], "A", id="letter-space-text-matching-option"),
    P("A cat", ["dog", "cat"], None, id="letter-space-text-not-matching"),
    P("A cat", None, None, id="article-not-letter"),
    P("Blue", None, None, id="word-starting-with-b"),
    P("Blue", ["red", "yellow"], None, id="word-not-an-option"),
    P("E", COLORS, None, id="letter-out-of-range"),
    P("(A) or (B)", COLORS, None, id="hedged-two-letters"),
    P("answers", None, None, id="word-answers-not-s"),
    P("2.0", ["1", "2", "3"], "B", id="numeric-option"),
    P("", COLORS, None, id="empty"),
    P("the answer is B because the sign is clearly red in the zoomed view", None, None, id="long-phrase"),
]


@pytest.mark.parametrize(("text", "choices", "expected"), CHOICE_ROWS)
def test_choice_letter(text: str, choices: list[str] | None, expected: str | None) -> None:
    assert choice_letter(text, choices) == expected


# ---------------------------------------------------------------------------------------------
# score_answer
# ---------------------------------------------------------------------------------------------

SCORE_ROWS = [
    # empty predictions
    P(None, "12", None, False, id="none-prediction"),
    P("", "12", None, False, id="empty-prediction"),
    P("  ", "12", None, False, id="blank-prediction"),
    # numbers
    P("12", "12", None, True, id="int-equal"),
    P("3.0", "3", None, True, id="float-vs-int"),
    P("13", "12", None, False, id="int-wrong"),
    P("-4", "-4", None, True, id="negative"),
    P("4", "-4", None, False, id="sign-matters"),
    P("0.75", "3/4", None, True, id="decimal-vs-fraction"),
    P(r"\frac{3}{4}", "0.75", None, True, id="latex-frac-vs-decimal"),
    P("3/4", r"\dfrac{3}{4}", None, True, id="fraction-vs-dfrac"),
    P("0.333", "1/3", None, False, id="rounded-fraction-outside-tolerance"),
    P("45%", "0.45", None, True, id="percent-vs-fraction-gold"),
    P("0.45", "45%", None, True, id="fraction-vs-percent-gold"),
    P("45", "45%", None, True, id="bare-vs-percent-gold"),
    P("1234", "1,234", None, True, id="thousands-gold"),
    P("$1,000", "1000", None, True, id="currency-thousands"),
    P("12 cm", "12", None, True, id="unit-vs-bare"),
    P("12", "12 cm", None, True, id="bare-vs-unit-gold"),
    P("13 cm", "12 cm", None, False, id="unit-wrong-number"),
    P("$12", "12", None, True, id="currency"),
    P("1e3", "1000", None, True, id="scientific"),
    P("twelve", "12", None, True, id="word-number"),
    P("12", "Twelve", None, True, id="word-number-gold"),
    P("there are 12 apples", "12", None, False, id="number-in-sentence-rejected"),
    P("12 apples", "12", None, True, id="number-with-noun"),
    # strings
    P("Yes", "yes", None, True, id="case"),
    P("yes.", "Yes", None, True, id="trailing-period"),
    P(r"\text{red car}", "Red Car", None, True, id="text-wrapper"),
    P("no", "yes", None, False, id="yes-no-wrong"),
    P("(1,2)", "(1, 2)", None, True, id="tuple-spacing"),
    P("(2, 1)", "(1, 2)", None, False, id="tuple-order-matters"),
    # released-defect: units were stripped inside words, so "percentage" matched "age".
    P("percentage", "age", None, False, id="released-defect-unit-in-word-percentage"),
    # released-defect: "income" lost its "cm" and became "inoe".
    P("income 12", "inoe 12", None, False, id="released-defect-unit-in-word-income"),
    P("income 12", "Income 12", None, True, id="income-kept-whole"),
    # multiple choice
    P("B", "B", COLORS, True, id="mc-letter"),
    P("b", "B", COLORS, True, id="mc-lowercase"),
    P("C", "B", COLORS, False, id="mc-wrong-letter"),
    P("red", "B", COLORS, True, id="mc-option-text-vs-letter-gold"),
    P("B", "red", COLORS, True, id="mc-letter-vs-option-text-gold"),
    P("B", "green", COLORS, False, id="mc-letter-vs-wrong-option-text-gold"),
    P("(B) red", "(B)", COLORS, True, id="mc-parens-text"),
    P("Blue", "B", COLORS, False, id="mc-blue-is-not-b"),
    P("Blue", "A", COLORS, True, id="mc-blue-is-option-a"),
    P("(A) or (B)", "A", COLORS, False, id="mc-hedge-rejected"),
    # released-defect: the choice-letter branch was dead, so "(B) red" never matched gold "B".
    P("(B) red", "B", COLORS, True, id="released-defect-choice-letter-branch-dead"),
    # released-defect: with the dead branch an option text never matched its letter gold.
    P("Option B", "red", COLORS, True, id="released-defect-choice-option-vs-text-gold"),
    # multi-span
    P("2, 1", "1, 2", None, True, id="multispan-reordered"),
    P("1 and 2", "1, 2", None, True, id="multispan-and"),
    P("1,2", "1, 2", None, True, id="multispan-no-space"),
    P("1.0, 2", "1, 2", None, True, id="multispan-numeric-parts"),
    P("blue, red", "red and blue", None, True, id="multispan-words"),
    P("red, blue, and green", "green; red; blue", None, True, id="multispan-oxford-comma"),
    P("red", "red and blue", None, False, id="multispan-missing-part"),
    # released-defect: a multi-span gold "1, 2" accepted any boxed answer.
    P("1", "1, 2", None, False, id="released-defect-multispan-subset"),
    # released-defect: same, an unrelated answer was accepted.
    P("3", "1, 2", None, False, id="released-defect-multispan-unrelated"),
    # released-defect: same, a superset was accepted.
    P("1, 2, 3", "1, 2", None, False, id="released-defect-multispan-superset"),
    # released-defect: same, free text was accepted.
    P("I am not sure", "1, 2", None, False, id="released-defect-multispan-free-text"),
    # lists of accepted answers
    P("NYC", ["New York", "NYC"], None, True, id="gold-list-second"),
    P("LA", ["New York", "NYC"], None, False, id="gold-list-none"),
    P("0.5", ["1/2", "half"], None, True, id="gold-list-numeric"),
    P("green", ["C", "green"], COLORS, True, id="gold-list-mc"),
    P("x", [], None, False, id="gold-list-empty"),
    P("x", [""], None, False, id="gold-empty-string"),
]


@pytest.mark.parametrize(("prediction", "gold", "choices", "expected"), SCORE_ROWS)
def test_score_answer(
    prediction: str | None, gold: str | list[str], choices: list[str] | None, expected: bool
) -> None:
    assert score_answer(prediction, gold, choices) is expected


# ---------------------------------------------------------------------------------------------
# score_response: only the last box of the generated text is ever read
# ---------------------------------------------------------------------------------------------

RESPONSE_ROWS = [
    P(r"Zooming in, I count 5. \boxed{5}", "5", None, (True, "5"), id="boxed-correct"),
    P(r"Maybe 4? No: \boxed{5}", "4", None, (False, "5"), id="last-box-wrong"),
    P(r"\boxed{4} hmm, actually \boxed{5}", "5", None, (True, "5"), id="last-box-counts"),
    # released-defect: without a box the whole response was parsed, so this scored correct.
    P("The answer is 12.", "12", None, (False, None), id="released-defect-no-box-whole-response"),
    # released-defect: same, a bare letter in the reasoning counted as the choice.
    P("B", "B", COLORS, (False, None), id="released-defect-no-box-bare-letter"),
    P(r"\boxed{}", "12", None, (False, ""), id="empty-box"),
    P(r"\boxed{12", "12", None, (False, None), id="unbalanced-box"),
    P(r"The answer is \boxed{(B) red}.", "B", COLORS, (True, "(B) red"), id="mc-boxed"),
    # The prompt asks for "\boxed{}"; were it passed in, its empty box would still score nothing.
    P(NOTOOL_SUFFIX, "12", None, (False, ""), id="prompt-box-is-empty"),
]


@pytest.mark.parametrize(("response", "gold", "choices", "expected"), RESPONSE_ROWS)
def test_score_response(
    response: str, gold: str, choices: list[str] | None, expected: tuple[bool, str | None]
) -> None:
    assert score_response(response, gold, choices) == expected


# ---------------------------------------------------------------------------------------------
# ANLS
# ---------------------------------------------------------------------------------------------

ANLS_ROWS = [
    P("population", ["population"], 0.5, 1.0, id="exact"),
    P("Population", ["population"], 0.5, 1.0, id="case-insensitive"),
    P("  new   york ", ["New York"], 0.5, 1.0, id="whitespace-collapsed"),
    P("pupulation", ["population"], 0.5, 0.9, id="one-typo-in-ten"),  # 1 - 1/10
    P("popula", ["population"], 0.5, 0.6, id="four-deleted"),  # NL = 4/10, 1 - 0.4
    P("popul", ["population"], 0.5, 0.0, id="half-deleted-cut"),  # NL = 5/10 = 0.5 >= 0.5
    P("abcd", ["abxy"], 0.5, 0.0, id="threshold-cut"),  # NL = 2/4 = 0.5 >= 0.5
    P("abcd", ["abcx"], 0.5, 0.75, id="one-of-four"),  # 1 - 1/4
    P("abcd", ["abxy"], 0.6, 0.5, id="threshold-raised"),  # NL = 0.5 < 0.6
    P("12", ["twelve", "12"], 0.5, 1.0, id="best-of-golds"),
    P("pupulation", ["cat", "population"], 0.5, 0.9, id="best-of-golds-partial"),
    P("", ["abc"], 0.5, 0.0, id="empty-prediction"),
    P("", [""], 0.5, 1.0, id="both-empty"),
    P("abc", [], 0.5, 0.0, id="no-golds"),
]


@pytest.mark.parametrize(("prediction", "golds", "threshold", "expected"), ANLS_ROWS)
def test_anls(prediction: str, golds: list[str], threshold: float, expected: float) -> None:
    assert anls(prediction, golds, threshold) == pytest.approx(expected)


LEVENSHTEIN_ROWS = [
    P("kitten", "sitting", 3, id="classic"),
    P("", "", 0, id="both-empty"),
    P("abc", "", 3, id="deletions"),
    P("flaw", "lawn", 2, id="shift"),
    P("ab", "ba", 2, id="transposition-is-two"),
]


@pytest.mark.parametrize(("a", "b", "expected"), LEVENSHTEIN_ROWS)
def test_levenshtein(a: str, b: str, expected: int) -> None:
    assert levenshtein(a, b) == expected
    assert levenshtein(b, a) == expected


# ---------------------------------------------------------------------------------------------
# LaTeX spellings the released checker accepts (it normalizes through math_verify)
# ---------------------------------------------------------------------------------------------

LATEX_EQUIVALENCE_ROWS = [
    P(r"\boxed{x^{2}}", "x^2", (True, "x^{2}"), id="braced-superscript"),
    P(r"\boxed{x^2}", "x^{2}", (True, "x^2"), id="braced-superscript-gold"),
    P(r"\boxed{a_{1}+a_{2}}", "a_1+a_2", (True, "a_{1}+a_{2}"), id="braced-subscripts"),
    P(r"\boxed{\{1,2\}}", "{1,2}", (True, r"\{1,2\}"), id="escaped-set-braces"),
    P(r"\boxed{\left\{1, 2\right\}}", "{1,2}", (True, r"\left\{1, 2\right\}"), id="left-right-set"),
    P(r"\boxed{{1,2}}", r"\{1, 2\}", (True, "{1,2}"), id="set-in-group-braces"),
    P(r"\boxed{{5}}", "5", (True, "{5}"), id="doubled-box-braces"),
    P(r"\boxed{{{B}}}", "B", (True, "{{B}}"), id="tripled-box-braces-letter"),
    P(r"So the answer is \boxed 5", "5", (True, "5"), id="unbraced-box"),
    P(r"So the answer is $\boxed 5$.", "5", (True, "5"), id="unbraced-box-in-math"),
    P(r"\boxed{3}? No: \boxed 4.", "4", (True, "4"), id="unbraced-box-last"),
    P(r"\boxed\frac{1}{2}", "0.5", (True, r"\frac{1}{2}"), id="unbraced-box-command"),
    P(r"\boxed{\emptyset}", r"\varnothing", (True, r"\emptyset"), id="emptyset-vs-varnothing"),
    P(r"\boxed{\varnothing}", r"\emptyset", (True, r"\varnothing"), id="varnothing-vs-emptyset"),
    P(r"\boxed{∅}", r"\emptyset", (True, "∅"), id="unicode-empty-set"),
]


@pytest.mark.parametrize(("response", "gold", "expected"), LATEX_EQUIVALENCE_ROWS)
def test_latex_equivalences_of_released_checker(
    response: str, gold: str, expected: tuple[bool, str | None]
) -> None:
    r"""What broke: the released checker (math_verify) accepts these spellings, we scored them
    wrong — braces around a one-character super/subscript (``x^{2}`` vs ``x^2``), escaped set
    braces (``\{1,2\}`` vs ``{1,2}``), redundant group braces in a box (``\boxed{{5}}``), a box
    without braces (``\boxed 5``, not extracted at all) and ``\varnothing`` vs ``\emptyset``."""
    assert score_response(response, gold) == expected


LATEX_DIFFERENT_ROWS = [
    P(r"\boxed{x^{3}}", "x^2", id="different-exponent"),
    P(r"\boxed{x^{10}}", "x^1", id="multi-character-exponent-kept"),
    P(r"\boxed{x_{2}}", "x^2", id="subscript-is-not-superscript"),
    P(r"\boxed{\{1,2\}}", "{1,3}", id="different-set"),
    P(r"\boxed{{1,2}}", "{1,3}", id="different-set-in-group-braces"),
    P(r"\boxed{{5}}", "6", id="doubled-braces-wrong-number"),
    P(r"\boxed 5", "6", id="unbraced-box-wrong-number"),
    P(r"\boxed 5 apples and 7 pears", "7", id="unbraced-box-is-one-token"),
    P(r"\boxedfoo 5", "5", id="longer-command-is-not-a-box"),
    P(r"\boxed \emptyset", r"\{0\}", id="empty-set-vs-set-of-zero"),
    P(r"\boxed{\varnothing}", "0", id="empty-set-is-not-zero"),
]


@pytest.mark.parametrize(("response", "gold"), LATEX_DIFFERENT_ROWS)
def test_latex_spellings_that_still_differ(response: str, gold: str) -> None:
    """The LaTeX equivalences above must not make different answers equal."""
    assert score_response(response, gold)[0] is False
