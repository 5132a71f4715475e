// Prompt templates (see chat_template.h for the supported templates and syntax).
#include "model/chat_template.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "common/status.h"

namespace grpo {
namespace {

// R1-Zero (arXiv 2501.12948 v1, Table 1), verbatim; the PDF's line breaks are layout only.
constexpr char kR1ZeroTemplate[] =
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process "
    "here </think> <answer> answer here </answer>. User: {prompt}. Assistant:";

// TinyZero examples/data_preprocess/countdown.py, make_prefix(template_type="base"), with the
// question (after "User: ") left to the prompt. Checked against ALGORITHMS.md §8.4.
constexpr char kCountdownTemplate[] =
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer.\n"
    "User: {prompt}\n"
    "Assistant: Let me solve this step by step.\n"
    "<think>";

// Text that the tokenizer would turn into control tokens; never allowed inside message content.
constexpr const char* kReservedMarkers[] = {"<|im_start|>", "<|im_end|>", "<|endoftext|>"};

absl::Status CheckNoMarkers(const std::string& text, std::string_view what) {
  for (const char* marker : kReservedMarkers) {
    if (text.find(marker) != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          std::string(what), " contains the reserved marker ", marker,
          "; prompts may not contain special-token text"));
    }
  }
  return absl::OkStatus();
}

// The (system, user) texts of a prompt that must be one user turn, optionally after a system message.
absl::Status SingleTurn(const Prompt& prompt, bool allow_system, const std::string& template_name,
                        std::string* system, std::string* user) {
  if (prompt.is_text()) {
    *user = prompt.text();
    return absl::OkStatus();
  }
  const auto& msgs = prompt.messages();
  RETURN_IF_ERROR(ValidateMessages(msgs));
  size_t i = 0;
  if (allow_system && msgs.size() == 2 && msgs[0].role == "system") {
    *system = msgs[0].content;
    i = 1;
  }
  if (msgs.size() != i + 1 || msgs[i].role != "user") {
    return absl::InvalidArgumentError(absl::StrCat(
        "template \"", template_name, "\" takes a single user prompt",
        allow_system ? " (optionally after one system message)" : "", "; got ", msgs.size(),
        " message(s) ending with role \"", msgs.back().role, "\""));
  }
  *user = msgs[i].content;
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateMessages(const std::vector<ChatMessage>& messages) {
  if (messages.empty()) return absl::InvalidArgumentError("prompt has no messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      return absl::InvalidArgumentError(absl::StrCat(
          "message ", i, " has role \"", role, "\"; expected system, user or assistant"));
    }
    if (role == "system" && i != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("message ", i, " is a system message; only the first message may be one"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Prompt> PromptFromJson(const nlohmann::json& j) {
  if (j.is_string()) return Prompt(j.get<std::string>());
  if (!j.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"prompt\" must be a string or a list of {role, content} messages, not ", JsonTypeName(j)));
  }
  std::vector<ChatMessage> msgs;
  for (size_t i = 0; i < j.size(); ++i) {
    const auto& m = j[i];
    if (!m.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"prompt\" message ", i, " must be an object {role, content}, not ", JsonTypeName(m)));
    }
    ChatMessage msg;
    for (const auto& [key, value] : m.items()) {
      if (key != "role" && key != "content") {
        return absl::InvalidArgumentError(absl::StrCat(
            "\"prompt\" message ", i, " has unknown key \"", key, "\"; expected role and content"));
      }
      if (!value.is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "\"prompt\" message ", i, " \"", key, "\" must be a string, not ", JsonTypeName(value)));
      }
      (key == "role" ? msg.role : msg.content) = value.get<std::string>();
    }
    if (!m.contains("role") || !m.contains("content")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"prompt\" message ", i, " needs both \"role\" and \"content\""));
    }
    msgs.push_back(std::move(msg));
  }
  RETURN_IF_ERROR(WithContext(ValidateMessages(msgs), "\"prompt\""));
  return Prompt(std::move(msgs));
}

nlohmann::json PromptToJson(const Prompt& p) {
  if (p.is_text()) return p.text();
  nlohmann::json arr = nlohmann::json::array();
  for (const auto& m : p.messages()) arr.push_back({{"role", m.role}, {"content", m.content}});
  return arr;
}

absl::Status ChatTemplateConfig::Validate() const {
  if (name != "chatml" && name != "r1_zero" && name != "countdown" && name != "custom") {
    return absl::InvalidArgumentError(absl::StrCat(
        "chat template \"", name, "\" is unknown; expected chatml, r1_zero, countdown or custom"));
  }
  if (name == "custom" && custom.empty()) {
    return absl::InvalidArgumentError("chat template \"custom\" needs a non-empty template string");
  }
  if (name != "custom" && !custom.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a custom template string was given but the template is \"", name, "\"; set name to custom"));
  }
  if (name != "chatml" && !enable_thinking) {
    return absl::InvalidArgumentError("enable_thinking=false applies only to the chatml template");
  }
  if (!system_prompt.empty() && (name == "r1_zero" || name == "countdown")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "template \"", name, "\" has no system prompt; system_prompt must be empty"));
  }
  return CheckNoMarkers(system_prompt, "system_prompt");
}

absl::StatusOr<ChatTemplateConfig> ChatTemplateConfigFromJson(const nlohmann::json& j) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("chat template config must be an object, not ", JsonTypeName(j)));
  }
  ChatTemplateConfig c;
  for (const auto& [key, value] : j.items()) {
    if (key == "enable_thinking") {
      if (!value.is_boolean()) {
        return absl::InvalidArgumentError("chat template \"enable_thinking\" must be true or false");
      }
      c.enable_thinking = value.get<bool>();
      continue;
    }
    std::string* field = key == "name"            ? &c.name
                         : key == "custom"        ? &c.custom
                         : key == "system_prompt" ? &c.system_prompt
                                                  : nullptr;
    if (field == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "chat template config has unknown key \"", key,
          "\"; expected name, custom, system_prompt or enable_thinking"));
    }
    if (!value.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "chat template \"", key, "\" must be a string, not ", JsonTypeName(value)));
    }
    *field = value.get<std::string>();
  }
  RETURN_IF_ERROR(c.Validate());
  return c;
}

absl::StatusOr<ChatTemplate> ChatTemplate::Create(const ChatTemplateConfig& config) {
  RETURN_IF_ERROR(config.Validate());
  ChatTemplate t(config);
  if (config.name == "chatml") return t;
  const std::string source = config.name == "custom"      ? config.custom
                             : config.name == "r1_zero" ? kR1ZeroTemplate
                                                        : kCountdownTemplate;
  std::string text;
  auto flush = [&] {
    if (!text.empty()) t.pieces_.push_back({Piece::Kind::kText, std::move(text)});
    text.clear();
  };
  for (size_t i = 0; i < source.size(); ++i) {
    const char c = source[i];
    if (c == '}') {
      if (i + 1 < source.size() && source[i + 1] == '}') {
        text += '}';
        ++i;
        continue;
      }
      return absl::InvalidArgumentError(absl::StrCat(
          "custom template: unmatched '}' at offset ", i, "; write }} for a literal brace"));
    }
    if (c != '{') {
      text += c;
      continue;
    }
    if (i + 1 < source.size() && source[i + 1] == '{') {
      text += '{';
      ++i;
      continue;
    }
    const size_t close = source.find_first_of("{}", i + 1);
    if (close == std::string::npos || source[close] != '}') {
      return absl::InvalidArgumentError(absl::StrCat(
          "custom template: unterminated '{' at offset ", i, "; write {{ for a literal brace"));
    }
    const std::string name = source.substr(i + 1, close - i - 1);
    flush();
    if (name == "prompt") {
      t.pieces_.push_back({Piece::Kind::kPrompt, ""});
    } else if (name == "system") {
      t.pieces_.push_back({Piece::Kind::kSystem, ""});
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "custom template: unknown placeholder {", name, "} at offset ", i,
          "; supported: {prompt}, {system} ({{ and }} for literal braces)"));
    }
    i = close;
  }
  flush();
  bool has_prompt = false;
  for (const auto& p : t.pieces_) has_prompt |= p.kind == Piece::Kind::kPrompt;
  if (!has_prompt) {
    return absl::InvalidArgumentError(
        "custom template has no {prompt} placeholder; the question would never reach the model");
  }
  return t;
}

absl::StatusOr<std::string> ChatTemplate::RenderChatMl(const Prompt& prompt) const {
  std::vector<ChatMessage> msgs;
  if (prompt.is_text()) {
    msgs.push_back({"user", prompt.text()});
  } else {
    msgs = prompt.messages();
    RETURN_IF_ERROR(ValidateMessages(msgs));
  }
  std::string out;
  if (!config_.system_prompt.empty() && msgs.front().role != "system") {
    absl::StrAppend(&out, "<|im_start|>system\n", config_.system_prompt, "<|im_end|>\n");
  }
  for (size_t i = 0; i < msgs.size(); ++i) {
    RETURN_IF_ERROR(CheckNoMarkers(msgs[i].content, absl::StrCat("message ", i)));
    absl::StrAppend(&out, "<|im_start|>", msgs[i].role, "\n", msgs[i].content, "<|im_end|>\n");
  }
  out += "<|im_start|>assistant\n";
  if (!config_.enable_thinking) out += "<think>\n\n</think>\n\n";
  return out;
}

absl::StatusOr<std::string> ChatTemplate::Render(const Prompt& prompt) const {
  if (config_.name == "chatml") return RenderChatMl(prompt);
  std::string system = config_.system_prompt;
  std::string user;
  RETURN_IF_ERROR(SingleTurn(prompt, config_.name == "custom", config_.name, &system, &user));
  RETURN_IF_ERROR(CheckNoMarkers(user, "prompt"));
  RETURN_IF_ERROR(CheckNoMarkers(system, "system message"));
  bool has_system_slot = false;
  for (const auto& p : pieces_) has_system_slot |= p.kind == Piece::Kind::kSystem;
  if (!prompt.is_text() && prompt.messages().front().role == "system" && !has_system_slot) {
    return absl::InvalidArgumentError(
        "the prompt has a system message but the template has no {system} placeholder");
  }
  std::string out;
  for (const auto& p : pieces_) {
    switch (p.kind) {
      case Piece::Kind::kText: out += p.text; break;
      case Piece::Kind::kPrompt: out += user; break;
      case Piece::Kind::kSystem: out += system; break;
    }
  }
  return out;
}

}  // namespace grpo
