// LaTeX normalization for the math reward (NormalizeMathAnswer; contract in
// reward/math_reward.h). String rewriting only; values are computed in math_eval.cc.
#include <algorithm>
#include <array>
#include <cctype>
#include <string>
#include <string_view>

#include "reward/math_reward.h"

namespace grpo {
namespace {

bool IsAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

void ReplaceAll(std::string* s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  size_t i = 0;
  bool changed = false;
  while (true) {
    size_t p = s->find(from, i);
    if (p == std::string::npos) break;
    out.append(*s, i, p - i);
    out.append(to);
    i = p + from.size();
    changed = true;
  }
  if (!changed) return;
  out.append(*s, i, std::string::npos);
  *s = std::move(out);
}

// Removes the command `cmd` (e.g. "\\left") when not followed by a letter (so "\\leftarrow"
// stays).
void RemoveCommand(std::string* s, std::string_view cmd) {
  std::string out;
  size_t i = 0;
  while (i < s->size()) {
    if (s->compare(i, cmd.size(), cmd) == 0 &&
        (i + cmd.size() >= s->size() || !IsAlpha((*s)[i + cmd.size()]))) {
      i += cmd.size();
      continue;
    }
    out.push_back((*s)[i++]);
  }
  *s = std::move(out);
}

size_t MatchBrace(const std::string& s, size_t open) {
  int depth = 0;
  for (size_t i = open; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      ++i;
      continue;
    }
    if (s[i] == '{') ++depth;
    if (s[i] == '}' && --depth == 0) return i;
  }
  return std::string::npos;
}

// "\\text{X}" -> " X " for each text-like command.
void UnwrapTextCommands(std::string* s) {
  static constexpr std::array<std::string_view, 9> kCmds = {
      "\\text", "\\textbf", "\\textrm", "\\textit", "\\mathrm", "\\mathbf", "\\mbox",
      "\\operatorname", "\\mathit"};
  for (int guard = 0; guard < 64; ++guard) {
    bool any = false;
    for (std::string_view cmd : kCmds) {
      size_t p = s->find(cmd);
      while (p != std::string::npos) {
        size_t b = p + cmd.size();
        if (b < s->size() && (*s)[b] == '{') {
          size_t close = MatchBrace(*s, b);
          if (close == std::string::npos) break;
          std::string inner = s->substr(b + 1, close - b - 1);
          s->replace(p, close + 1 - p, " " + inner + " ");
          any = true;
          p = s->find(cmd, p);
        } else {
          p = s->find(cmd, b);
        }
      }
    }
    if (!any) break;
  }
}

constexpr std::array<std::string_view, 58> kUnitWords = {
    "cm", "mm", "km", "m", "meter", "meters", "metre", "metres", "centimeters", "kilometers",
    "inch", "inches", "in", "ft", "foot", "feet", "yard", "yards", "mile", "miles", "mph",
    "kg", "g", "gram", "grams", "pound", "pounds", "lb", "lbs", "ounce", "ounces", "sec",
    "second", "seconds", "minute", "minutes", "min", "hour", "hours", "hr", "day", "days",
    "week", "weeks", "year", "years", "dollar", "dollars", "cent", "cents", "degree",
    "degrees", "unit", "units", "square", "sq", "cubic", "percent"};

bool IsUnitWord(std::string_view w) {
  return std::find(kUnitWords.begin(), kUnitWords.end(), w) != kUnitWords.end();
}

// Drops trailing unit words ("5 cm", "12 square feet", "3 m^2") when a number precedes them.
void StripTrailingUnits(std::string* s) {
  for (int guard = 0; guard < 4; ++guard) {
    size_t e = s->size();
    while (e > 0 && (*s)[e - 1] == ' ') --e;
    size_t w_end = e;
    if (w_end >= 2 && (*s)[w_end - 2] == '^' && IsDigit((*s)[w_end - 1])) w_end -= 2;
    size_t b = w_end;
    while (b > 0 && IsAlpha((*s)[b - 1])) --b;
    if (b == w_end || b == 0) return;
    std::string_view word(s->data() + b, w_end - b);
    bool percent = word == "percent";
    if (!IsUnitWord(word)) return;
    size_t before = b;
    while (before > 0 && (*s)[before - 1] == ' ') --before;
    if (before == 0) return;
    char prev = (*s)[before - 1];
    // A unit follows a number, a closing group, or another unit word; one-letter units only
    // after a space or directly after a digit ("5m").
    if (!(IsDigit(prev) || prev == '}' || prev == ')' || IsAlpha(prev))) return;
    if (IsAlpha(prev) && before == b) return;  // part of a longer word
    if (word.size() == 1 && IsAlpha(prev)) return;
    s->resize(before);
    if (percent) s->append("\\%");
  }
}

bool IsSimpleLhs(std::string_view lhs) {
  // A variable such as x, y_1, f(x), \theta; not a number or an expression.
  size_t b = 0, e = lhs.size();
  while (b < e && lhs[b] == ' ') ++b;
  while (e > b && lhs[e - 1] == ' ') --e;
  lhs = lhs.substr(b, e - b);
  if (lhs.empty() || lhs.size() > 12) return false;
  if (lhs[0] == '\\') return std::all_of(lhs.begin() + 1, lhs.end(), IsAlpha) && lhs.size() > 1;
  if (!IsAlpha(lhs[0])) return false;
  for (char c : lhs)
    if (!(IsAlpha(c) || IsDigit(c) || c == '_' || c == '{' || c == '}' || c == '(' || c == ')'))
      return false;
  return true;
}

}  // namespace

std::string NormalizeMathAnswer(const std::string& answer) {
  if (answer.size() > kMaxAnswerBytes) return answer;
  std::string s = answer;
  // The last box, when the answer still holds one.
  for (std::string_view cmd : {std::string_view("\\boxed"), std::string_view("\\fbox")}) {
    size_t p = s.rfind(cmd);
    if (p == std::string::npos) continue;
    size_t b = p + cmd.size();
    if (b < s.size() && s[b] == '{') {
      size_t close = MatchBrace(s, b);
      if (close != std::string::npos) s = s.substr(b + 1, close - b - 1);
    } else if (b < s.size() && s[b] == ' ') {
      s = s.substr(b + 1);
    }
  }
  for (char& c : s)
    if (c == '\n' || c == '\t' || c == '\r') c = ' ';
  ReplaceAll(&s, "\\dfrac", "\\frac");
  ReplaceAll(&s, "\\tfrac", "\\frac");
  ReplaceAll(&s, "\\\\", "\\");
  RemoveCommand(&s, "\\left");
  RemoveCommand(&s, "\\right");
  RemoveCommand(&s, "\\displaystyle");
  RemoveCommand(&s, "\\qquad");
  RemoveCommand(&s, "\\quad");
  for (std::string_view sp : {"\\!", "\\,", "\\;", "\\:", "\\ ", "~"}) ReplaceAll(&s, sp, " ");
  ReplaceAll(&s, "{,}", "");
  ReplaceAll(&s, "\\$", "");
  ReplaceAll(&s, "$", "");
  for (std::string_view deg : {"^{\\circ}", "^\\circ", "\\circ", "\xc2\xb0", "\\degree"})
    ReplaceAll(&s, deg, "");
  UnwrapTextCommands(&s);
  ReplaceAll(&s, "\\%", "%");
  // Collapse spaces and trim.
  {
    std::string out;
    for (char c : s) {
      if (c == ' ' && (out.empty() || out.back() == ' ')) continue;
      out.push_back(c);
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    s = std::move(out);
  }
  while (!s.empty() && (s.back() == '.' || s.back() == ' ')) s.pop_back();
  StripTrailingUnits(&s);
  ReplaceAll(&s, "\\%", "%");
  while (!s.empty() && (s.back() == '.' || s.back() == ' ')) s.pop_back();
  // "x = 5" -> "5" (the last side after a simple variable).
  {
    size_t eq = s.rfind('=');
    if (eq != std::string::npos && eq > 0 && s[eq - 1] != '<' && s[eq - 1] != '>' &&
        s[eq - 1] != '!') {
      size_t first = s.find('=');
      if (IsSimpleLhs(std::string_view(s).substr(0, first))) {
        s = s.substr(eq + 1);
        size_t b = 0;
        while (b < s.size() && s[b] == ' ') ++b;
        s = s.substr(b);
      }
    }
  }
  // "x \in [0,1]" -> "[0,1]".
  {
    size_t in = s.find("\\in ");
    if (in != std::string::npos && IsSimpleLhs(std::string_view(s).substr(0, in))) s = s.substr(in + 4);
  }
  // "a \pm b" -> "a+b, a-b" (one \pm in an answer without commas).
  {
    size_t pm = s.find("\\pm");
    if (pm != std::string::npos && s.find("\\pm", pm + 1) == std::string::npos &&
        s.find(',') == std::string::npos) {
      std::string tail = s.substr(pm + 3);
      s = s.substr(0, pm) + "+" + tail + ", " + s.substr(0, pm) + "-" + tail;
    }
  }
  // Thousands separators: the whole answer is one number like 1,234,567(.89).
  {
    size_t i = (!s.empty() && s[0] == '-') ? 1 : 0;
    size_t lead = 0;
    while (i + lead < s.size() && IsDigit(s[i + lead])) ++lead;
    bool ok = lead >= 1 && lead <= 3 && i + lead < s.size() && s[i + lead] == ',';
    size_t j = i + lead;
    while (ok && j < s.size() && s[j] == ',') {
      ok = j + 3 < s.size() + 0 && IsDigit(s[j + 1]) && IsDigit(s[j + 2]) && IsDigit(s[j + 3]) &&
           (j + 4 == s.size() || !IsDigit(s[j + 4]));
      j += 4;
      if (j > s.size()) ok = false;
    }
    if (ok && j < s.size() && s[j] == '.') {
      ++j;
      while (j < s.size() && IsDigit(s[j])) ++j;
    }
    if (ok && j == s.size()) s.erase(std::remove(s.begin(), s.end(), ','), s.end());
  }
  return s;
}

}  // namespace grpo
