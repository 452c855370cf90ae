"""Answer extraction, canonical forms, the equivalence table, and hard timeouts of the verifier."""

import gc
import importlib
import multiprocessing.connection
import os
import signal
import time
from fractions import Fraction

import numpy as np
import pytest

from rl_sharpen.tasks.answers import canonical_answer, exact_value, expand_plus_minus, extract_answer
from rl_sharpen.tasks.verify import VerifierPool, symbolic_equal, verify, verify_batch

# (gold, answer) pairs a careful grader accepts.
EQUAL = [
    ("5", "5"), (r"\frac{1}{2}", "0.5"), (r"\frac12", r"\dfrac{1}{2}"), (r"\frac{1}{2}", r"\tfrac12"),
    (r"2\frac{1}{2}", r"\frac{5}{2}"), (r"2\frac{1}{2}", "2.5"), (r"-\frac{3}{4}", "-0.75"),
    (r"\frac{-3}{4}", r"-\frac34"),
    ("3", "3.0"), ("0.5", ".5"), ("1.50", "1.5"), ("-0", "0"), (r"\frac{2}{4}", r"\frac{1}{2}"),
    (r"\frac{1}{6}", "1/6"),
    (r"1\frac{1}{3}", r"\frac{4}{3}"), (r"\frac{7}{3}", r"2\frac13"), (r"\dfrac{3}{2}", "1.5"),
    # thousands separators, units, degrees, percentages, prefixes, wrappers
    ("1000", "1,000"), ("1000", "1{,}000"), ("1000", r"1\,000"), ("1234567", "1,234,567"),
    (r"30^\circ", "30"), ("30", r"30^{\circ}"), ("45", "45°"), (r"10\%", "10"), (r"10\%", "0.1"), ("25", r"25\%"),
    (r"\frac{1}{4}", r"25\%"), (r"50\%", r"\frac{1}{2}"), (r"5\text{ cm}", "5"), ("5", r"5 \text{ cm}^2"),
    ("10000000", r"10\text{ million}"), ("2500000", "2.5 million"), (r"\$1.5\text{ billion}", "1500000000"),
    ("36", "3 dozen"), ("-2000", r"-2\text{ thousand}"),
    (r"4\text{ inches}", "4"), ("18", "18 dollars"), (r"\$18", "18"), (r"\$1.50", "1.5"), ("3", "x=3"), ("3", "x = 3"),
    ("x=5", "5"), ("12", "12."), ("81", r"81\text{ teachers}."), (r"15\mbox{ cm}^2", r"15\mbox{ cm}^2."), ("5", r"\boxed{5}"), ("2", "{2}"), ("-2", "- 2"), ("7", r"\mathbf{7}"),
    # radicals, constants, expressions
    (r"\sqrt{2}/2", r"\frac{1}{\sqrt{2}}"), (r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt3}{2}"), (r"3\sqrt{2}", r"\sqrt{18}"),
    (r"2\sqrt{3}", r"\sqrt{12}"), (r"\sqrt{8}", r"2\sqrt{2}"), (r"\frac{1}{\sqrt{3}}", r"\frac{\sqrt{3}}{3}"),
    (r"\frac{3}{\sqrt{5}}", r"\frac{3\sqrt{5}}{5}"), (r"\dfrac{\sqrt{2}}{2}", r"\frac{\sqrt{2}}{2}"),
    (r"-\sqrt{3}", r"-1\cdot\sqrt{3}"), (r"\frac{\pi}{2}", r"\pi/2"), (r"6\pi", r"6 \pi"),
    (r"\frac{9\pi}{4}", r"2.25\pi"),
    ("10", r"\binom 5 2"), ("10", r"\tbinom52"), ("10", r"\dbinom{5}{2}"), (r"\binom{5}{2}", r"\binom 52"),
    ("10", r"\binom{5}2"), (r"\binom{2n}{n}", r"\binom{2n}n"), (r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt3}2"),
    (r"\sqrt{2}", "2^{1/2}"), ("100", "10^2"), ("2^{10}", "1024"), (r"\frac{1}{2^{99}}", "2^{-99}"),
    (r"\frac{1}{2004!}", r"\frac{1}{2004!}"), ("x^2+2x+1", "(x+1)^2"), ("2x+2", "2(x+1)"), ("a+b", "b+a"),
    ("3x", r"x \cdot 3"), ("y=2x+1", "2x+1"),
    # tuples, intervals, sets, plus-minus, infinity, matrices, text
    ("(1,2)", "(1, 2)"), ("(1,2)", r"\left(1,2\right)"), ("[1,2)", "[1, 2)"), (r"(-\infty, 3]", r"(-\infty,3]"),
    (r"(0,\infty)", r"(0, \infty)"), (r"\left[ 0, 1 \right]", "[0,1]"), (r"x \in [1,2]", "[1,2]"),
    (r"(3, \frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)"), (r"\{1,2\}", r"\{2,1\}"), ("1,2", "2, 1"),
    (r"\{3\}", "3"), (r"\pm 2", "2,-2"), (r"1 \pm \sqrt{2}", r"1+\sqrt{2}, 1-\sqrt{2}"), (r"\infty", r"\infty"),
    (r"-\infty", r"-\infty"), (r"\begin{pmatrix}1\\2\end{pmatrix}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
    (r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\begin{pmatrix}1&2\\3&4.0\end{pmatrix}"), (r"\text{(A)}", "A"),
    (r"\text{Devon}", "Devon"), (r"\text{east}", r"\text{East}"), (r"\text{even}", "Even"),
    (r"\text{ellipse}", r"\text{Ellipse}"), (r"\mbox{Saturday}", "saturday"), (r"x = \frac{3}{2}", r"x=\frac32"),
    (r"25\%", r"25 \%"), (r"0.5\%", "0.005"), ("x = 5", "X = 5"), ("ab", "ba"), (r"\text{odd}", "Odd"),
    # one-letter constants inside \text / \mathrm are values, not units
    ("3+2i", r"3+2\mathrm{i}"), (r"e^{2}", r"\mathrm{e}^2"), ("4", "4 square feet"),
    ("6", r"6\text{ children tickets}"),
    # counted nouns after a plain number, with or without a \text{}
    ("81", "81 teachers"), ("81", "81 math teachers."), ("575", "575 students"), ("5", "x = 5 apples"),
    ("21", "21 more candies"), ("5", "5 more than Mary"), ("24", "24 times"),
    (r"6\sqrt{3}", r"6\sqrt{3} units"), (r"10\pi", r"10\pi feet"), (r"\frac34", r"\frac{3}{4} cup"),  # after LaTeX
    (r"\frac52", r"2 \frac{1}{2} cups"), (r"\frac{35}{3}", r"11 \dfrac{2}{3} hours"),  # after a mixed number
    ("0.05", "5 percent"), (r"\frac14", "25 percent"),
    (r"25\%", "25 percent"), ("60", "60 percent"), ("60", "60 miles per hour"), ("12", "12 meters squared"),
    ("27", "27 inches cubed"), ("12", "12 men"), ("49", "49 fourth graders"),
    # a plus-minus inside a fraction, repeating decimals
    (r"\frac{1+\sqrt{5}}{2}, \frac{1-\sqrt{5}}{2}", r"\frac{1 \pm \sqrt{5}}{2}"),
    (r"\frac{3 \pm \sqrt{5}}{2}", r"\frac{3-\sqrt5}{2}, \frac{3+\sqrt5}{2}"),
    (r"3 \pm 2 \sqrt{2}", r"\frac{6 \pm 4\sqrt{2}}{2}"),
    (r"\{1\pm\sqrt{5},-2\}", r"\{\frac{4 \mp 4\sqrt{5}}{4}, -2\}"), (r"\frac{1}{3}", r"0.\overline{3}"),
    (r"\frac{1}{6}", r"0.1\overline{6}"), (r"\frac{4}{33}", r"0.\overline{12}"), ("1", r"0.\overline{9}"),
    (r"\{1 \pm \sqrt2\} \cup \{3\}", r"\{1+\sqrt2, 1-\sqrt2, 3\}"),
    (r"1+\sqrt{2}, 1-\sqrt{2}", r"x \in \{1 \pm \sqrt{2}\}"),
    (r"\begin{pmatrix} \frac{\pm 1}{3} \\ 3 \end{pmatrix}", r"\begin{pmatrix} \pm\frac{1}{3} \\ 3 \end{pmatrix}"),
    # equations: the same up to a factor
    ("x+y=3", "2x+2y=6"), ("x^2+y^2=1", "x^2+y^2-1=0"), ("3, 5, 7", "(3, 5, 7)"),
    ("(1,2)", "1, 2"), ("1, 2", "(1, 2)"), ("(15,-29)", "15, -29"),  # "(1,2)" may be a point
    # base subscripts (the answer may leave the base out), thousands separated by a thin space
    ("52_8", "52"), ("52_8", "52_{8}"), ("4210_{5}", "4210_5"), ("52", "52_{10}"), ("A3_{16}", "a3_{16}"),
    (r"11,\! 111,\! 111,\! 100", "11111111100"), (r"11,\! 111,\! 111,\! 100", "11,111,111,100"),
    ("1000000", r"1,\! 000,\! 000"), (r"111, \! 111", "111111"), ("-221_3", "-221"), ("0.0011_{2}", "0.0011_2"),
    # one-token fraction arguments, a time or ratio as text
    (r"\frac \pi4 + 2 - \sqrt2", r"\frac{\pi}{4}+2-\sqrt{2}"), (r"\frac{\pi}{4}", r"\frac \pi{4}"), (r"\frac12", r"\frac1{2}"),
    (r"\text{4:30 p.m.}", "4:30 pm"), ("1:2", "1:2"), (r"\text{1:03 PM}", r"1:03\text{ PM}"), ("1:2", "2:4"),
    ("3:1", "3"), ("1:2", r"\frac12"), ("1:2", r"1 \colon 2"), (r"\begin{pmatrix}1\\2\end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
    (r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}", r"\left(-\frac13,\frac23,\frac53\right)"),  # a vector as a tuple
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", "(1, 2)"), (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\langle 1, 2 \rangle"),
    ("4t", "4t"), ("5", r"\(5\)"), (r"76^\circ", r"76^\circ degrees"), (r"9\pi", r"9\pi\text{ cubic feet}"), ("49", "49 fourth graders"), ("30", "30 boys and girls"),
    ("15", "15 degrees lower"), ("3", "3 third graders"), ("12", "12 quarters"),
    # whitespace between digits: a mixed number or thousands; a bare "70,110" (a number, or a list)
    (r"\frac{5}{2}", "2 1/2"), (r"137 \frac{1}{2}", "137 1/2"), (r"1\frac{4}{5}", "1 4/5"), ("-1.5", "-1 1/2"),
    ("1000000", "1 000 000"), ("70,110", "70, 110"), ("70,110", r"70^\circ, 110^\circ"),
    # bold, angles of trigonometric functions, scientific notation, Unicode
    (r"\frac12", r"\mathbf{\frac{1}{2}}"), (r"\frac12", r"\textbf{\frac{1}{2}}"),
    (r"2\sqrt{5}", r"\boldsymbol{2\sqrt5}"),
    (r"\sin 32^\circ", r"\cos 58^\circ"), (r"2\cos 15^{\circ}", r"\frac{\sqrt6+\sqrt2}{2}"),
    ("1500000", "1.5e6"), ("0.0025", "2.5E-3"), (r"\sqrt{2}", "\u221a2"), ("x^2+1", "x\u00b2+1"), ("-3", "\u22123"),
    (r"2\sqrt{3}", "\u221a12"), (r"3\sqrt{13}", "3\u221a13"), ("25", "25 cm\u00b2"), ("12", "12 m\u00b3"),
    ("30", "3e1"),
    (r"1.5\times 10^6", "1.5e6"), ("1500000", r"1.5 \times 10^6"),
    (r"\sqrt{e}", "e^{0.5}"), (r"\frac{1}{\sqrt e}", "e^{-0.5}"),  # sympy evaluates these to Floats
    ("3", r"\log_2 8"), (r"3\sqrt2", r"\sqrt 2 3"), ("-3.5", "- 3 1/2"), (r"\frac32, \frac52", "1 1/2, 2 1/2"),
]

# (gold, answer) pairs a careful grader rejects; the first block fools plain math-verify.
UNEQUAL = [
    ("10", r"\binom 6 2"), ("10", r"\binom{6}{2}"), ("10", r"\binom{6}2"),
    (r"\frac{1}{2^{99}}", r"\frac{1}{2^{98}}"), (r"\frac{1}{2004!}", r"\frac{1}{2006!}"), ("6", "6.0000001"),
    (r"\frac{1}{3}", "0.333333"), (r"\frac{1}{3}", "0.3333333333333333"), (r"\sqrt{2}", "1.41421356"),
    (r"x+\frac{1}{2^{99}}", r"x+\frac{1}{2^{98}}"), (r"(\frac{1}{2^{99}}, 1)", r"(\frac{1}{2^{98}}, 1)"),
    (r"\{1, \frac{1}{2^{99}}\}", r"\{1, \frac{1}{2^{98}}\}"), (r"\frac{1}{7}", "0.142857"),
    (r"\frac{\sqrt{3}}{2}", "0.8660254"),
    ("1/2", "0.50000001"), ("e", "2.718281828"), (r"\frac{1}{10^{20}}", r"\frac{1}{10^{21}}"),
    ("2", r"\sqrt{4.0000001}"), (r"\sqrt{3}", r"\sqrt{3.00001}"), (r"\pi", "3.14159"), ("0", "0.0000001"),
    ("10^{-20}", "0"),
    # plainly different
    ("[1,2)", "(1,2)"), ("[1,2]", "[1,2)"), ("(1,2)", "(2,1)"), ("(2,3)", "[2,3]"), ("(1,2)", "(1,3)"),
    (r"\{1,2\}", r"\{1,2,3\}"), (r"\{3\}", r"\{3, 4\}"), (r"\pm 2", "2"), ("5", "6"), ("-5", "5"), ("1000", "100"),
    ("1,000", "1"), ("1.5", "1.05"), (r"\frac{1}{2}", r"\frac{2}{1}"), (r"\frac{2}{4}", r"\frac{1}{4}"),
    (r"2\frac{1}{2}", "1"),
    (r"10\%", "1"), (r"50\%", "0.05"), ("2^{10}", "1000"), (r"\sqrt{8}", r"2\sqrt{3}"), (r"3\sqrt{2}", r"\sqrt{17}"),
    (r"-\sqrt{3}", r"\sqrt{3}"), (r"\frac{\pi}{2}", r"\frac{\pi}{3}"), (r"\frac{9\pi}{4}", "2.25"),
    ("x^2+2x+1", "(x-1)^2"),
    ("2x+2", "2(x+2)"), ("3x", "x+3"), ("y=2x+1", "y=2x+2"), ("x=5", "x=-5"), (r"\infty", r"-\infty"),
    (r"\begin{pmatrix}1\\2\end{pmatrix}", r"\begin{pmatrix}2\\1\end{pmatrix}"), (r"\text{(A)}", "B"),
    ("7", r"\mathbf{1}"),
    ("12", r"1 \text{ or } 2"), ("12", "1,2"),
    # value words and constants are not units
    ("3+2", r"3+2\mathrm{i}"), ("3", r"3\text{e}"), ("10", r"10\text{ million}"), ("1", "1 million"), ("2", "2 pi"),
    ("5", r"5\text{ hundred}"), ("3", "3 thousand apples"),
    # words that change a plain number's value, or make a product, are not counted nouns
    (r"50\%", "0.5 percent"), ("3", "3 squared"), ("5", "5 factorial"), ("1", "1 twelfth"), ("3", "3 millionths"),
    ("2", "2 point five"), ("2", "2 negative"), ("5", "5 thirteen"), ("3", "3 eighths"), ("1", "1 trillionth"),
    ("2", "2 to the third"), ("2", "2 sqrt"), ("3", "3 square"),  # sympy alone would read some as the number
    ("4", "4 or more"), ("4", "4 or fewer apples"), ("3", "3 at most"), ("3", r"3\text{ or less}"),  # ranges, bounds
    (r"2\sqrt{3}", r"2\sqrt{3} squared"), (r"\frac12", r"\frac{1}{2} cos"), ("2", r"2 \frac{1}{2} cups"),
    (r"\frac52", r"2 \frac{1}{2} squared"), (r"3\sqrt{2}", r"3\sqrt{2} or more"),
    # the letter of an assignment, percent on both sides, words (sympy reads them as products of letters)
    (r"y = -\frac{1}{4}", r"x = -\frac14"), (r"x = \frac{3}{2}", r"y = \frac32"), (r"y = \sqrt{2}", r"x = \sqrt2"),
    (r"25\%", r"0.25\%"), (r"50\%", r"0.5\%"), (r"25\%", r"2500\%"), (r"25\%", "2500"), ("2500", r"25\%"),
    (r"\text{east}", r"\text{seat}"), (r"\text{evil}", r"\text{vile}"), (r"\text{ACF}", r"\text{CFA}"),
    (r"\frac{1+\sqrt{5}}{2}, \frac{1-\sqrt{5}}{2}", r"\frac{-1 \pm \sqrt{5}}{2}"),
    (r"\frac{1+\sqrt{5}}{2}", r"\frac{1 \pm \sqrt{5}}{2}"), (r"\frac{1}{3}", r"0.\overline{6}"),
    (r"\frac{1}{3}", r"0.3\overline{4}"), (r"\{\{1\pm 2\}, 3\}", r"\{\{3\}, \{-1\}, 3\}"),
    # an equation is not its right-hand side, an interval not its endpoints (math-verify matches both)
    ("x=5", "x^2=5"), ("x=5", "2x=5"), ("x=5", "f(x)=5"), ("5", "y^2=5"), ("x+y=3", "x+y=4"),
    (r"(-\sqrt{3}, \sqrt{3})", r"\pm\sqrt{3}"), (r"(-\sqrt{3}, \sqrt{3})", r"x = \pm\sqrt{3}"),
    (r"(2,\infty)", r"2, \infty"), ("[1,2]", "1, 2"), (r"\pm 1", "(-1,1)"),
    # another base (sympy reads each as 52), a thin-space number is not a list, hedges and last fraction words
    ("52_8", "52_9"), ("52_8", "52_{10}"), ("4210_{5}", "4210_{6}"), ("52", "52_9"),
    (r"11,\! 111,\! 111,\! 100", "100,111,11"), (r"11,\! 111,\! 111,\! 100", "111, 100, 11"),
    ("5", "5 not"), ("5", "5 is not right"), ("5", r"5\text{ is not the answer}"), ("5", r"5\text{ (or 6)}"),
    ("5", "5 and higher"), ("5", "5 and up"), ("1", "1 third"), ("1", "1 fourth"),
    (r"\frac \pi4 + 2 - \sqrt2", "2"), (r"\frac \pi4 + 2 - \sqrt2", r"\frac \pi4 + 2 - \sqrt3"),  # it read as 2
    (r"\text{4:30 p.m.}", r"\text{4:31 p.m.}"), ("1:1", r"\left(1:1\right)^2"), (r"111, \! 111", "111"),
    ("-221_3", "-221_4"), ("0.0011_{2}", "0.0011_{3}"),
    (r"\text{1:03 PM}", r"1:03\text{ AM}"), ("1:2", "2:1"), ("1:2", "2"),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", "(2, 1)"), (r"\begin{pmatrix} 1 \\ 2 \\ 3 \end{pmatrix}", "(1, 2)"),
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", "(1, 2, 3, 4)"),
    # two values in one answer, of which math-verify reads one; letters math-verify dropped as units
    ("9", r"1234567 \lor 9"), ("9", r"1234567 \\ 9"), ("9", r"\begin{cases} 1234567 \\ 9 \end{cases}"),
    ("9", r"1234567 \) \( 9"), ("9", r"\tag{1234567} 9"), ("9", r"\cancel{1234567} 9"), ("9", r"9 \approx 1234567"),
    ("18", "25 (or 18)"), ("18", "18\u201325"), ("9", r"9\text{ otherwise }\text{XI}"),
    ("4t", "4"), ("4t", "4s"), ("9", "9h"), (r"\frac{14}{3}", r"\frac{14}{3}c"),
    ("9", r"1234567 \to 9"), ("9", r"1 \rightarrow 9"), ("9", r"1 \Longrightarrow 9"), ("9", r"1 \iff 9"),
    ("9", r"1 \mid 9"),
    # digits apart are two numbers, not one; a decimal is not an irrational number at any precision
    (r"\frac{21}{2}", "2 1/2"), ("35", "3 5"), ("8", "3 5"), ("-5.5", "-1 1/2"), ("58,500", "500, 58"),
    ("58,500", "58,500,58"), (r"\pi", "3.141592653589793"), (r"\frac{\sqrt3}{2}", "0.8660254037844386"),
    (r"(2\sqrt2, 1)", "(2.8284271247461903, 1)"),
    (r"\sin 32^\circ", r"\sin 32"), (r"\sin 32^\circ", r"\cos 32^\circ"), ("1500000", "1.5e5"),
    (r"\frac12", r"\mathbf{\frac{1}{3}}"),
    ("2", "\u221a12"), ("0", "\u221a10"), ("70,110", r"70\%, 110"), ("3e", "3e1"),
    (r"\begin{pmatrix} 2\sqrt2 \\ 1 \end{pmatrix}", "(2.8284271247461903, 1)"),
]

# Each of these keeps sympy busy far beyond a few seconds (C-level big-integer loops, deep parses).
PATHOLOGICAL = ["9^{9^{9^{9}}}", "2^{2^{2^{2^{2^{2}}}}}", "{" * 400 + "x" + "}" * 400, "99999999999!"]


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(workers=2) as p:
        yield p


def test_table_is_large_and_consistent():
    assert len(EQUAL) + len(UNEQUAL) >= 60
    assert not set(EQUAL) & set(UNEQUAL)


def test_equivalence_table(pool):
    pairs = [(g, a, 1.0) for g, a in EQUAL] + [(g, a, 0.0) for g, a in UNEQUAL]
    completions = [f"Step 1 ... so the result is $\\boxed{{{a}}}$." for _, a, _ in pairs]
    rewards, stats = verify_batch(completions, [g for g, _, _ in pairs], timeout=20.0, pool=pool)
    wrong = [(g, a, want) for (g, a, want), got in zip(pairs, rewards) if got != want]
    assert wrong == []
    assert stats.num_timeouts == stats.num_errors == stats.num_no_answer == 0
    assert stats.num_fast >= len(pairs) // 3  # most plain-number pairs never reach sympy


@pytest.mark.parametrize("gold, answer", [
    (r"\frac{1}{2^{99}}", r"\frac{1}{2^{98}}"), (r"\frac{1}{2004!}", r"\frac{1}{2006!}"),
    (r"x+\frac{1}{2^{99}}", r"x+\frac{1}{2^{98}}"), (r"\{1, \frac{1}{2^{99}}\}", r"\{1, \frac{1}{2^{98}}\}"),
])
def test_veto_rejects_what_math_verify_accepts(gold, answer):
    import math_verify

    parsed = [math_verify.parse(f"${s}$", parsing_timeout=None) for s in (gold, answer)]
    assert math_verify.verify(*parsed, timeout_seconds=None)  # the weakness being fixed
    assert not symbolic_equal(answer, gold)
    assert symbolic_equal(gold, gold)


@pytest.mark.parametrize("text, expected", [
    (r"so $\boxed{\frac{1}{\sqrt{2}}}$.", r"\frac{1}{\sqrt{2}}"),
    (r"first \boxed{1}, then \boxed{2}", "2"),
    (r"\fbox{7} done", "7"),
    (r"\boxed 5 apples", "5"), (r"so \boxed5.", "5."), ("\\boxed\n{7}", "7"),
    ("I put it in \\boxed\n\nThe answer is 7.", "7"),  # a bare \boxed's token is on its own line
    (r"\boxed{\{1, \{2\}\}}", r"\{1, \{2\}\}"),
    ("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 1,080", "1,080"),
    ("We get 6. Therefore, the answer is 42.", "42"),
    ("The answer is: $3.5$.\nDone.", "3.5"),
    ("The answer is: **42**", "42"), ("#### **17**", "17"),
    ("Final Answer: 18", "18"), ("**Answer:** 18", "18"), ("Final answer: $x = 2$.", "x = 2"),
    ("#### Step 1: Add\n2+3=5\n#### Conclusion\nThe answer is 5.", "5"),  # markdown headings are not answers
    ("#### 5\nOn second thought, the answer is 6.", "6"), ("The answer is 6.\n#### 7", "7"),  # the last one
    ("#### x = 5", "x = 5"), ("#### Yes", "Yes"),
    (r"the answer is 5 but \boxed{6}", "6"),
    (r"unfinished \boxed{12", None),
    (r"so \boxed{5}. Check: \boxed{", "5"),  # a box cut off at the end hides no earlier answer
    (r"\boxed{1} and \fbox{2 \boxed{3}", "3"),
    (r"\boxed{4} and \boxed", "4"),
    (r"\boxed{7}, not \boxed.", "7"),  # punctuation after a bare \boxed is not a one-token answer
    (r"\boxed{}", None),
    (r"\boxed{\$}", None), (r"\boxed{\text{}}", None), (r"\boxed{\,}", None),  # nothing in the box either
    ("The answer is $$.", None), (r"\boxed{\$5}", r"\$5"),
    ("no final answer here", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_is_linear_on_long_inputs():
    text = r"\boxed{" * 20000 + "1"
    gc.disable()  # times the algorithm, not a collection of the whole test process's heap (~30 ms alone)
    try:
        start = time.perf_counter()
        assert extract_answer(text) is None
        nested = "{" * 5000 + "2" + "}" * 5000
        assert extract_answer("x" * 100000 + r"\boxed{" + nested + "}") == nested
        assert extract_answer("So the answer" + " " * 50000) is None  # whitespace with no ':' after "answer"
        assert time.perf_counter() - start < 1.0
    finally:
        gc.enable()


@pytest.mark.parametrize("answer, canonical", [
    (r"\dfrac12", "1/2"), ("2.50", "5/2"), (r"2\frac12", "5/2"), (r"\left( 1, 2 \right)", "(1,2)"),
    (r"1\,000", "1000"), (r"x = \sqrt2", r"x=\sqrt{2}"), (r"25\%", "25%"), (r"\text{ East}", "East"), (r"{{\frac{a}{b}}}", r"\frac{a}{b}"), ("{1}+{2}", "{1}+{2}"),
    (r"90^\circ", "90"), (r"12\text{ m}^2", "12"), (r"\text{(C)}", "(C)"), ("$-3$", "-3"),
    (r"3+2\mathrm{i}", "3+2i"), (r"10\text{ million}", "10000000"), (r"10\text{ million dollars}", "10milliondollars"),
    ("2 pi", "2pi"), ("1 million", "1000000"), ("4 sq ft", "4"), ("575 students", "575"), ("5 pm", "5pm"),
    ("x = 5 cm", "x=5"),
    ("2 1/2", "5/2"), ("3 5", "3{}5"), ("1 000", "1000"), (r"\sin 30^\circ", r"\sin(\frac{30\pi}{180})"),
    (r"\mathbf{\frac12}", "1/2"), ("1.5e6", "1500000"), ("\u221a2", r"\sqrt{2}"),
    ("3 ab", "3ab"), ("0.5 percent", "1/2%"), ("49 fourth graders", "49"), ("60 miles per hour", "60"),
    ("12 meters squared", "12"), ("3 squared", "3squared"), (r"25\text{ per cent}", "25%"),
    (r"6\text{ children tickets}\text{ ok}", "6"), (r"144 \mbox{ m}^3", "144"),
    (r"81\text{ teachers}.", "81"), (r"15\mbox{ cm}^2.", "15"), (r"50\%.", "50%"),  # a sentence's period
])
def test_canonical_answer(answer, canonical):
    assert canonical_answer(answer) == canonical


@pytest.mark.parametrize("answer, value", [
    ("-12", Fraction(-12)), ("0.75", Fraction(3, 4)), (".5", Fraction(1, 2)), ("3/4", Fraction(3, 4)),
    (r"\frac{-3}{4.5}", Fraction(-2, 3)), (r"-2\frac{1}{2}", Fraction(-5, 2)), ("1,234", Fraction(1234)),
    ("2.5 million", Fraction(2500000)), (r"\frac{1}{2}\text{ million}", Fraction(500000)), ("million", None),
    ("x million", None), (r"\frac{1}{0}", None), ("x", None), (r"\sqrt{2}", None), ("9" * 300, None),
    (r"0.\overline{3}", Fraction(1, 3)), (r"-1.2\overline{45}", -(1 + Fraction(2, 10) + Fraction(45, 990))),
    (r".\bar{7}", Fraction(7, 9)), (r"2.\overline{142857}", Fraction(15, 7)), (r"\overline{3}", None),
])
def test_exact_value(answer, value):
    assert exact_value(answer) == value


@pytest.mark.parametrize("answer, expanded", [
    (r"\frac{1 \pm \sqrt{5}}{2}", r"\frac{1 + \sqrt{5}}{2},\frac{1 - \sqrt{5}}{2}"),
    (r"\frac{3 \mp x}{2}, 7", r"\frac{3 - x}{2},\frac{3 + x}{2}, 7"),
    (r"\{\frac{1\pm\sqrt5}{2},-2\}", r"\{\frac{1+\sqrt5}{2},\frac{1-\sqrt5}{2},-2\}"),
    (r"1 \pm \sqrt{19}", r"1 \pm \sqrt{19}"),  # outside braces: math-verify reads it
    (r"\frac{\pm 1 \pm \sqrt{5}}{2}", r"\frac{\pm 1 \pm \sqrt{5}}{2}"),  # two signs: tied or free?
    (r"\begin{pmatrix}1\\2\end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}"), ("(1, 2)", "(1, 2)"),
    # structures a textual split would scramble are left to the parser
    (r"\{1 \pm \sqrt2\} \cup \{3\}", r"\{1 \pm \sqrt2\} \cup \{3\}"),
    (r"x \in \{1 \pm \sqrt{2}\}", r"x \in \{1 \pm \sqrt{2}\}"),
    (r"\begin{pmatrix} \frac{\pm 1}{3} \\ 3 \end{pmatrix}", r"\begin{pmatrix} \frac{\pm 1}{3} \\ 3 \end{pmatrix}"),
    (r"\{\{1\pm 2\}, 3\}", r"\{\{1\pm 2\}, 3\}"),
])
def test_expand_plus_minus(answer, expanded):
    assert expand_plus_minus(answer) == expanded


def test_fast_path_decides_plain_numbers_without_workers():
    pool = VerifierPool(workers=1)  # never used: no pair needs sympy
    completions = [r"\boxed{0.5}", r"\boxed{3}", "#### 1,000", "nothing", r"\boxed{" + "x" * 1001 + "}"]
    rewards, stats = verify_batch(completions, [r"\frac12", "4", "1000", "1", "y"], pool=pool)
    np.testing.assert_array_equal(rewards, [1, 0, 1, 0, 0])
    assert rewards.dtype == np.float32
    # no-answer and over-long items score 0 without being counted as decided by the fast path
    assert (stats.num_fast, stats.num_symbolic, stats.num_no_answer, stats.num_too_long) == (3, 0, 1, 1)


def test_verify_single_and_argument_errors(pool):
    assert verify(r"The answer is $\boxed{\dfrac{3}{4}}$", "0.75") == 1.0
    assert verify(r"\boxed{0.76}", "0.75") == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        verify_batch(["a"], [], pool=pool)
    with pytest.raises(ValueError, match="timeout"):
        pool.run([("1", "1")], timeout=0)
    with pytest.raises(ValueError, match="workers"):
        VerifierPool(workers=0)


def test_package_attribute_verify_is_the_module():
    import rl_sharpen.tasks

    assert rl_sharpen.tasks.verify is importlib.import_module("rl_sharpen.tasks.verify")
    assert rl_sharpen.tasks.verify.verify is verify


def test_memory_limit_applies_in_workers(pool):
    # Receiving a 50 MB answer needs fresh memory, which a 1 MiB address-space limit refuses: the
    # worker exits and the pair counts as an error. Under the default 4 GiB limit it is received
    # (and then merely too slow to parse).
    with VerifierPool(workers=1, memory_limit_mb=1) as tiny:
        equal, timeouts, errors = tiny.run([("x" * 50_000_000, "5")], timeout=10.0)
        assert (equal.tolist(), timeouts, errors) == ([False], 0, 1)
    assert pool.run([("x" * 50_000_000, "5")], timeout=1.0)[1:] == (1, 0)


def test_pairs_sent_to_a_dead_worker_are_graded_by_its_replacement(pool):
    pool.run([("1", "1")], timeout=5.0)  # the workers exist
    for w in pool._workers:  # killed while idle (by the OS, say): the pool learns of it at its next send
        os.kill(w.pid, signal.SIGKILL)
        multiprocessing.connection.wait([w.conn], timeout=10.0)  # its end of the pipe has closed
    pairs = [("x^2+2x+1", "(x+1)^2"), (r"\frac{1}{2}\sqrt{3}", r"\frac{\sqrt{3}}{2}"), ("2+1", "3")]
    equal, timeouts, errors = pool.run(pairs, timeout=5.0)
    assert (equal.tolist(), timeouts, errors) == ([True] * 3, 0, 0)
    # The template the workers fork from, killed too: the pool starts another.
    for w in pool._workers:
        os.kill(w.pid, signal.SIGKILL)
    os.kill(pool._template.pid, signal.SIGKILL)
    pool._template.join(timeout=10.0)
    equal, timeouts, errors = pool.run(pairs, timeout=5.0)
    assert (equal.tolist(), timeouts, errors) == ([True] * 3, 0, 0)


def test_pathological_answers_time_out_and_score_zero(pool):
    golds = ["5"] * len(PATHOLOGICAL) + [r"\frac{\sqrt{3}}{2}", "(x+1)^2"]
    completions = [rf"\boxed{{{a}}}" for a in PATHOLOGICAL] + [r"\boxed{\frac{1}{2}\sqrt{3}}", r"\boxed{x^2+2x+1}"]
    completions.append(r"\boxed{" + "7" * 50000 + "}")  # over the length cap: rejected unparsed
    golds.append("7")
    timeout = 1.0
    start = time.perf_counter()
    rewards, stats = verify_batch(completions, golds, timeout=timeout, pool=pool)
    elapsed = time.perf_counter() - start
    np.testing.assert_array_equal(rewards, [0] * len(PATHOLOGICAL) + [1, 1, 0])
    assert (stats.num_timeouts, stats.num_errors, stats.num_symbolic) == (len(PATHOLOGICAL), 0, len(PATHOLOGICAL) + 2)
    # Ideal: 4 hung pairs / 2 workers * 1 s = 2 s (replacements are warm forks); slack for a busy machine.
    assert elapsed < 2.0 + 8.0
    # One hung pair holds one worker; the other keeps going, and the pool is healthy afterwards.
    pairs = [("9^{9^{9^{9}}}", "5")] + [(f"{i}+1", str(i + 1)) for i in range(6)]
    equal, timeouts, errors = pool.run(pairs, timeout=3.0)
    assert equal.tolist() == [False] + [True] * 6
    assert (timeouts, errors) == (1, 0)
