// Prompt templates: turn a dataset prompt (a string or a list of chat messages) into the exact text
// the policy sees before it starts generating. Text only; tokenization happens elsewhere (the
// rendered text contains special-token markers such as <|im_start|> that the tokenizer maps to ids).
//
// Templates (ChatTemplateConfig::name):
//   "chatml"    Qwen ChatML. Each message is `<|im_start|>{role}\n{content}<|im_end|>\n`, then the
//               assistant turn is opened for generation: `<|im_start|>assistant\n`. A string prompt is
//               one user message. `system_prompt`, when non-empty, is inserted as the first message if
//               the prompt has no system message (Qwen2.5-Instruct's default is kQwen25SystemPrompt;
//               Qwen3 has none). enable_thinking=false (Qwen3) appends `<think>\n\n</think>\n\n`.
//   "r1_zero"   DeepSeek-R1-Zero's plain template (arXiv 2501.12948 v1 Table 1, verbatim, one
//               paragraph), ending in "Assistant:" so a base model continues with the answer.
//   "countdown" TinyZero's "base" template (examples/data_preprocess/countdown.py): its fixed
//               preamble, "User: {prompt}", and "Assistant: Let me solve this step by step.\n<think>".
//               With the question text that `grpo data countdown` writes (CountdownQuestion() in
//               learner/tasks.h) the result is TinyZero's prompt character for character.
//   "custom"    `custom` is a template string with placeholders (below).
// r1_zero, countdown and custom take one user prompt: a string, or a message list that is one user
// message (custom also allows a system message before it). Anything else is an error, never a guess.
//
// Custom template syntax (not Jinja):
//   {prompt}   the user prompt text
//   {system}   the system message's content if the prompt has one, else `system_prompt` (may be "")
//   {{ and }}  a literal { and }
// Any other {name}, a lone { or }, or an unterminated {... is an error that names the offset.
#pragma once

#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace grpo {

// Qwen2.5-Instruct's built-in system prompt (used when no system message is given).
inline constexpr char kQwen25SystemPrompt[] =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
  bool operator==(const ChatMessage&) const = default;
};

// A dataset prompt: plain text (one user turn) or a conversation.
struct Prompt {
  std::variant<std::string, std::vector<ChatMessage>> value;

  Prompt() = default;
  Prompt(std::string text) : value(std::move(text)) {}                // NOLINT: implicit on purpose
  Prompt(const char* text) : value(std::string(text)) {}              // NOLINT
  Prompt(std::vector<ChatMessage> messages) : value(std::move(messages)) {}  // NOLINT
  bool is_text() const { return std::holds_alternative<std::string>(value); }
  const std::string& text() const { return std::get<std::string>(value); }
  const std::vector<ChatMessage>& messages() const { return std::get<std::vector<ChatMessage>>(value); }
  bool operator==(const Prompt&) const = default;
};

// Parses a prompt from JSON: a string, or an array of {"role", "content"} objects with string
// values, roles among system/user/assistant, and no other keys. Errors say what is wrong (the caller
// adds file and line).
absl::StatusOr<Prompt> PromptFromJson(const nlohmann::json& j);
nlohmann::json PromptToJson(const Prompt& p);

// Checks message roles (system/user/assistant), that a system message comes only first, and that
// the list is not empty.
absl::Status ValidateMessages(const std::vector<ChatMessage>& messages);

struct ChatTemplateConfig {
  std::string name = "chatml";  // "chatml" | "r1_zero" | "countdown" | "custom"
  std::string custom;           // the template string when name == "custom"
  std::string system_prompt;    // chatml: default system message; custom: default {system}
  bool enable_thinking = true;  // chatml only: false appends the Qwen3 empty think block

  absl::Status Validate() const;
};

// Reads {"name", "custom", "system_prompt", "enable_thinking"} (all optional); unknown keys and
// wrong types are errors.
absl::StatusOr<ChatTemplateConfig> ChatTemplateConfigFromJson(const nlohmann::json& j);

class ChatTemplate {
 public:
  // Validates the config (and, for "custom", parses the template string once).
  static absl::StatusOr<ChatTemplate> Create(const ChatTemplateConfig& config);

  // The text the model sees before its first generated token.
  absl::StatusOr<std::string> Render(const Prompt& prompt) const;

  const ChatTemplateConfig& config() const { return config_; }

 private:
  // A parsed custom template: literal text and placeholders, in order.
  struct Piece {
    enum class Kind { kText, kPrompt, kSystem } kind;
    std::string text;  // for kText
  };

  explicit ChatTemplate(ChatTemplateConfig config) : config_(std::move(config)) {}
  absl::StatusOr<std::string> RenderChatMl(const Prompt& prompt) const;

  ChatTemplateConfig config_;
  std::vector<Piece> pieces_;  // "custom", "r1_zero" and "countdown" (all are piece lists)
};

}  // namespace grpo
