#!/usr/bin/env python3
"""Builds tests/fixtures/reward/math_cases.jsonl: (completion, gold, expected) cases for the
built-in math reward, labelled by Math-Verify the way verl's math_verify.compute_score does
(ALGORITHMS.md §8.3):
  gold = parse("\\boxed{" + gold + "}", [LatexExtractionConfig()])
  pred = parse(completion, [ExprExtractionConfig(), LatexExtractionConfig()])
  expected = verify(gold, pred)          (float_rounding=6, numeric_precision=15, strict=True)
Cases are hand-written templates x values: the answer boxed / in <answer> tags / after
"Answer:" / "The answer is" / bare at the end, decoy numbers and boxes earlier in the text,
right answers in another form (fraction vs decimal, units, degrees, percent, thousands
separators, scientific notation, mixed numbers, tuples, intervals, sets, expressions with x),
wrong answers and near-misses. Deterministic (seeded). tests/reward/math_reward_test.cc needs
>= 99% agreement with these labels; bench/math_verify_baseline.py times the same labelling.

Usage: python scripts/make_math_reward_fixtures.py [--out PATH]
  (needs math-verify; 0.9.0 used, with latex2sympy2_extended 1.11.0, sympy 1.14.0:
   python3 -m venv /tmp/venv-mv && /tmp/venv-mv/bin/pip install math-verify==0.9.0)
"""
import argparse
import json
import random

# (gold, [(pred, comment)]) per form; the predicted answer is wrapped by a completion template.
FORMS = {
    "integer": [("{a}", "{a}"), ("{a}", "{b}"), ("-{a}", "-{a}"), ("-{a}", "{a}"),
                ("{a}", "{a}.0"), ("{a}", "x = {a}")],
    "fraction": [("\\frac{{{p}}}{{{q}}}", "\\frac{{{p}}}{{{q}}}"),
                 ("\\frac{{{p}}}{{{q}}}", "\\dfrac{{{p}}}{{{q}}}"),
                 ("\\frac{{{p}}}{{{q}}}", "\\tfrac{{{p}}}{{{q}}}"),
                 ("\\frac{{{p}}}{{{q}}}", "{p}/{q}"),
                 ("\\frac{{{p}}}{{{q}}}", "\\frac{{{q}}}{{{p}}}"),
                 ("\\frac{{{p}}}{{{q}}}", "{dec6}"),
                 ("\\frac{{{p}}}{{{q}}}", "{dec2}"),
                 ("\\frac{{{p2}}}{{{q2}}}", "\\frac{{{p}}}{{{q}}}")],
    "decimal": [("{h}", "{hfrac}"), ("{hfrac}", "{h}"), ("{h}", "{hnear}")],
    "mixed": [("{w}\\frac{{1}}{{2}}", "{w}.5"), ("{w}\\frac{{1}}{{2}}", "\\frac{{{w2p1}}}{{2}}"),
              ("\\frac{{{w2p1}}}{{2}}", "{w}\\frac{{1}}{{2}}"), ("{w}\\frac{{1}}{{2}}", "{w}.25")],
    "sci": [("{sci}", "{m}\\times10^{{{e}}}"), ("{sci}", "{m}\\times 10^{e}"),
            ("{sci}", "{m}\\cdot10^{{{e1}}}")],
    "expr": [("{s}", "{x}+{y}"), ("{prod}", "{x}\\cdot{y}"), ("{prod}", "{x}\\times {y}"),
             ("{pw}", "{x}^{{{k}}}"), ("{x}", "\\sqrt{{{sq}}}"), ("{s}", "{x}+{y}+1")],
    "sqrt": [("{c}\\sqrt{{{r}}}", "\\sqrt{{{c2r}}}"), ("\\sqrt{{{c2r}}}", "{c}\\sqrt{{{r}}}"),
             ("\\frac{{\\sqrt{{{r}}}}}{{{c}}}", "\\frac{{\\sqrt{r}}}{c}"),
             ("{c}\\sqrt{{{r}}}", "\\sqrt{{{c2r1}}}")],
    "pi": [("{c}\\pi", "{c}\\pi"), ("{c}\\pi", "\\pi \\cdot {c}"), ("{c}\\pi", "{cpi6}"),
           ("\\frac{{\\pi}}{{{c}}}", "\\frac{{\\pi}}{{{c}}}"), ("{c}\\pi", "{c1}\\pi")],
    "percent": [("{pc}\\%", "{pc}"), ("{pc}\\%", "{pc}\\%"), ("{pc}", "{pc}\\%"),
                ("{pc}\\%", "{pcf}"), ("{pc}\\%", "{pc1}\\%")],
    "degree": [("{deg}^\\circ", "{deg}"), ("{deg}", "{deg}^\\circ"), ("{deg}", "{deg}^{{\\circ}}"),
               ("{deg}^\\circ", "{deg1}^\\circ")],
    "units": [("{a}", "{a}\\text{{ cm}}"), ("{a}", "{a} \\text{{ meters}}"),
              ("{a}\\text{{ cm}}", "{a}"), ("{a}", "{b}\\text{{ cm}}"),
              ("{a}", "\\${a}"), ("{a}", "{a}\\mbox{{ inches}}")],
    "thousands": [("{big}", "{bigc}"), ("{bigc}", "{big}"), ("{big}", "{big1c}"),
                  ("{big}", "{big1}")],
    "tuple": [("({a},{b})", "({a}, {b})"), ("({a},{b})", "({b},{a})"),
              ("({a},{b},{c})", "\\left({a}, {b}, {c}\\right)"), ("({a},{b},{c})", "({a},{c},{b})")],
    "interval": [("[{a},{b2})", "[{a}, {b2})"), ("[{a},{b2})", "({a},{b2})"),
                 ("({a},{b2}]", "\\left({a},{b2}\\right]"), ("(-\\infty,{a}]", "(-\\infty, {a}]"),
                 ("[{a},{b2}]", "[{a},{b2})")],
    "set": [("\\{{{a},{b},{c}\\}}", "\\{{{c},{a},{b}\\}}"), ("{a},{b},{c}", "{c}, {b}, {a}"),
            ("{a},{b},{c}", "{a}, {b}"), ("\\{{{a},{b}\\}}", "\\{{{a},{c}\\}}")],
    "symbolic": [("{a}x+{b}", "{b}+{a}x"), ("x^2-{a2}", "(x-{a})(x+{a})"),
                 ("x^2-{a2}", "(x-{a})^2"), ("{a}x+{b}", "{a}x+{b1}"),
                 ("\\frac{{x+{a}}}{{{b}}}", "\\frac{{x}}{{{b}}}+\\frac{{{a}}}{{{b}}}")],
    "assign": [("{a}", "x={a}"), ("x={a}", "{a}"), ("{a}", "y = {b}")],
}

# Hand-written "gold ||| completion" edge cases (\n in a completion is a newline). Left out on
# purpose, where grpo and Math-Verify 0.9.0 differ by choice (see reward/math_reward.h):
# "\log_2 8" vs 3 (no logarithms here), 100 vs 99.9999999 (we round to 6 places: equal),
# "It costs \$7." and "The answer is (7)" (Math-Verify extracts nothing usable; we find 7).
HAND_CASES = r'''
\frac{\sqrt{3}}{3} ||| so $\boxed{\frac{1}{\sqrt{3}}}$
3\sqrt{2} ||| $\boxed{\sqrt{18}}$
-\frac{1}{2} ||| $\boxed{-0.5}$
-\frac{1}{2} ||| $\boxed{\frac{-1}{2}}$
\text{(C)} ||| $\boxed{C}$
\text{(C)} ||| $\boxed{\text{(C)}}$
x^2+7x+10 ||| $\boxed{(x+2)(x+5)}$
2, -3 ||| $\boxed{-3, 2}$
\left( 3, \frac{\pi}{2} \right) ||| $\boxed{(3,\frac{\pi}{2})}$
\$42.50 ||| $\boxed{42.5}$
10\% ||| $\boxed{10}$
10\% ||| $\boxed{0.1}$
10\% ||| $\boxed{10\%}$
\infty ||| $\boxed{\infty}$
(-\infty, -2) \cup (3, \infty) ||| $\boxed{(-\infty,-2)\cup(3,\infty)}$
(-\infty, -2) \cup (3, \infty) ||| $\boxed{(3,\infty)\cup(-\infty,-2)}$
\text{Monday} ||| $\boxed{\text{Monday}}$
\text{Monday} ||| The answer is Monday.
4.5 ||| $\boxed{\frac{9}{2}}$
1/3 ||| $\boxed{\frac13}$
\{-1,2\} ||| $\boxed{2,-1}$
6\text{ inches} ||| $\boxed{6}$
\frac{9}{7} ||| The answer is $\frac{9}{7}$
\frac{9}{7} ||| The answer is \frac{9}{7}
\frac{9}{7} ||| The answer is 9/7
0.25 ||| so 1/4
12 ||| $12$ apples were left over, so there are 12.
12 ||| The answer is $12$.\n\nHowever, double check: 3 + 4 = 7
5 ||| Final answer: 5
5 ||| **Answer:** 5
5 ||| **Answer:** $5$
5 ||| answer is: \boxed{5}
-5 ||| \boxed{-5}
-5 ||| The answer is -5.
3 ||| x = 3 or x = -3
\pm 3 ||| \boxed{\pm 3}
3, -3 ||| \boxed{\pm 3}
\frac{1}{2} ||| \boxed{1/2}
2^{10} ||| \boxed{1024}
1024 ||| \boxed{2^{10}}
\sqrt[3]{8} ||| \boxed{2}
e^2 ||| \boxed{e^2}
\sin 30^\circ ||| \boxed{\frac12}
a+b ||| \boxed{b+a}
\frac{a}{b} ||| \boxed{a/b}
10^{6} ||| \boxed{1000000}
1000000 ||| \boxed{10^6}
0.000001 ||| \boxed{10^{-6}}
1.5 ||| \boxed{\frac{3}{2}}
\frac{3}{2} ||| \boxed{1.50}
2\frac{1}{3} ||| \boxed{\frac{7}{3}}
7 ||| \boxed{7}\n\nWait, let me recheck with 8.
7 ||| The result: $\boxed{7}$ cm.
180^\circ ||| \boxed{180^{\circ}}
\dfrac{1}{4} ||| \boxed{25\%}
0 ||| \boxed{0}
0 ||| \boxed{-0}
100 ||| \boxed{100.0}
100 ||| \boxed{100.00001}
\frac{22}{7} ||| \boxed{3.142857}
\frac{22}{7} ||| \boxed{3.14}
(1,2,3) ||| \boxed{(1,2,3)}
[0,1] ||| \boxed{[0, 1]}
[0,1] ||| \boxed{[0,1)}
x \in [0,1] ||| \boxed{[0,1]}
y=2x+1 ||| \boxed{2x+1}
y=2x+1 ||| \boxed{y=1+2x}
f(x)=x^2 ||| \boxed{x^2}
\frac{5}{3} ||| \boxed{\dfrac53}
5 ||| \boxed{5 \text{ units}}
5 ||| \boxed{\text{5}}
30 ||| \boxed{30 \text{ minutes}}
8 ||| There are 8 ways.
8 ||| The number of ways is $\boxed{8}$ ways.
2 ||| 2.
2 ||| 1. First step 2. Second step
7 ||| Let x be 3. Then y = 7.
7 ||| We get 3 + 4 = 7
7 ||| The answer: 3 + 4 = 7
7 ||| So the final answer is 7.
7 ||| So the final answer is 7 apples.
7 ||| Final Answer: The final answer is $7$. I hope it is correct.
7 ||| The final answer is \boxed{7}. Note 8.
7 ||| \boxed{7}. Also 3 is the final answer is 9
7 ||| answer: \(7\)
7 ||| answer:\n\n\[7\]
7 ||| The answer is 7; indeed 1+6=7.
7 ||| Result is 7%
0.07 ||| Result is 7%
7 ||| It costs $7.
7 ||| It costs 7 dollars.
1234 ||| total: 1,234
1234 ||| total: 1 234
1234 ||| total: 1,234.
1.5 ||| I get 1,5
7 ||| Therefore, **7**
7 ||| Therefore, **7**.
-7 ||| Thus x=-7.
-7 ||| Thus x = - 7.
3 ||| The sum 1+2 is 3.
3 ||| Hence 1+2
3 ||| Hence (1+2)
\frac{1}{2} ||| Hence 1/2.
\frac{1}{2} ||| Hence 1/2 of the cake
0.5 ||| the probability is .5
12 ||| <answer>12</answer>
12 ||| <answer>\n\boxed{12}\n</answer>
12 ||| <answer> x = 12 </answer>
12 ||| <answer>$12$</answer>
12 ||| I think 12.\n<answer>\n12\n</answer>\nDone with 13 steps.
5 ||| The answer is $\frac{10}{2}$
5 ||| \boxed{\frac{10}{2}}
\frac{10}{2} ||| \boxed{5}
2 ||| $\sqrt{4}$
x+1 ||| The answer is $x+1$.
x+1 ||| The answer is $1+x$.
\frac{x}{2} ||| The answer is $0.5x$.
2x ||| The answer is $x \cdot 2$.
x^3 ||| The answer is $x\cdot x\cdot x$.
\{1,2,3\} ||| \boxed{\{1, 2, 3\}}
\{1,2,3\} ||| \boxed{1, 2, 3}
1,2,3 ||| \boxed{\{1,2,3\}}
(1,2) ||| \boxed{1,2}
1,2 ||| \boxed{(1,2)}
(1, 2) ||| The point is $(1, 2)$.
(1, 2) ||| The point is (1, 2).
10 ||| The answer is 10 \n\n Answer: 11
10 ||| Answer: 10\nSome text. The answer is 11
B ||| \boxed{B}
B ||| \boxed{\text{B}}
B ||| \boxed{(B)}
\text{B} ||| The answer is B.
\frac{1}{2} ||| \boxed{\frac{2}{4}}
\frac{1}{2} ||| \boxed{\dfrac{1}{2}}.
0.5 ||| $\boxed{\frac{1}{2}}$ or $0.5$
3 ||| So $x=3$. \n\nAnswer: $\boxed{3}$
-\frac{3}{4} ||| \boxed{-\dfrac{3}{4}}
-\frac{3}{4} ||| \boxed{-0.75}
\frac{-3}{4} ||| \boxed{-\frac34}
5 ||| \boxed{ 5 }
5 ||| \boxed{5}\boxed{5}
20 ||| \boxed{20\%}
20 ||| \boxed{20 \%}
0.2 ||| \boxed{20 percent}
\$ 1.50 ||| \boxed{1.5}
1.50 ||| \boxed{\$1.50}
3 \text{ hours} ||| \boxed{3}
2 ||| \boxed{2 \text{ hours}}
12 \text{ dollars} ||| \boxed{\$12}
4 ||| $\boxed{4}$\n\nThe final answer is 4. I hope it is correct.
6 ||| The final answer is $\boxed{6}$. I hope it is correct.
x^2 ||| \boxed{x^{2}}
\frac{x^2}{4} ||| \boxed{\frac{1}{4}x^2}
\sqrt{2}/2 ||| \boxed{\frac{\sqrt{2}}{2}}
2^{1/2} ||| \boxed{\sqrt{2}}
\frac{1}{\sqrt{2}} ||| \boxed{\frac{\sqrt2}{2}}
1 ||| \boxed{\frac{3}{3}}
1.0 ||| \boxed{1}
01 ||| \boxed{1}
1 ||| \boxed{001}
10 ||| \boxed{10}^{\circ}
'''

# Completion templates; {ans} is the predicted answer, {d1}/{d2} decoy numbers.
TEMPLATES = [
    "We compute step by step. First {d1} + {d2} = {d3}.\nTherefore the result is $\\boxed{{{ans}}}$.",
    "Let me think. A guess of \\boxed{{{d1}}} fails the check, so the answer is \\boxed{{{ans}}}.",
    "Solving gives several candidates: {d1}, {d2}.\n\nThe final answer is $\\boxed{{{ans}}}$",
    "<think>Try {d1}, then {d2}.</think>\n<answer>\n\\boxed{{{ans}}}\n</answer>",
    "After simplifying we get {d1} terms.\nAnswer: ${ans}$",
    "From the equation, x+{d1}={d2}. The final answer is ${ans}$. I hope it is correct.",
    "The area is computed from {d1} and {d2}.\n\\[\n\\boxed{{{ans}}}\n\\]",
    "Check: {d1} times {d2}. So the answer is ${ans}$.",
    "Step 1: {d1}.\nStep 2: {d2}.\nThus we obtain \\({ans}\\)",
    "Putting it together:\n$$ {ans} $$",
    "**Final Answer**\nThe final answer is $\\boxed{{{ans}}}$.",
    "We have $a = {d1}$ and $b = {d2}$, hence the value is $${ans}$$.",
]
PLAIN_TEMPLATES = [  # for answers Math-Verify also extracts as bare numbers
    "First {d1}, then {d2}. Answer: {ans}",
    "<answer> {ans} </answer>",
    "We add {d1} and {d2}, so the answer is {ans}",
    "Counting carefully, we get {d1} then {ans}",
    "The total cost is {d1} + {d2} = {ans}.",
    "Therefore, the answer is {ans}.",
    "Answer: we find x = {ans}",
    "So {d1} students left and {ans} remain",
]
NO_ANSWER = [
    "I am not sure how to solve this problem.",
    "Let's think about it. The problem asks for a count of apples but no value follows",
    "We need more information to continue",
]


def values(rng):
    p, q = rng.choice([(1, 3), (2, 3), (3, 4), (5, 8), (7, 12), (1, 6), (4, 9), (5, 7)])
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    while b == a:
        b = rng.randint(2, 99)
    x, y = rng.randint(2, 30), rng.randint(2, 30)
    k = rng.randint(2, 4)
    h = rng.choice([0.25, 0.5, 0.75, 0.125, 1.5, 2.5, 0.2, 0.4])
    hfrac = {0.25: "\\frac{1}{4}", 0.5: "\\frac{1}{2}", 0.75: "\\frac{3}{4}", 0.125: "\\frac{1}{8}",
             1.5: "\\frac{3}{2}", 2.5: "\\frac{5}{2}", 0.2: "\\frac{1}{5}", 0.4: "\\frac{2}{5}"}[h]
    w = rng.randint(1, 9)
    m = rng.choice(["1.5", "2.5", "3.2", "4.75", "6.02"])
    e = rng.randint(2, 6)
    sci = str(int(round(float(m) * 10 ** e)))
    c, r = rng.choice([(2, 3), (3, 2), (2, 5), (4, 3), (5, 2), (3, 7)])
    pc = rng.choice([5, 12, 25, 40, 50, 75, 80])
    deg = rng.choice([30, 45, 60, 90, 120, 135, 150])
    big = rng.randint(1000, 999999)
    b2 = a + rng.randint(1, 20)
    return dict(
        a=a, b=b, c=rng.randint(100, 200), p=p, q=q, p2=2 * p, q2=2 * q,
        dec6=f"{p / q:.6f}", dec2=f"{p / q:.2f}", h=h, hfrac=hfrac, hnear=f"{h + 0.001:g}",
        w=w, w2p1=2 * w + 1, m=m, e=e, e1=e + 1, sci=sci, x=x, y=y, s=x + y, prod=x * y, k=k,
        pw=x ** k, sq=x * x, r=r, c2r=c * c * r, c2r1=c * c * r + 1, cpi6=f"{c * 3.14159265358979:.6f}",
        c1=c + 1, pc=pc, pcf=f"{pc / 100:g}", pc1=pc + 1, deg=deg, deg1=deg + 1, big=big,
        bigc=f"{big:,}", big1c=f"{big + 1:,}", big1=big + 1, b2=b2, a2=a * a, b1=b + 1)


def label(gold, completion):
    from math_verify import parse, verify, LatexExtractionConfig, ExprExtractionConfig
    g = parse("\\boxed{" + gold + "}", extraction_config=[LatexExtractionConfig()])
    p = parse(completion, extraction_config=[ExprExtractionConfig(), LatexExtractionConfig()])
    return bool(verify(g, p))


def make_cases(seed=1234):
    rng = random.Random(seed)
    cases = []
    for form, pairs in FORMS.items():
        for gold_t, pred_t in pairs:
            for rep in range(5):
                v = values(rng)
                gold, ans = gold_t.format(**v), pred_t.format(**v)
                plain = all(ch.isdigit() or ch in ".-" for ch in ans)
                tmpl = rng.choice(TEMPLATES + (PLAIN_TEMPLATES if plain else []))
                d = dict(d1=rng.randint(1, 50), d2=rng.randint(51, 99), d3=rng.randint(100, 150))
                completion = tmpl.format(ans=ans, **d)
                cases.append({"form": form, "gold": gold, "completion": completion})
    for line in HAND_CASES.strip().splitlines():
        gold, completion = line.split(" ||| ")
        cases.append({"form": "hand", "gold": gold, "completion": completion.replace("\\n", "\n")})
    for text in NO_ANSWER:
        cases.append({"form": "no_answer", "gold": "5", "completion": text})
    # Forms where grpo deliberately differs from Math-Verify (documented in math_reward.h).
    cases.append({"form": "divergent", "gold": "1500", "completion": "So \\boxed{1.5e3}."})
    cases.append({"form": "divergent", "gold": "\\frac{5}{2}", "completion": "So \\boxed{2 1/2}."})
    cases.append({"form": "divergent", "gold": "7294", "completion": "So $\\boxed{7294.}$"})
    # Hostile-looking but ordinary-sized text: long reasoning with many numbers before the box.
    filler = " ".join(f"step {k}: {k * 7 % 13} + {k} = {k * 7 % 13 + k}." for k in range(200))
    cases.append({"form": "long", "gold": "42", "completion": filler + " So \\boxed{42}."})
    cases.append({"form": "long", "gold": "42", "completion": filler + " Answer: 41"})
    cases.append({"form": "long", "gold": "13", "completion": filler + " Therefore 13"})
    return cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/reward/math_cases.jsonl")
    args = ap.parse_args()
    import importlib.metadata as md
    print("math-verify", md.version("math-verify"), "latex2sympy2_extended",
          md.version("latex2sympy2_extended"), "sympy", md.version("sympy"))
    cases = make_cases()
    with open(args.out, "w", encoding="utf-8") as f:
        for c in cases:
            c["expected"] = label(c["gold"], c["completion"])
            f.write(json.dumps(c, ensure_ascii=False) + "\n")
    print(f"{len(cases)} cases, {sum(c['expected'] for c in cases)} labelled correct -> {args.out}")


if __name__ == "__main__":
    main()
