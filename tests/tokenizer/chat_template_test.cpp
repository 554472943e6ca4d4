// chat_template_test.cpp — V3 chats against Hugging Face's apply_chat_template output
// (tests/data/tokenizer/encodings.json) and the spec's example; R1 and the tool-call layout against
// strings written out by hand from model.md §7.3–7.4 and the Jinja text in tokenizer_config.json.
#include <gtest/gtest.h>

#include "tok_test_util.h"
#include "tokenizer/chat_template.h"

namespace dseek {
namespace {

using nlohmann::json;
using tok::ChatTemplateKind;

std::vector<tok::ChatMessage> msgs(const json& j) {
  return tok::parse_messages(j, "test");
}

const std::string kBos = "<｜begin▁of▁sentence｜>", kEos = "<｜end▁of▁sentence｜>", kU = "<｜User｜>",
                  kA = "<｜Assistant｜>";

TEST(ChatTemplate, FixtureChatsRenderExactly) {
  const tok::Tokenizer* t = test::v3_tokenizer();
  ASSERT_TRUE(t);
  EXPECT_EQ(tok::detect_template_kind(t->config().chat_template, "v3"), ChatTemplateKind::kV3);
  auto fx = test::encodings_fixture();
  ASSERT_GE(fx["chat"].size(), 2u);
  for (const auto& c : fx["chat"]) {
    const auto m = msgs(c["messages"]);
    const std::string text = c["text"];
    EXPECT_EQ(tok::render_chat(*t, m, true), text);
    // The chat's ids are the tokenizer's ids of the rendered text (what apply_chat_template does).
    EXPECT_EQ(tok::encode_chat(*t, m, true), t->encode(text));
  }
}

// The fixture's chat "ids" are NOT DeepSeek's tokenization of its "text": transformers 5.17 rebuilt the
// tokenizer from tokenizer_config.json's "LlamaTokenizerFast" with a Llama-style space handling, and
// the BPE model then dropped the unknown "▁": every space vanished and each space-separated word was
// merged whole (no digit/punctuation pre-tokenization). This test pins that explanation down exactly
// (it fails if the fixture changes), while the spec's example (model.md §7.1, spaces kept) and the
// `cases` (tokenizers 0.23 directly) are what dseek matches.
TEST(ChatTemplate, FixtureChatIdsAreTransformers5DroppingSpaces) {
  const tok::Tokenizer* t = test::v3_tokenizer();
  ASSERT_TRUE(t);
  auto fx = test::encodings_fixture();
  for (const auto& c : fx["chat"]) {
    // Rebuild: added tokens as they are; the text between them split at spaces, spaces dropped.
    tok::Arena arena;
    const std::string text = c["text"];
    const std::vector<tok::Piece> top = t->pre_tokenize(text, arena);
    std::vector<int32_t> ids;
    std::string pending;
    auto flush = [&] {
      size_t i = 0;
      while (i < pending.size()) {
        size_t j = pending.find(' ', i);
        if (j == std::string::npos) j = pending.size();
        if (j > i) t->model().encode_word(pending.data() + i, j - i, ids);
        i = j + 1;
      }
      pending.clear();
    };
    for (const tok::Piece& p : top) {
      if (p.id >= 0) {
        flush();
        ids.push_back(p.id);
      } else {
        pending.append(p.p, p.n);
      }
    }
    flush();
    EXPECT_EQ(ids, test::ids_of(c["ids"]));
    EXPECT_NE(tok::encode_chat(*t, msgs(c["messages"]), true), test::ids_of(c["ids"]));
  }
}

TEST(ChatTemplate, SpecExample) {
  const tok::Tokenizer* t = test::v3_tokenizer();
  ASSERT_TRUE(t);
  const auto m =
      msgs(json::parse(R"([{"role":"system","content":"You are helpful."},{"role":"user","content":"Hi"},
      {"role":"assistant","content":"Hello!"},{"role":"user","content":"2+2?"}])"));
  EXPECT_EQ(tok::encode_chat(*t, m, true),
            (std::vector<int32_t>{0, 3476, 477, 11502, 16, 128803, 23166, 128804, 19923, 3, 1, 128803, 20, 13,
                                  20, 33, 128804}));
  // Without the generation prompt the last <｜Assistant｜> (128804) is not there.
  std::vector<int32_t> no_gen = tok::encode_chat(*t, m, false);
  EXPECT_EQ(no_gen.size(), 16u);
  EXPECT_EQ(no_gen.back(), 33);
}

TEST(ChatTemplate, SystemPromptsJoinAndMultiTurn) {
  const auto m =
      msgs(json::parse(R"({"messages": [{"role":"system","content":"A"},{"role":"user","content":"u1"},
      {"role":"system","content":"B"},{"role":"assistant","content":"a1"},{"role":"user","content":"u2"}]})"));
  EXPECT_EQ(tok::render_chat(m, ChatTemplateKind::kV3, kBos, true),
            kBos + "A\n\nB" + kU + "u1" + kA + "a1" + kEos + kU + "u2" + kA);
  EXPECT_EQ(tok::render_chat(m, ChatTemplateKind::kV3, kBos, false),
            kBos + "A\n\nB" + kU + "u1" + kA + "a1" + kEos + kU + "u2");
}

TEST(ChatTemplate, R1DropsReasoningFromHistoryAndOpensThinking) {
  const auto m = msgs(json::parse(R"([{"role":"user","content":"2+2?"},
      {"role":"assistant","content":"<think>\nadd them\n</think>\n\nThe answer is 4."},
      {"role":"user","content":"and 3+3?"}])"));
  EXPECT_EQ(tok::render_chat(m, ChatTemplateKind::kR1, kBos, true),
            kBos + kU + "2+2?" + kA + "\n\nThe answer is 4." + kEos + kU + "and 3+3?" + kA + "<think>\n");
  EXPECT_EQ(tok::render_chat(m, ChatTemplateKind::kR1, kBos, false),
            kBos + kU + "2+2?" + kA + "\n\nThe answer is 4." + kEos + kU + "and 3+3?");
  // V3 keeps the content as it is.
  EXPECT_EQ(tok::render_chat(m, ChatTemplateKind::kV3, kBos, true),
            kBos + kU + "2+2?" + kA + "<think>\nadd them\n</think>\n\nThe answer is 4." + kEos + kU +
                "and 3+3?" + kA);
  // Only the text after the last </think> survives.
  const auto two = msgs(json::parse(R"([{"role":"assistant","content":"a</think>b</think>c"}])"));
  EXPECT_EQ(tok::render_chat(two, ChatTemplateKind::kR1, kBos, false), kBos + kA + "c" + kEos);
  // Selection from the template text, and the explicit override.
  EXPECT_EQ(tok::detect_template_kind("{{'<｜User｜>'}}{% set content = content.split('</think>')[-1] %}"
                                      "{{'<｜Assistant｜><think>\\n'}}",
                                      "r1"),
            ChatTemplateKind::kR1);
  EXPECT_THROW(tok::detect_template_kind("", "none"), Error);
  EXPECT_THROW(tok::detect_template_kind("{{ messages }}", "other"), Error);
  EXPECT_EQ(tok::parse_template_kind("r1"), ChatTemplateKind::kR1);
  EXPECT_EQ(tok::parse_template_kind("auto"), std::nullopt);
  EXPECT_THROW(tok::parse_template_kind("v2"), Error);
  const tok::Tokenizer* t = test::v3_tokenizer();
  ASSERT_TRUE(t);
  const std::vector<int32_t> ids = tok::encode_chat(*t, m, true, ChatTemplateKind::kR1);
  EXPECT_EQ(t->decode(ids), tok::render_chat(m, ChatTemplateKind::kR1, kBos, true));
}

TEST(ChatTemplate, ToolCallsAndOutputsAsTheJinjaTemplate) {
  const auto m = msgs(json::parse(R"([{"role":"user","content":"weather?"},
      {"role":"assistant","content":null,"tool_calls":[
        {"type":"function","function":{"name":"get","arguments":"{\"city\": \"Oslo\"}"}},
        {"type":"function","function":{"name":"get","arguments":"{\"city\": \"Rome\"}"}}]},
      {"role":"tool","content":"5C"},{"role":"tool","content":"20C"},
      {"role":"assistant","content":"Oslo 5C, Rome 20C."},
      {"role":"user","content":"thanks"}])"));
  const std::string call1 =
      "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get\n```json\n{\"city\": \"Oslo\"}\n```<｜tool▁call▁end｜>";
  const std::string call2 =
      "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get\n```json\n{\"city\": \"Rome\"}\n```<｜tool▁call▁end｜>";
  const std::string want = kBos + kU + "weather?" + kA + "<｜tool▁calls▁begin｜>" + call1 + "\n" + call2 +
                           "<｜tool▁calls▁end｜>" + kEos +
                           "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>5C" +
                           "<｜tool▁output▁end｜>\n<｜tool▁output▁begin｜>20C<｜tool▁output▁end｜>" +
                           "<｜tool▁outputs▁end｜>Oslo 5C, Rome 20C." + kEos + kU + "thanks" + kA;
  EXPECT_EQ(tok::render_chat(m, ChatTemplateKind::kV3, kBos, true), want);
  // A conversation that ends on tool output closes it and adds no generation prompt.
  const auto open = msgs(json::parse(R"([{"role":"user","content":"q"},{"role":"tool","content":"r"}])"));
  EXPECT_EQ(
      tok::render_chat(open, ChatTemplateKind::kV3, kBos, true),
      kBos + kU +
          "q<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>r<｜tool▁output▁end｜><｜tool▁outputs▁end｜>");
}

TEST(ChatTemplate, BadMessagesAreClearErrors) {
  auto err = [](const char* text) {
    try {
      tok::parse_messages(json::parse(text), "chat.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(err(R"([{"content":"x"}])").find("chat.json: messages[0]: needs a \"role\""), std::string::npos);
  EXPECT_NE(err(R"([{"role":"robot","content":"x"}])").find("unknown role \"robot\""), std::string::npos);
  EXPECT_NE(err(R"([{"role":"user","content":3}])").find("\"content\" must be a string"), std::string::npos);
  EXPECT_NE(err(R"({"msgs": []})").find("expected an array"), std::string::npos);
  EXPECT_NE(err(R"([{"role":"assistant"}])").find("needs \"content\" or \"tool_calls\""), std::string::npos);
}

}  // namespace
}  // namespace dseek
