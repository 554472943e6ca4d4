// chat_template.cpp — the V3 and R1 chat templates as code (model.md §7.3–7.4), step for step as the
// Jinja in DeepSeek's tokenizer_config.json.
#include "tokenizer/chat_template.h"

#include "core/error.h"

namespace dseek::tok {

using nlohmann::json;

namespace {

const char* const kBos = "<｜begin▁of▁sentence｜>";
const char* const kUser = "<｜User｜>";
const char* const kAssistant = "<｜Assistant｜>";
const char* const kEos = "<｜end▁of▁sentence｜>";
const char* const kCallsBegin = "<｜tool▁calls▁begin｜>";
const char* const kCallsEnd = "<｜tool▁calls▁end｜>";
const char* const kCallBegin = "<｜tool▁call▁begin｜>";
const char* const kCallEnd = "<｜tool▁call▁end｜>";
const char* const kSep = "<｜tool▁sep｜>";
const char* const kOutputsBegin = "<｜tool▁outputs▁begin｜>";
const char* const kOutputsEnd = "<｜tool▁outputs▁end｜>";
const char* const kOutputBegin = "<｜tool▁output▁begin｜>";
const char* const kOutputEnd = "<｜tool▁output▁end｜>";

std::string text_field(const json& m, const char* key, const std::string& what) {
  const json& v = m[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() || v.is_array()) return v.dump();  // e.g. tool arguments given as an object
  fail(what, ": \"", key, "\" must be a string");
}

std::string render_call(const ToolCall& c) {
  return c.type + kSep + c.name + "\n```json\n" + c.arguments + "\n```" + kCallEnd;
}

}  // namespace

std::vector<ChatMessage> parse_messages(const json& j0, const std::string& what) {
  const json& j = j0.is_object() && j0.contains("messages") ? j0["messages"] : j0;
  if (!j.is_array()) fail(what, ": expected an array of messages or {\"messages\": [...]}");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < j.size(); ++i) {
    const json& m = j[i];
    const std::string w = what + ": messages[" + std::to_string(i) + "]";
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) fail(w, ": needs a \"role\" string");
    ChatMessage msg;
    msg.role = m["role"].get<std::string>();
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant" && msg.role != "tool")
      fail(w, ": unknown role \"", msg.role, "\" (system, user, assistant or tool)");
    if (m.contains("content") && !m["content"].is_null()) {
      if (!m["content"].is_string()) fail(w, ": \"content\" must be a string or null");
      msg.content = m["content"].get<std::string>();
    } else if (msg.role != "assistant") {
      msg.content = "";
    }
    if (m.contains("tool_calls") && !m["tool_calls"].is_null()) {
      if (!m["tool_calls"].is_array()) fail(w, ": \"tool_calls\" must be an array");
      for (const json& c : m["tool_calls"]) {
        ToolCall tc;
        if (c.contains("type") && c["type"].is_string()) tc.type = c["type"].get<std::string>();
        const json& f = c.contains("function") ? c["function"] : c;
        if (!f.is_object() || !f.contains("name")) fail(w, ": a tool call needs function.name");
        tc.name = text_field(f, "name", w);
        tc.arguments = f.contains("arguments") ? text_field(f, "arguments", w) : "";
        msg.tool_calls.push_back(std::move(tc));
      }
    }
    if (msg.role == "assistant" && !msg.content && msg.tool_calls.empty())
      fail(w, ": an assistant message needs \"content\" or \"tool_calls\"");
    out.push_back(std::move(msg));
  }
  return out;
}

std::optional<ChatTemplateKind> parse_template_kind(const std::string& s) {
  if (s == "v3") return ChatTemplateKind::kV3;
  if (s == "r1") return ChatTemplateKind::kR1;
  if (s.empty() || s == "auto") return std::nullopt;
  fail("chat template \"", s, "\" is not one of v3, r1, auto");
}

const char* template_kind_name(ChatTemplateKind k) {
  return k == ChatTemplateKind::kR1 ? "r1" : "v3";
}

ChatTemplateKind detect_template_kind(const std::string& tpl, const std::string& what) {
  if (tpl.empty())
    fail(what, ": no chat_template in tokenizer_config.json; choose one explicitly (v3 or r1)");
  const bool turns = tpl.find(kUser) != std::string::npos && tpl.find(kAssistant) != std::string::npos;
  if (!turns)
    fail(what,
         ": the chat_template is neither DeepSeek-V3's nor R1's (no <｜User｜>/<｜Assistant｜>); "
         "choose one explicitly (v3 or r1)");
  return tpl.find("</think>") != std::string::npos ? ChatTemplateKind::kR1 : ChatTemplateKind::kV3;
}

std::string render_chat(const std::vector<ChatMessage>& messages, ChatTemplateKind kind,
                        const std::string& bos, bool add_generation_prompt) {
  std::string sys;
  bool first_sys = true;
  for (const ChatMessage& m : messages) {
    if (m.role != "system") continue;
    if (!first_sys) sys += "\n\n";
    sys += m.content.value_or("");
    first_sys = false;
  }
  std::string out = (bos.empty() ? std::string(kBos) : bos) + sys;
  bool is_first = false, is_tool = false, is_output_first = true;  // the template's namespace flags
  for (const ChatMessage& m : messages) {
    if (m.role == "user") {
      is_tool = false;
      out += kUser + m.content.value_or("");
    } else if (m.role == "assistant" && !m.content) {
      is_tool = false;
      for (const ToolCall& c : m.tool_calls) {
        if (!is_first) {  // never reset: a quirk of DeepSeek's template, kept for parity
          out += std::string(kAssistant) + kCallsBegin + kCallBegin + render_call(c);
          is_first = true;
        } else {
          out += std::string("\n") + kCallBegin + render_call(c) + kCallsEnd + kEos;
        }
      }
    } else if (m.role == "assistant") {
      if (is_tool) {
        out += kOutputsEnd + *m.content + kEos;
        is_tool = false;
      } else {
        std::string content = *m.content;
        if (kind == ChatTemplateKind::kR1) {  // history keeps only the answer after the reasoning
          const size_t k = content.rfind("</think>");
          if (k != std::string::npos) content = content.substr(k + 8);
        }
        out += kAssistant + content + kEos;
      }
    } else if (m.role == "tool") {
      is_tool = true;
      if (is_output_first) {
        out += std::string(kOutputsBegin) + kOutputBegin + m.content.value_or("") + kOutputEnd;
        is_output_first = false;
      } else {
        out += std::string("\n") + kOutputBegin + m.content.value_or("") + kOutputEnd;
      }
    }
  }
  if (is_tool) out += kOutputsEnd;
  if (add_generation_prompt && !is_tool) {
    out += kAssistant;
    if (kind == ChatTemplateKind::kR1) out += "<think>\n";
  }
  return out;
}

std::string render_chat(const Tokenizer& t, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt, std::optional<ChatTemplateKind> kind) {
  const ChatTemplateKind k = kind ? *kind : detect_template_kind(t.config().chat_template, "tokenizer");
  return render_chat(messages, k, t.config().bos_token, add_generation_prompt);
}

std::vector<int32_t> encode_chat(const Tokenizer& t, const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt, std::optional<ChatTemplateKind> kind) {
  return t.encode(render_chat(t, messages, add_generation_prompt, kind),
                  EncodeOptions{.parse_special = true});
}

}  // namespace dseek::tok
