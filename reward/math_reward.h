// The built-in "math" reward: pulls the final answer out of a completion, normalizes its LaTeX
// and compares it with the gold answer by value (exact rationals, floats rounded to 6 decimals,
// numeric evaluation of expressions with variables), following Math-Verify's behaviour where a
// C++ rule-based scorer can (ALGORITHMS.md §8.3). Not a computer-algebra system: no
// simplification beyond evaluation, no inequalities, no matrices.
//
// Extraction priority (ExtractFinalAnswer), first rule that yields an answer wins; within a rule
// the rightmost occurrence wins, as in Math-Verify:
//   1. "final answer is X. I hope" (Minerva style).
//   2. The last \boxed{…} / \boxed … / \fbox{…}, or "final answer … is X", whichever ends later.
//      Several distinct \boxed{} contents are returned joined by "," (a set), as Math-Verify's
//      boxed="all" normalization does, so boxing two different answers is not correct.
//   3. The content of the last <answer>…</answer> block, itself extracted by rules 4-6 and
//      falling back to its trimmed text (Math-Verify has no tag rule; ours is an addition).
//   4. "answer:" followed within 50 characters by a LaTeX environment, a plain \frac{m}{n} or a
//      number (a number after the last "=" within 100 characters of the same line is preferred);
//      the candidate ending later wins. Bare numbers accept 1,234 / 1 234 separators, a decimal
//      comma (1,5 -> 1.5, as Math-Verify), a trailing %, and a leading ** or $.
//   5. "answer" followed in the same way (no colon).
//   6. Anchor-free: the rightmost $…$, $$…$$, \(…\), \[…\] environment or number/arithmetic
//      expression preceded by start of text, whitespace or "=".
// At most the last kMaxScanBytes of a completion are scanned; answers longer than
// kMaxAnswerBytes are compared as strings only; exponents above kMaxExactExponent are evaluated
// in floating point and overflow makes a value non-comparable, so no input can hang.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "reward/reward.h"

namespace grpo {

inline constexpr size_t kMaxScanBytes = 256 * 1024;
inline constexpr size_t kMaxAnswerBytes = 4096;
inline constexpr int kMaxExactExponent = 4096;

// The final answer in `completion` (rules above), as raw LaTeX/text; nullopt when none.
std::optional<std::string> ExtractFinalAnswer(const std::string& completion);

// Canonical LaTeX of an answer: last \boxed content, \dfrac/\tfrac -> \frac, \text{}/\mathrm{}
// unwrapped, \left/\right, spacing commands, $, degrees and trailing unit words removed,
// thousands separators dropped, "x = 5" -> "5", trailing period removed, spaces collapsed.
std::string NormalizeMathAnswer(const std::string& answer);

// True when `predicted` (an extracted answer) equals `gold` by value or as normalized strings.
// Comparison (Math-Verify's verify() with float_rounding=6): two exact rationals compare
// exactly; if either side holds a decimal literal both are rounded to 6 decimals; irrational
// values compare within 1e-12 relative; expressions with variables are evaluated at three
// fixed points; "50\%" equals both 50 and 0.5; comma lists are unordered sets, \{…\} sets,
// (a,b)/[a,b)/… ordered with bracket kinds compared (a set against a tuple or open interval in
// written order), unions of intervals unordered, "a \pm b" is {a+b, a-b}; mixed numbers
// 2\frac12 and "2 1/2" are 5/2; 1.5e3 is 1500; a trailing period is dropped. Deliberate
// differences from Math-Verify 0.9.0: those last three (it reads 1.5·e·3, 3/2 and fails) and
// <answer> tags.
bool MathAnswersEqual(const std::string& gold, const std::string& predicted);

// Factory for the registry. params: {"correct": 1.0, "wrong": 0.0, "no_answer": 0.0}, all
// optional numbers; anything else is an error. ground_truth: a JSON string or number.
// Components: {"answer_found": 0/1, "correct": 0/1}; info: the extracted answer.
absl::StatusOr<std::unique_ptr<RewardFunction>> MakeMathReward(const nlohmann::json& params);

}  // namespace grpo
