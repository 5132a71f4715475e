// Final-answer extraction for the math reward (rules and priorities in reward/math_reward.h).
// Byte-level scanning with explicit bounds; no regular expressions, so the work is linear in
// the scanned text times a small constant.
#include <algorithm>
#include <cctype>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "reward/math_reward.h"

namespace grpo {
namespace {

struct Span {
  size_t begin = 0;  // of the answer text
  size_t end = 0;    // one past the answer text
  size_t match_end = 0;  // one past the whole match (closing brace/delimiter); orders matches
  bool number = false;   // a bare number: thousands separators and decimal commas to rewrite
};

bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

char Lower(char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); }

// Case-insensitive find of `needle` (lower-case) in `s` starting at `from`.
size_t FindCi(std::string_view s, std::string_view needle, size_t from) {
  if (needle.size() > s.size()) return std::string_view::npos;
  for (size_t i = from; i + needle.size() <= s.size(); ++i) {
    size_t k = 0;
    while (k < needle.size() && Lower(s[i + k]) == needle[k]) ++k;
    if (k == needle.size()) return i;
  }
  return std::string_view::npos;
}

// `open` indexes a '{'; returns the index of its matching '}' or npos.
size_t MatchBrace(std::string_view s, size_t open) {
  int depth = 0;
  for (size_t i = open; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() && (s[i + 1] == '{' || s[i + 1] == '}')) {
      ++i;
      continue;
    }
    if (s[i] == '{') ++depth;
    if (s[i] == '}' && --depth == 0) return i;
  }
  return std::string_view::npos;
}

// The last \boxed{…}, \boxed X or \fbox{…} in s.
std::optional<Span> LastBoxed(std::string_view s) {
  size_t best = std::string_view::npos;
  size_t cmd_len = 0;
  for (std::string_view cmd : {std::string_view("\\boxed"), std::string_view("\\fbox")}) {
    size_t pos = s.rfind(cmd);
    if (pos != std::string_view::npos && (best == std::string_view::npos || pos > best)) {
      best = pos;
      cmd_len = cmd.size();
    }
  }
  if (best == std::string_view::npos) return std::nullopt;
  size_t i = best + cmd_len;
  if (i < s.size() && s[i] == '{') {
    size_t close = MatchBrace(s, i);
    if (close == std::string_view::npos) return std::nullopt;
    return Span{i + 1, close, close + 1};
  }
  if (i < s.size() && s[i] == ' ') {  // "\boxed 10": up to the next '$' or line end
    size_t b = i + 1;
    size_t e = b;
    while (e < s.size() && s[e] != '$' && s[e] != '\n') ++e;
    return Span{b, e, e};
  }
  return std::nullopt;
}

// The distinct contents of every \boxed{…} in s, in order (at most kMaxBoxes).
constexpr size_t kMaxBoxes = 16;
std::vector<std::string> AllBoxedContents(std::string_view s) {
  std::vector<std::string> out;
  for (size_t pos = s.find("\\boxed{"); pos != std::string_view::npos && out.size() < kMaxBoxes;
       pos = s.find("\\boxed{", pos + 1)) {
    size_t close = MatchBrace(s, pos + 6);
    if (close == std::string_view::npos) break;
    std::string inner(s.substr(pos + 7, close - pos - 7));
    size_t b = inner.find_first_not_of(" \n\t"), e = inner.find_last_not_of(" \n\t");
    inner = b == std::string::npos ? "" : inner.substr(b, e - b + 1);
    if (!inner.empty() && std::find(out.begin(), out.end(), inner) == out.end())
      out.push_back(inner);
    pos = close;
  }
  return out;
}

// A LaTeX environment ($$…$$, \[…\], $…$, \(…\)) starting exactly at i.
std::optional<Span> LatexEnvAt(std::string_view s, size_t i) {
  if (i > 0 && s[i - 1] == '\\') return std::nullopt;
  auto close_at = [&](size_t b, std::string_view close, bool single_line) -> std::optional<Span> {
    size_t limit = std::min(s.size(), b + kMaxAnswerBytes);
    for (size_t j = b; j + close.size() <= limit; ++j) {
      if (single_line && s[j] == '\n') return std::nullopt;
      if (s.compare(j, close.size(), close) == 0 && s[j - 1] != '\\') {
        if (j == b) return std::nullopt;
        return Span{b, j, j + close.size()};
      }
    }
    return std::nullopt;
  };
  if (s.compare(i, 2, "$$") == 0) return close_at(i + 2, "$$", false);
  if (s.compare(i, 2, "\\[") == 0) return close_at(i + 2, "\\]", false);
  if (s.compare(i, 2, "\\(") == 0) return close_at(i + 2, "\\)", true);
  if (s[i] == '$' && (i == 0 || !IsDigit(s[i - 1]))) return close_at(i + 1, "$", true);
  return std::nullopt;
}

bool IsOpChar(char c) {
  return c == '+' || c == '-' || c == '*' || c == '/' || c == '^' || c == '(' || c == ')';
}

// A number or arithmetic expression starting at i (Math-Verify's expr/number patterns: needs
// start, whitespace or '=' before it; thousands separators, decimals, a trailing percent).
std::optional<Span> NumberAt(std::string_view s, size_t i) {
  if (i > 0 && !IsSpace(s[i - 1]) && s[i - 1] != '=' && s[i - 1] != '$') return std::nullopt;
  size_t b = i;
  if (s.compare(b, 2, "**") == 0) b += 2;  // markdown bold
  if (b < s.size() && s[b] == '$') ++b;    // currency
  size_t j = b;
  if (j < s.size() && s[j] == '-') ++j;
  if (j < s.size() && s[j] == '(') ++j;
  if (j >= s.size() || !(IsDigit(s[j]) || (s[j] == '.' && j + 1 < s.size() && IsDigit(s[j + 1]))))
    return std::nullopt;
  // Greedy: digits, '.', ',' between digit groups, spaces and operators.
  size_t e = j;
  bool has_op = false, has_point = false;
  auto group_of_3 = [&](size_t k) {  // s[k] is a separator followed by exactly three digits
    return k + 3 < s.size() && IsDigit(s[k + 1]) && IsDigit(s[k + 2]) && IsDigit(s[k + 3]) &&
           (k + 4 >= s.size() || !IsDigit(s[k + 4]));
  };
  while (e < s.size()) {
    char c = s[e];
    if (IsDigit(c)) {
      ++e;
    } else if (c == '.') {
      has_point = true;
      ++e;
    } else if ((c == ',' || (c == ' ' && !has_op)) && !has_point && e - j <= 3 && group_of_3(e)) {
      while ((s[e] == c) && group_of_3(e)) e += 4;  // thousands: 1,234,567 or 1 234
    } else if (c == ',' && !has_op && !has_point && e + 1 < s.size() && IsDigit(s[e + 1])) {
      has_point = true;  // decimal comma: 1,5
      ++e;
    } else if (IsOpChar(c)) {
      has_op = true;
      ++e;
    } else if (c == ' ' && e + 1 < s.size() && (IsOpChar(s[e + 1]) || (has_op && IsDigit(s[e + 1])))) {
      ++e;
    } else {
      break;
    }
  }
  while (e > j && (s[e - 1] == '.' || s[e - 1] == ' ' || (IsOpChar(s[e - 1]) && s[e - 1] != ')')))
    --e;
  // Unbalanced ')' at the end belongs to the text.
  int depth = 0;
  for (size_t k = b; k < e; ++k) depth += s[k] == '(' ? 1 : s[k] == ')' ? -1 : 0;
  while (depth < 0 && e > j && s[e - 1] == ')') {
    --e;
    ++depth;
  }
  size_t pe = e;
  while (pe < s.size() && s[pe] == ' ') ++pe;
  if (pe < s.size() && s[pe] == '%') e = pe + 1;
  return Span{b, e, e, true};
}

// A plain "\frac{12}{5}" (numbers only) starting at i, as Math-Verify's latexFraction.
std::optional<Span> FractionAt(std::string_view s, size_t i) {
  size_t b = i;
  if (b < s.size() && s[b] == '-') ++b;
  if (s.compare(b, 6, "\\frac{") != 0) return std::nullopt;
  size_t k = b + 5;
  for (int arg = 0; arg < 2; ++arg) {
    if (k >= s.size() || s[k] != '{') return std::nullopt;
    ++k;
    if (k < s.size() && s[k] == '-') ++k;
    size_t d = k;
    while (k < s.size() && IsDigit(s[k])) ++k;
    if (k == d) return std::nullopt;
    if (k + 1 < s.size() && (s[k] == '.' || s[k] == ',') && IsDigit(s[k + 1])) {
      ++k;
      while (k < s.size() && IsDigit(s[k])) ++k;
    }
    if (k >= s.size() || s[k] != '}') return std::nullopt;
    ++k;
  }
  return Span{i, k, k};
}

// A number not followed by "=" (Math-Verify's (?!\s*=)).
std::optional<Span> FinalNumberAt(std::string_view s, size_t k) {
  auto n = NumberAt(s, k);
  if (!n || n->end == n->begin) return std::nullopt;
  size_t t = n->match_end;
  while (t < s.size() && IsSpace(s[t])) ++t;
  if (t < s.size() && s[t] == '=') return std::nullopt;
  return n;
}

// The answer after an anchor word ending at `a`, as Math-Verify's anchored patterns: a number
// after the last '=' within 100 characters of the same line, else the first number within 50
// characters of the same line; or the first LaTeX environment / plain fraction starting within
// 50 characters (lines may break). The candidate that ends later wins.
std::optional<Span> AfterAnchor(std::string_view s, size_t a) {
  std::optional<Span> expr;
  size_t line_end = std::min(s.size(), a + 101);
  for (size_t k = a; k < line_end; ++k) {
    if (s[k] == '\n') {
      line_end = k;
      break;
    }
  }
  size_t limit_eq = std::min(line_end, a + 101);
  for (size_t k = limit_eq; k-- > a && !expr;) {
    if (s[k] != '=') continue;
    size_t j = k + 1;
    while (j < s.size() && IsSpace(s[j])) ++j;
    expr = FinalNumberAt(s, j);
  }
  for (size_t k = a; k <= std::min(line_end, a + 50) && !expr; ++k) expr = FinalNumberAt(s, k);
  std::optional<Span> latex;
  size_t limit = std::min(s.size(), a + 51);
  for (size_t k = a; k < limit && !latex; ++k) {
    latex = LatexEnvAt(s, k);
    if (!latex) latex = FractionAt(s, k);
  }
  if (expr && (!latex || expr->match_end > latex->match_end)) return expr;
  return latex;
}

// Positions of `needle` (lower-case) in s, case-insensitively; only the last kMaxAnchors, which
// bounds the work on text that repeats an anchor word.
constexpr size_t kMaxAnchors = 64;
std::vector<size_t> LastOccurrences(std::string_view s, std::string_view needle) {
  std::vector<size_t> all;
  for (size_t pos = FindCi(s, needle, 0); pos != std::string_view::npos;
       pos = FindCi(s, needle, pos + 1))
    all.push_back(pos);
  if (all.size() > kMaxAnchors) all.erase(all.begin(), all.end() - kMaxAnchors);
  return all;
}

// Rightmost (by match end) answer after any occurrence of `anchor`.
std::optional<Span> LastAnchored(std::string_view s, std::string_view anchor) {
  std::optional<Span> best;
  for (size_t pos : LastOccurrences(s, anchor)) {
    auto sp = AfterAnchor(s, pos + anchor.size());
    if (sp && (!best || sp->match_end > best->match_end)) best = sp;
  }
  return best;
}

std::optional<Span> LastAnchorFree(std::string_view s) {
  std::optional<Span> best;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '$' || c == '\\') {
      if (auto env = LatexEnvAt(s, i)) {
        if (!best || env->match_end > best->match_end) best = env;
        i = env->match_end - 1;
        continue;
      }
    }
    if (c == '\\' || c == '-') {
      if (auto f = FractionAt(s, i)) {
        if (!best || f->match_end > best->match_end) best = f;
        i = f->match_end - 1;
        continue;
      }
    }
    if (IsDigit(c) || c == '-' || c == '(' || c == '.' || c == '$' || c == '*') {
      if (auto n = NumberAt(s, i)) {
        if (!best || n->match_end > best->match_end) best = n;
        i = std::max(i, n->match_end == 0 ? i : n->match_end - 1);
      }
    }
  }
  return best;
}

std::string Trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && IsSpace(s[b])) ++b;
  while (e > b && IsSpace(s[e - 1])) --e;
  return std::string(s.substr(b, e - b));
}

std::optional<std::string> Take(std::string_view s, const std::optional<Span>& sp) {
  if (!sp) return std::nullopt;
  std::string t = Trim(s.substr(sp->begin, sp->end - sp->begin));
  if (t.empty()) return std::nullopt;
  if (sp->number) {  // 1,234 / 1 234 -> 1234; 1,5 -> 1.5
    std::string out;
    for (size_t k = 0; k < t.size(); ++k) {
      bool sep = (t[k] == ',' || t[k] == ' ') && k > 0 && IsDigit(t[k - 1]) && k + 3 < t.size() + 0 &&
                 IsDigit(t[k + 1]) && IsDigit(t[k + 2]) && IsDigit(t[k + 3]) &&
                 (k + 4 == t.size() || !IsDigit(t[k + 4]));
      if (sep) continue;
      out.push_back(t[k] == ',' && k > 0 && IsDigit(t[k - 1]) ? '.' : t[k]);
    }
    t = std::move(out);
  }
  return t;
}

std::optional<std::string> ExtractWithoutTags(std::string_view s) {
  if (auto a = Take(s, LastAnchored(s, "answer:"))) return a;
  if (auto a = Take(s, LastAnchored(s, "answer"))) return a;
  return Take(s, LastAnchorFree(s));
}

}  // namespace

std::optional<std::string> ExtractFinalAnswer(const std::string& completion) {
  std::string_view s(completion);
  if (s.size() > kMaxScanBytes) s = s.substr(s.size() - kMaxScanBytes);

  // 1. "final answer is X. I hope"
  for (size_t pos : LastOccurrences(s, "final answer is")) {
    size_t k = pos + 15;
    if (k < s.size() && s[k] == ':') ++k;
    while (k < s.size() && IsSpace(s[k])) ++k;
    std::optional<Span> sp = k < s.size() ? LatexEnvAt(s, k) : std::nullopt;
    if (!sp) sp = NumberAt(s, k);
    if (!sp) continue;
    size_t t = sp->match_end;
    if (t < s.size() && s[t] == '.') ++t;
    if (t < s.size() && s[t] == ' ') ++t;
    if (FindCi(s.substr(t, 6), "i hope", 0) == 0) return Take(s, sp);
  }
  // 2. boxed or "final answer ... is X", rightmost.
  std::optional<Span> boxed = LastBoxed(s);
  std::optional<Span> final_is;
  for (size_t pos : LastOccurrences(s, "final answer")) {
    size_t is = FindCi(s.substr(0, std::min(s.size(), pos + 12 + 104)), " is", pos + 12);
    if (is == std::string_view::npos) continue;
    size_t k = is + 3;
    if (k < s.size() && s[k] == ':') ++k;
    while (k < s.size() && IsSpace(s[k])) ++k;
    std::optional<Span> sp = k < s.size() ? LatexEnvAt(s, k) : std::nullopt;
    if (!sp) sp = NumberAt(s, k);
    if (sp && (!final_is || sp->match_end > final_is->match_end)) final_is = sp;
  }
  if (boxed && (!final_is || boxed->match_end >= final_is->match_end)) {
    std::vector<std::string> all = AllBoxedContents(s);
    if (all.size() > 1) {  // Math-Verify (boxed="all"): every box, as one comma list
      std::string joined;
      for (const std::string& a : all) joined += (joined.empty() ? "" : ",") + a;
      return joined;
    }
    if (auto a = Take(s, boxed)) return a;
  }
  if (auto a = Take(s, final_is)) return a;
  // 3. <answer>…</answer>
  size_t open = s.rfind("<answer>");
  if (open != std::string_view::npos) {
    size_t b = open + 8;
    size_t close = s.find("</answer>", b);
    std::string_view inner = s.substr(b, close == std::string_view::npos ? s.size() - b : close - b);
    if (auto a = ExtractWithoutTags(inner)) return a;
    std::string t = Trim(inner);
    if (!t.empty()) return t;
  }
  // 4-6.
  return ExtractWithoutTags(s);
}

}  // namespace grpo
