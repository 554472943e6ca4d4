// chat_template.h — DeepSeek-V3 and R1 chat layouts written out in C++ (model.md §7.3–7.4), no Jinja
// engine: system prompts joined by "\n\n" after BOS, <｜User｜>/<｜Assistant｜> turns with no separators,
// tool calls and tool outputs with the template's own quirks, add_generation_prompt; R1 drops the
// reasoning (everything up to the last </think>) from assistant history and opens the generation
// with "<｜Assistant｜><think>\n". The kind is read from tokenizer_config.json's chat_template.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace dseek::tok {

enum class ChatTemplateKind { kV3, kR1 };

struct ToolCall {
  std::string type = "function", name, arguments;
};

struct ChatMessage {
  std::string role;                    // system | user | assistant | tool
  std::optional<std::string> content;  // null for an assistant turn that only calls tools
  std::vector<ToolCall> tool_calls;
};

// Messages from JSON: an array of {"role", "content", "tool_calls"?}, or {"messages": [...]}.
// `what` names the source in errors.
std::vector<ChatMessage> parse_messages(const nlohmann::json& j, const std::string& what);

// "v3" | "r1" → kind; "auto" or "" → nullopt; anything else is an error.
std::optional<ChatTemplateKind> parse_template_kind(const std::string& s);
const char* template_kind_name(ChatTemplateKind k);

// V3 or R1 from the Jinja text (R1's splits assistant content at </think>). Errors when the text is
// empty or is neither.
ChatTemplateKind detect_template_kind(const std::string& chat_template, const std::string& what);

std::string render_chat(const std::vector<ChatMessage>& messages, ChatTemplateKind kind,
                        const std::string& bos_token, bool add_generation_prompt);

// Renders with the tokenizer's template (or `kind` when given) and encodes the text with special
// tokens recognised and no BOS added (the template writes it), as apply_chat_template does.
std::vector<int32_t> encode_chat(const Tokenizer& t, const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt,
                                 std::optional<ChatTemplateKind> kind = std::nullopt);
std::string render_chat(const Tokenizer& t, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt, std::optional<ChatTemplateKind> kind = std::nullopt);

}  // namespace dseek::tok
