"""Final answers as text: extraction from a completion, canonical forms and the exact fast path of
`tasks.verify` (steps 1 and 2 of its pipeline), all in the calling process and linear in the input.

  extract_answer    the last complete `\\boxed{...}` / `\\fbox{...}`, else the last `#### n` or
                    "the answer is ..."
  canonical_answer  the string equal answers share (LaTeX spacing, `\\dfrac`, units, degrees, ...);
                    maj@k's vote keys start from it (`evaluation.vote_keys`)
  fast_verdict      True / False when a string match or exact rational comparison decides, else None
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction
from typing import NamedTuple

_MAX_NUMBER_CHARS = 200  # longer literals are left to the (timed) sympy path
_MAX_ANSWER_CHARS = 1000  # longer answers (than this and than 2 * len(gold)) score 0 unparsed

# ---------------------------------------------------------------------------------------------
# Answer extraction.

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# "#### 72" (GSM8K's format), "#### x = 5", "#### Yes"; not a markdown heading such as "#### Step 2: ...".
_HASH_RE = re.compile(r"####[ \t]*(?![A-Za-z]{2,}[ \t:]+\S)([^\s#][^\n]*)")
_ANSWER_IS_RE = re.compile(r"answer(?:\s+is|\s*(?:\*+\s*)?:)[:\s*]*", re.IGNORECASE)  # "the answer is", "Final Answer:"


def _closing_braces(text: str) -> dict[int, int]:
    """Index of each '{' that is closed -> index of its matching '}' (one pass, linear time)."""
    partner, open_at = {}, []
    for i, c in enumerate(text):
        if c == "{":
            open_at.append(i)
        elif c == "}" and open_at:
            partner[open_at.pop()] = i
    return partner


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}`/`\\fbox{...}` (or `\\boxed 5`, `\\boxed5`) that is complete: a box
    cut off before its closing brace is passed over for an earlier one. None if there is none."""
    matches = list(_BOX_RE.finditer(text))
    partner = _closing_braces(text) if matches else {}
    for match in reversed(matches):
        i = match.end()
        while i < len(text) and text[i].isspace():  # "\boxed\n{5}"
            i += 1
        if i < len(text) and text[i] == "{":
            if i in partner:
                return text[i + 1 : partner[i]]
            continue
        i = match.end()
        while i < len(text) and text[i] in " \t":  # a bare token on the same line: "\boxed 5", "\boxed5"
            i += 1
        token = re.match(r"[^\s$]+", text[i:])
        if token and (i > match.end() or text[i].isdigit()):
            return token.group(0)
    return None


def extract_answer(text: str) -> str | None:
    """The final answer in a completion or worked solution, or None if it states none: the last
    complete box, else whichever of `#### n` and "the answer is ..." comes last (markdown bold and
    `$` around the answer are dropped). An answer with nothing left in its canonical form
    (`\\boxed{\\$}`, `\\boxed{\\text{}}`) states none, as an empty box does."""
    answer = _stated_answer(text)
    return answer if answer is not None and canonical_answer(answer) else None


def _stated_answer(text: str) -> str | None:
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip() or None
    hashes = list(_HASH_RE.finditer(text))
    said = list(_ANSWER_IS_RE.finditer(text))
    if hashes and (not said or hashes[-1].start() > said[-1].start()):
        answer = hashes[-1].group(1)
    elif said:
        answer = text[said[-1].end() :].split("\n", 1)[0]
        answer = re.split(r"\.(?:\s|$)", answer, maxsplit=1)[0]  # end of sentence
    else:
        return None
    return answer.strip().strip("*$ ").strip() or None


# ---------------------------------------------------------------------------------------------
# Canonical strings and exact numbers.

_DELETE_RE = re.compile(r"\\(?:left|right|displaystyle)(?![a-zA-Z])|(?<!\\)\\[!,;:]|\\?\$")
_THIN_THOUSANDS_RE = re.compile(r"(?<=\d),\s*\\!\s*(?=\d{3}(?!\d))")
_COLON_RE = re.compile(r"\d:\d")  # a time or a ratio: "4:30 p.m.", "1:2"
_RATIO_RE = re.compile(r"(\d+):(\d+)")
# Two values in one answer, of which math-verify reads one: "1 \lor 9", "9 \approx 10", "3 \to 9", "25 (or 18)",
# "18–25", "\begin{cases} 1 \\ 9 \end{cases}"; a row break "\\" outside a matrix is one too.
_HEDGE_RE = re.compile(r"\\(?:lor|vee|approx|Rightarrow|Leftrightarrow|implies|mapsto|sim|tag|cancel|substack"
                       r"|to|rightarrow|longrightarrow|Longrightarrow|iff|mid|therefore)"
                       r"(?![a-zA-Z])|\\begin\{(?:cases|aligned|align\*?|gathered|split)\}|\\[()]"
                       r"|(?<![A-Za-z\\])or(?![A-Za-z])|\d\s*[\u2013\u2014]\s*\d")
_MATRIX_RE = re.compile(r"\\begin\{(?:[pbvBV]?matrix|array)\}")
_BASE_RE = re.compile(r"(-?[0-9A-Za-z.]*\d[0-9A-Za-z.]*)_\{?(\d+)\}?")  # "52_8", "-A3_{16}", "0.01_2": digits in a base
_SPACE_RE = re.compile(r"(?<!\\)\\ |~")  # "\ " but not the row break "\\" before a space
_DELIMITED_RE = re.compile(r"^\\\((.*)\\\)$|^\\\[(.*)\\\]$", re.DOTALL)
_UNIT_MACRO = r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox)\{([^{}]*)\}"
_TRAILING_UNITS_RE = re.compile(rf"(?:\s*{_UNIT_MACRO}(?:\^\{{?[23]\}}?)?)+\s*$")
_UNIT_MACRO_RE = re.compile(_UNIT_MACRO)
# Words that change a number's value, never dropped as units: "10\text{ million}", "2 pi".
_VALUE_WORDS = frozenset("""hundred hundreds thousand thousands million millions billion billions trillion
    trillions dozen dozens pi""".split())
# Words that may change the value of a number they follow (beyond the scales above), so they are never
# dropped as units or counted nouns, and an answer of a plain number and such words is not that
# number ("3 squared", "2 point five", "1 half", "5 below zero"), and words of ranges, bounds and hedges
# ("4 or more", "3 at most", "5 and higher", "5 is not the answer").
_NUMBER_WORDS = """zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
    sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety""".split()
_CHANGING_WORDS = frozenset(_NUMBER_WORDS + [w + "s" for w in _NUMBER_WORDS[2:]] + """percentage half halves halfs
    thirds fourths squared cubed factorial factorials point over minus plus divided raised negative inverse
    reciprocal opposite double doubled triple tripled twice thrice halved tens grand lakh lakhs crore crores gross
    score scores quadrillion quintillion sextillion septillion octillion zillion myriad googol mil doz kilo mega
    giga micro milli nano permille pis sixes sqrt infinity choose to below above sine cosine tangent sin cos tan
    exp log ln or least most not no nor but except otherwise else am pm a.m p.m""".split())
# Fraction words that are also ordinals, read as fractions only at the end: "1 third", not "49 fourth graders".
_LAST_FRACTION_WORDS = frozenset("third fourth".split())
_OPEN_RANGE_RE = re.compile(r"\band (?:up|higher|lower|above|below|more|over|less|fewer|greater|larger|smaller)\b")
_FRACTION_WORD_RE = re.compile(  # "1 twelfth", "3 millionths", "5 hundreths"
    r"(?:tieth|teenth|hundredth|hundreth|thousandth|illionth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh"
    r"|twelfth|tyth)s?$")
# Words that join units: "4 sq ft", "60 miles per hour", "12 meters squared".
_UNIT_LINKS = frozenset("sq square cubic squared cubed per".split())
_ONE_LETTER_UNITS = frozenset("mgshLKVWJN")  # "\text{ m}^2" is a unit; "\mathrm{i}", "\text{e}" are not
# Units, which may follow a plain number without a \text{} even with two letters ("18 dollars", "4 sq ft"),
# and metres with a power ("25 m^2").
_UNIT_WORDS = frozenset(f"{w}{s}" for w in """dollar cent degree radian unit inch foot feet meter metre
    centimeter millimeter kilometer mile yard cm mm km ft yd mph kg gram mg ml liter litre gallon ounce oz
    pound lb hour hr minute min second sec day week month year""".split() for s in ("", "s")) | {"inches", "m"}
# A number and up to three plain words, the last one maybe with a power: "18 dollars", "4 square feet", "25 cm^2",
# "81 math teachers", and one letter with a power, "25 m^2" (without it, "5 m" may be a product); the number
# may be written in LaTeX without letters outside its commands ("6\sqrt{3} units", "\frac{3}{4} cup",
# "2 \frac{1}{2} cups": a mixed number).
_NUMBER_PART = r"(?:[\d.,/^{}()+]|(?<=\d) (?=\\frac\b)|\\(?:d|t)?frac\b|\\sqrt\b|\\pi\b)"
_UNIT_WORD_RE = re.compile(
    rf"^(-?{_NUMBER_PART}*\d{_NUMBER_PART}*)\s+((?:[a-zA-Z]{{2,}}\.?\s+){{0,2}}[a-zA-Z]{{2,}}|m(?=\^))"
    rf"(?:\^\{{?[23]\}}?)?\.?$")
# A percent written as a word at the end, after a digit: "25 percent", "25\text{ per cent}".
_PERCENT_WORD_RE = re.compile(
    r"(?<=\d)\s*(?:\\(?:text|textrm|mathrm|mbox)\{\s*)?(?:percents?|per\s+cent|pct)\s*\}?\s*$", re.IGNORECASE)
_DEGREE_MARK = r"\^\s*(?:\{\s*\\circ\s*\}|\\circ)|°|\\degree"
_DEGREES_RE = re.compile(_DEGREE_MARK)  # keeps the space after: "76^\circ degrees"
_TRIG_RE = re.compile(r"\\(?:arc)?(?:sin|cos|tan|cot|sec|csc)(?![a-zA-Z])")
_ANGLE_IN_DEGREES_RE = re.compile(rf"(\d+(?:\.\d+)?)\s*(?:{_DEGREE_MARK})")  # "32^\circ" in "\sin 32^\circ"
# Unicode a model may write for LaTeX: "√2", "x²", "−3", "2π"
# √ takes the number, letter, macro or parenthesis after it: "√12" is \sqrt{12}, where "\sqrt 12" would be 2\sqrt{1}
_UNICODE_ROOT_RE = re.compile(r"\u221a\s*(?:(\d+(?:\.\d+)?|[A-Za-z]|\\[A-Za-z]+)|\(([^()]*)\))")
_UNICODE_MATH = {"\u2212": "-", "\u221a": "\\sqrt", "\u03c0": "\\pi ", "\u00b2": "^2", "\u00b3": "^3",
                 "\u00d7": "\\times ", "\u00b7": "\\cdot ", "\u2264": "\\le ", "\u2265": "\\ge ", "\u221e": "\\infty "}
_UNICODE_MATH_RE = re.compile("|".join(_UNICODE_MATH))
_PERCENT_RE = re.compile(r"\\?%")
_ASSIGNMENT_RE = re.compile(r"^\s*([a-zA-Z])\s*=\s*")
# Letters only, with two or more in a row ("east", "Navin", "neither", but also "ab": a product?).
_LETTERS_RE = re.compile(r"(?=[A-Za-z\s]*[A-Za-z]{2})[A-Za-z]+(?:\s+[A-Za-z]+)*")
_TEXT_MACRO_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mbox)\s*\{")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_BARE_THOUSANDS_RE = re.compile(r"\$?\s*(-?\d{1,3}(?:,\d{3})+)\s*\$?")  # a gold "70,110", "$58,500$"
_TOKEN = r"(\\[a-zA-Z]+|[0-9a-zA-Z])"  # one TeX argument without braces: a character or a macro
# "\frac \pi4", "\frac1{2}", "\binom 5 2", "\binom{5}2": two-argument macros, arguments with or without braces
_BARE_FRAC_RE = re.compile(rf"\\(frac|binom)\s*(?:\{{([^{{}}]*)\}}|{_TOKEN})\s*(?:\{{([^{{}}]*)\}}|{_TOKEN})")
_SINGLE_ARG_RE = re.compile(r"\\(frac|sqrt)\s*([0-9a-zA-Z])")
_FRAC_SECOND_ARG_RE = re.compile(r"(\\frac\{[^{}]*\})\s*([0-9a-zA-Z])")
_WRAPPER_PREFIX_RE = re.compile(r"^\\(?:boxed|fbox|mathbf|textbf|boldsymbol|bm)\s*(?=\{)")  # box or bold

_INT = r"\d+"
_DEC = r"(?:\d+\.\d*|\.\d+)"
_NUM = rf"(?:{_DEC}|{_INT})"
_PLAIN_RE = re.compile(rf"(-?){_NUM}")
_SCIENTIFIC_RE = re.compile(rf"(-?{_NUM})[eE]\+?(-?\d{{1,3}})")  # "1.5e6", "2.5E-3": |exponent| < 1000
_POWER_OF_TEN_RE = re.compile(rf"(-?{_NUM})\\(?:times|cdot)10\^(?:\{{(-?\d{{1,3}})\}}|(\d))")  # "1.5\times10^{6}"
_SLASH_RE = re.compile(rf"(-?)({_NUM})/({_NUM})")
_FRAC_RE = re.compile(rf"(-?)\\frac\{{(-?{_NUM})\}}\{{(-?{_NUM})\}}")
_MIXED_RE = re.compile(rf"(-?)({_INT})\\frac\{{({_INT})\}}\{{({_INT})\}}")
_REPEATING_RE = re.compile(r"(-?)(\d*)\.(\d*)\\(?:overline|bar)\{(\d+)\}")  # 0.1\overline{6} = 1/6
_SCALES = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12, "dozen": 12}
_SCALED_RE = re.compile(rf"(.+?)({'|'.join(_SCALES)})s?")  # "2.5million" (spaces removed), "3dozen"


def _words(text: str) -> list[str]:
    return [w.strip(".,;:!?()").lower() for w in text.split()]


def _changes_value(words: list[str]) -> bool:
    """Whether words after a number may change its value: scales, number, fraction and operator words,
    range and hedge words, a last "third" or "fourth", or unit links without a unit ("3 squared", "3 square")."""
    return bool(_VALUE_WORDS.intersection(words) or _CHANGING_WORDS.intersection(words)
                or any(_FRACTION_WORD_RE.search(w) for w in words) or _UNIT_LINKS.issuperset(words)
                or words[-1:] and words[-1] in _LAST_FRACTION_WORDS or _OPEN_RANGE_RE.search(" ".join(words)))


def _is_unit(text: str) -> bool:
    """Whether a trailing `\\text{...}` after a number annotates it (units, counted nouns: "cm",
    "square feet", "students") rather than changing its value ("million", "squared", "i", "e")."""
    if len(text.strip()) == 1:
        return text.strip() in _ONE_LETTER_UNITS
    if re.search(r"\d", text):  # "5\text{ (or 6)}"
        return False
    return not _changes_value(_words(text))


def _is_counted_noun(words: list[str]) -> bool:
    """Whether plain words after a plain number annotate it: units ("sq ft", "miles per hour") and
    words of three or more letters ("teachers", "red marbles", "men"), unless one may change the
    value (`_changes_value`: "2 pi", "3 squared", "1 twelfth"); two-letter words alone are kept
    ("5 pm", "3 ab": a time, a product)."""
    if all(w in _UNIT_WORDS or w in _UNIT_LINKS for w in words) and _UNIT_WORDS.intersection(words):
        return True
    return not _changes_value(words) and any(len(w) >= 3 for w in words)


def _drop_counted_noun(s: str) -> tuple[str, bool]:
    """(s without the plain words after a number that `_is_counted_noun` drops, whether s is a number
    and words of which one may change its value, none a scale that `_parse_number` reads: "3 squared",
    "4 fifteen", "2\\pi squared", not "3 thousand apples"; such an answer is not that number)."""
    number_words = _UNIT_WORD_RE.fullmatch(s)
    if number_words is None:
        return s, False
    words = _words(number_words.group(2))
    if _is_counted_noun(words):
        return number_words.group(1), False
    return s, not _VALUE_WORDS.intersection(words) and _changes_value(words)


def _strip_trailing_units(s: str) -> str:
    """'5\\text{ cm}^2' -> '5': drops the run of unit macros that ends the answer."""
    tail = _TRAILING_UNITS_RE.search(s)
    if tail is None:
        return s
    cut = len(s)
    for macro in reversed(list(_UNIT_MACRO_RE.finditer(s, tail.start()))):
        if not _is_unit(macro.group(1)):
            break
        cut = macro.start()
    return s[:cut]


def clean_latex(answer: str) -> str:
    """Removes notation that does not change an answer's value; keeps spaces (LaTeX needs them).

    Units: a run of `\\text{...}`-like macros ending an answer that has a digit before it is dropped
    unless a macro holds a word that may change the value (`_changes_value`: million, squared, ...)
    or one letter that is not a unit (i, e); up to three plain words after a plain number are dropped
    if `_is_counted_noun` says they annotate it. A percent written as a word is read as `%`.
    """
    return _clean(answer).text


class _Cleaned(NamedTuple):
    text: str  # `clean_latex`'s string
    variable: str  # the letter of an `x = ...` answer it drops, else ""
    percent_word: bool  # it dropped a percent written as a word
    changing: bool  # a plain number and words that may change its value (`_drop_counted_noun`)


def _clean(answer: str) -> _Cleaned:
    s = answer.strip()
    s = _UNICODE_ROOT_RE.sub(lambda m: rf"\sqrt{{{m[1] if m[1] is not None else m[2]}}}", s)
    s = _UNICODE_MATH_RE.sub(lambda m: _UNICODE_MATH[m[0]], s)
    while True:  # "\boxed{\boxed{5}}", "\(5\)", "\mathbf{\frac{1}{2}}"
        wrapper = _WRAPPER_PREFIX_RE.match(s)  # ends at the '{' of the box
        delimited = _DELIMITED_RE.match(s)
        if wrapper and _closing_braces(s).get(wrapper.end()) == len(s) - 1:  # the box is the whole answer
            s = s[wrapper.end() + 1 : -1].strip()
        elif delimited:
            s = next(g for g in delimited.groups() if g is not None).strip()
        else:
            break
    s = s.rstrip(". ")  # a sentence's period, before units that must end the answer: "81\\text{ teachers}."
    scientific = _SCIENTIFIC_RE.fullmatch(s)
    if scientific:  # "1.5e6" for sympy too, which reads it as 1.5 e 6 (Euler's e)
        s = rf"{scientific[1]}\times10^{{{scientific[2]}}}"
    s = _THIN_THOUSANDS_RE.sub(",", s.replace("{,}", ","))  # "11,\! 111" -> "11,111"
    s = _DELETE_RE.sub("", s)
    s = _SPACE_RE.sub(" ", s)
    s = s.replace(r"\dfrac", r"\frac").replace(r"\tfrac", r"\frac").replace(r"\colon", ":")
    s = s.replace(r"\dbinom", r"\binom").replace(r"\tbinom", r"\binom")
    s = s.replace(r"\langle", "(").replace(r"\rangle", ")")  # a vector "\langle 1, 2 \rangle"
    s = _BARE_FRAC_RE.sub(lambda m: rf"\{m[1]}{{{_first(m[2], m[3])}}}{{{_first(m[4], m[5])}}}", s)
    s = _spaced_numbers(s)
    if _TRIG_RE.search(s):  # an angle of a trigonometric function in radians: "\sin 30^\circ" is not "\sin 30"
        s = _ANGLE_IN_DEGREES_RE.sub(lambda m: rf"(\frac{{{m[1]}\pi}}{{180}})", s)
    s = _DEGREES_RE.sub("", s)
    percent_word = bool(_PERCENT_WORD_RE.search(s))
    s = _PERCENT_WORD_RE.sub("", _PERCENT_RE.sub("", s))
    without_units = _strip_trailing_units(s)
    if re.search(r"\d", without_units):
        s = without_units  # "5\text{ cm}^2" -> "5"
    s = _UNIT_MACRO_RE.sub(lambda m: m.group(1), s)  # "\text{(A)}" -> "(A)"
    variable = ""
    assignment = _ASSIGNMENT_RE.match(s) if s.count("=") == 1 else None
    if assignment:
        variable, s = assignment.group(1), s[assignment.end() :]
    s, changing = _drop_counted_noun(s.strip())
    s = s.strip().rstrip(".").strip()
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    return _Cleaned(s, variable, percent_word, changing)


_SPACED_MIXED_RE = re.compile(r"(\d+)\s+(\d+)\s*/\s*(\d+)(?![\d.])")  # "2 1/2"
_SPACED_THOUSANDS_RE = re.compile(r"(?<![\d.])\d{1,3}(?:\s\d{3})+(?!\d)")  # "1 000 000"
_NUMBER_THEN_SPACE_RE = re.compile(r"(\d+(?:\.\d+)?)\s+(?=\d)")
_ARGUMENT_END_RE = re.compile(r"(?:[_^]|\\[A-Za-z]+\s*)$")  # "x^2 3", "\log_2 8", "\sqrt 2 3": a one-token argument


def _is_argument(s: str, start: int, also: str = "") -> bool:
    """Whether the digits at `start` are a one-token argument (of `_`, `^`, a macro, or a char of `also`)."""
    before = s[max(0, start - 40) : start]
    return bool(_ARGUMENT_END_RE.search(before)) or (bool(before) and before[-1] in also)


def _first(*options):
    return next(x for x in options if x is not None)


def _spaced_numbers(s: str) -> str:
    """Mixed numbers ("2 1/2" -> 2\\frac{1}{2}, also in lists) and thousands ("1 000" -> 1000) written
    with spaces, which are about to be dropped; not where the digits are a one-token argument."""
    s = _SPACED_MIXED_RE.sub(lambda m: m[0] if _is_argument(s, m.start(), "/.")
                             else rf"{m[1]}\frac{{{m[2]}}}{{{m[3]}}}", s)
    return _SPACED_THOUSANDS_RE.sub(lambda m: re.sub(r"\s", "", m[0]), s)


def _keep_apart(s: str) -> tuple[str, bool]:
    """Numbers only whitespace separates stay apart, as "{}" ("3 5" -> "3{}5", never 35), and the second
    value says there were such; digits that are a one-token argument ("x^2 3", "\\log_2 8") are left
    to TeX's reading."""
    grouped = _NUMBER_THEN_SPACE_RE.sub(lambda m: m[0] if _is_argument(s, m.start()) else m[1] + "{}", s)
    return grouped, grouped != s


def _strip_outer_braces(s: str) -> str:
    """'{{5}}' -> '5', but '{1}+{2}' is kept; linear time."""
    partner = _closing_braces(s)
    lo, hi = 0, len(s) - 1
    while lo < hi and partner.get(lo) == hi:
        lo, hi = lo + 1, hi - 1
    return s[lo : hi + 1]


class _Analysis(NamedTuple):
    core: str  # canonical form without the `x =` prefix and the percent sign
    value: Fraction | None  # exact rational value of the core, if it is a plain number
    variable: str  # the letter of an `x = ...` answer, else ""
    percent: bool  # written with a percent sign
    letters: bool  # letters only, two or more in a row ("east", "ab")
    word: bool  # letters written in a text macro or with a run of 4+ ("\\text{odd}", "Evelyn"): a word,
    #             not a product of variables; compared as case-insensitive text, never by sympy
    changing: bool = False  # a plain number and words that may change its value ("3 squared"): not a number
    apart: bool = False  # digits only whitespace separates ("3 5"): two numbers, not 35

    @property
    def canonical(self) -> str:
        return f"{self.variable}{'=' if self.variable else ''}{self.core}{'%' if self.percent else ''}"


@functools.lru_cache(maxsize=1 << 16)
def _analyze(answer: str) -> _Analysis:
    if len(answer) > _MAX_ANSWER_CHARS:
        return _Analysis(answer, None, "", False, False, False, False)
    s, variable, percent_word, changing = _clean(answer)
    if _LETTERS_RE.fullmatch(s):
        word = bool(_TEXT_MACRO_RE.search(answer) or re.search(r"[A-Za-z]{4}", s))
        return _Analysis(re.sub(r"\s+", "", s), None, variable, False, True, word)
    s, apart = _keep_apart(s)
    s = re.sub(r"\s+", "", s)
    s = _SINGLE_ARG_RE.sub(r"\\\1{\2}", s)  # \frac12 -> \frac{1}2, \sqrt2 -> \sqrt{2}
    s = _FRAC_SECOND_ARG_RE.sub(r"\1{\2}", s)  # \frac{1}2 -> \frac{1}{2}
    s = _strip_outer_braces(s)
    value = _parse_number(s)
    percent = bool(_PERCENT_RE.search(answer)) or percent_word
    return _Analysis(s if value is None else str(value), value, variable, percent, False, False, changing, apart)


def canonical_answer(answer: str) -> str:
    """Whitespace-free canonical form: equal strings denote equal answers (where vote keys start).

    Plain numbers are written as reduced fractions, so "2.5", "\\frac52" and "2\\frac12" share a key.
    The letter of an `x =` answer and a percent sign (or the word "percent") are kept ("x=3/2",
    "25%"), since they can change the verdict against a gold answer (`y = 3/2` is not `x = 3/2`, and
    `25%` is not `25` against a gold 1/4).
    Answers longer than 1000 characters are returned unchanged.
    """
    return _analyze(answer).canonical


def exact_value(answer: str) -> Fraction | None:
    """The exact rational an answer denotes if it is a plain number, else None.

    Accepted (after `clean_latex`): `-12`, `0.75`, `.5`, `1.5e6`, `1.5 \\times 10^6`, `3/4`, `\\frac{3}{4}`,
    `\\frac{-3}{4.5}`,
    mixed numbers `2\\frac{1}{2}` = 5/2, repeating decimals `0.1\\overline{6}` = 1/6, and any of these
    times a scale word: `2.5 million`, `10\\text{ thousand}`, `3 dozen`. Decimals are exact: 0.333333 != 1/3.
    """
    return _analyze(answer).value


def _parse_number(s: str) -> Fraction | None:
    if not s or len(s) > _MAX_NUMBER_CHARS:
        return None
    if _PLAIN_RE.fullmatch(s):
        return Fraction(s)
    m = _POWER_OF_TEN_RE.fullmatch(s)
    if m:
        return Fraction(m[1]) * Fraction(10) ** int(m[2] if m[2] is not None else m[3])
    for pattern in (_SLASH_RE, _FRAC_RE):
        m = pattern.fullmatch(s)
        if m:
            num, den = Fraction(m.group(2)), Fraction(m.group(3))
            if den == 0:
                return None
            return -num / den if m.group(1) else num / den
    m = _REPEATING_RE.fullmatch(s)
    if m:  # I.A(R)(R)... = I + (A + R / (10^|R| - 1)) / 10^|A|
        whole, head, period = m.group(2), m.group(3), m.group(4)
        repeating = Fraction(int(period), 10 ** len(period) - 1)
        value = int(whole or 0) + (int(head or 0) + repeating) / 10 ** len(head)
        return -value if m.group(1) else value
    m = _MIXED_RE.fullmatch(s)
    if m and int(m.group(4)) != 0:
        value = int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4)))
        return -value if m.group(1) else value
    m = _SCALED_RE.fullmatch(s)
    if m:
        value = _parse_number(m.group(1))
        return None if value is None else value * _SCALES[m.group(2)]
    return None


_PLUS_MINUS_RE = re.compile(r"\\(pm|mp)(?![a-zA-Z])")
# An item holding one of these is a structure (matrix, set, union, membership, equation) whose values a
# textual split would scramble: left to the parser.
_STRUCTURE_RE = re.compile(r"\\(?:begin|cup|cap|setminus|in)(?![a-zA-Z])|\\\{|=")


def _split_top_level(s: str) -> list[str]:
    """Splits at commas outside every bracket: '1, (2, 3), \\frac{a,b}{2}' -> 3 items."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(s):
        if c in "{([":
            depth += 1
        elif c in "})]":
            depth -= 1
        elif c == "," and depth == 0:
            items.append(s[start:i])
            start = i + 1
    return items + [s[start:]]


def expand_plus_minus(answer: str) -> str:
    """Writes an item with one `\\pm` / `\\mp` inside braces as its two values:
    '\\frac{1 \\pm \\sqrt{5}}{2}' -> '\\frac{1 + \\sqrt{5}}{2},\\frac{1 - \\sqrt{5}}{2}'.

    Items are the top-level comma-separated parts of the answer, or of the set `\\{...\\}` that is the
    whole answer. A `\\pm` outside braces ('1 \\pm \\sqrt{19}') is left to the parser, which reads it;
    so are an item with two or more (their signs may be tied or free), and an item holding a matrix, a
    set, a union, a membership or an equation.
    """
    if not _PLUS_MINUS_RE.search(answer):
        return answer
    body, opening, closing = answer.strip(), "", ""
    if body.startswith("\\{") and body.endswith("\\}") and _closing_braces(body).get(1) == len(body) - 1:
        body, opening, closing = body[2:-2], "\\{", "\\}"
    items = []
    for item in _split_top_level(body):
        signs = list(_PLUS_MINUS_RE.finditer(item))
        before = item[: signs[0].start()] if len(signs) == 1 and not _STRUCTURE_RE.search(item) else ""
        if before.count("{") > before.count("}"):  # the sign is inside braces
            first, second = ("+", "-") if signs[0].group(1) == "pm" else ("-", "+")
            after = item[signs[0].end() :]
            items += [f"{before}{first}{after}", f"{before}{second}{after}"]
        else:
            items.append(item)
    return opening + ",".join(items) + closing


def too_long(answer: str, gold: str) -> bool:
    """Whether an answer is over max(1000, 2 len(gold)) characters: it scores 0, never parsed."""
    return len(answer) > max(_MAX_ANSWER_CHARS, 2 * len(gold))


def _in_base(core: str) -> tuple[str, int] | None:
    """(digits, base) of a numeral with a base subscript ("52_8", "A3_{16}"), else None."""
    m = _BASE_RE.fullmatch(core)
    if m is None or not 2 <= int(m.group(2)) <= 36:
        return None
    try:
        int(m.group(1).replace(".", "", 1), int(m.group(2)))
    except ValueError:
        return None
    return m.group(1), int(m.group(2))


def _hedges(answer: str) -> bool:
    """Whether an answer holds two values joined by a construct math-verify reads one side of."""
    delimited = _DELIMITED_RE.match(answer.strip())  # "\(5\)" is one value
    inner = next(g for g in delimited.groups() if g is not None) if delimited else answer
    return bool(_HEDGE_RE.search(inner) or ("\\\\" in inner and not _MATRIX_RE.search(inner)))


def _ratio_value(a: _Analysis) -> Fraction | None:
    ratio = _RATIO_RE.fullmatch(a.core)
    if ratio:
        return Fraction(int(ratio[1]), int(ratio[2])) if int(ratio[2]) else None
    return a.value


def fast_verdict(answer: str | None, gold: str) -> bool | None:
    """Decides cheaply when possible; None = undecided (left to sympy).

    False: no answer, one longer than max(1000, 2 len(gold)) characters, two values in one answer
    ("1 \\lor 9", "25 (or 18)") unless the gold has the same construct, `x = ...` against `y = ...`,
    letters other than a gold word's, a plain number followed by words that may change its value
    ("3 squared", "1 twelfth") against a plain number. True: equal canonical forms (up to an `x =` on
    one side), or a gold word's letters in any case ("East" = "\\text{east}"; a gold "ab" may be a
    product), or a gold "70,110" (a number, or in MATH also a list) written with spaces ("70, 110").
    A numeral with a base subscript on either side ("52_8") decides alone: the same digits, and the
    same base or none on the answer ("52" = "52_8", "52_9" != "52_8", "52_9" != "52"); so does a
    colon: a ratio gold by value ("1:2" = "2:4" = "\\frac12"), else as text ("4:30 p.m." = "4:30 pm").
    Plain numbers on both sides are compared as exact rationals and the verdict is final; a percent
    sign on one side only also matches p/100 ("25\\%" = 0.25 and = 25, not 2500), on both sides it
    matches nothing else ("0.25\\%" != "25\\%").
    """
    if answer is None or too_long(answer, gold) or (_hedges(answer) and not _hedges(gold)):
        return False
    a, g = _analyze(answer), _analyze(gold)
    if a.variable and g.variable and a.variable.lower() != g.variable.lower():
        return False
    if a.core and a.core == g.core and a.percent == g.percent:
        return True
    bare = _BARE_THOUSANDS_RE.fullmatch(gold.strip())
    if bare and a.core == bare[1] and not a.percent:  # a gold "70,110" (70110, or the list 70, 110) as "70, 110"
        return True
    if g.word and a.letters:  # the gold alone decides, so that answers sharing a vote key share a verdict
        return a.core.lower() == g.core.lower()
    if a.changing and g.value is not None:  # sympy would read "4 fifteen" or "3 eighths" as the number
        return False
    if a.apart and not g.apart:  # math-verify reads "3 5" as 8
        return False
    if _COLON_RE.search(a.core) or _COLON_RE.search(g.core):  # times and ratios: sympy reads "4:31 p.m." as 4
        if _RATIO_RE.fullmatch(g.core) and _ratio_value(a) is not None:  # "1:2" = "2:4" = "\frac12"
            return _ratio_value(a) == _ratio_value(g)
        return a.core.lower().replace(".", "") == g.core.lower().replace(".", "")
    in_base = _in_base(a.core), _in_base(g.core)
    if in_base != (None, None):  # sympy reads "52_9" as 52
        (a_digits, a_base), (g_digits, g_base) = (b or (c.core, None) for b, c in zip(in_base, (a, g)))
        return a_digits.lower() == g_digits.lower() and a_base in (None, g_base or 10)
    if a.value is not None and g.value is not None:
        if a.percent == g.percent:
            return a.value == g.value
        percentage, plain = (a, g) if a.percent else (g, a)
        return plain.value in (percentage.value, percentage.value / 100)
    return None
