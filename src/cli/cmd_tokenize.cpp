// cmd_tokenize.cpp — the tokenizer on the command line (model.md §7):
//   dseek tokenize TOKENIZER_DIR (--text STR [--special] [--add-bos] | --chat MESSAGES.json
//         [--add-generation-prompt] [--template v3|r1|auto])        → {"ids": [...]}
//   dseek detokenize TOKENIZER_DIR --ids 1,2,3 [--skip-special] [--json]  → the text
//   dseek tokenizer bytes --out DIR [--special TOKENS...] [--force]      → a 256-byte vocabulary
//   dseek tokenizer train --input FILES... --vocab-size N --out DIR [--special TOKENS...]
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "io/atomic_file.h"
#include "tokenizer/bpe_trainer.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace dseek::cli {

namespace fs = std::filesystem;

std::vector<tok::ChatMessage> read_chat_file(const std::string& path) {
  const std::string text = io::read_text_file(path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    fail(path, ": not valid JSON: ", e.what());
  }
  return tok::parse_messages(j, path);
}

Runner add_tokenize(CLI::App& app) {
  struct Opts {
    std::string dir, text, chat, tmpl = "auto";
    bool special = false, add_bos = false, gen_prompt = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("TOKENIZER_DIR", o->dir, "Directory with tokenizer.json (and tokenizer_config.json)")
      ->required();
  auto* text = app.add_option("--text", o->text, "Text to encode");
  auto* chat = app.add_option("--chat", o->chat, "JSON file with chat messages to render and encode");
  text->excludes(chat);
  app.add_flag("--special", o->special,
               "Recognise special tokens written in --text (off: they are plain text)")
      ->excludes(chat);
  app.add_flag("--add-bos", o->add_bos, "Prepend the BOS token to --text")->excludes(chat);
  app.add_flag("--add-generation-prompt", o->gen_prompt, "End the chat with the assistant's opening")
      ->needs(chat);
  app.add_option("--template", o->tmpl, "Chat template: v3, r1 or auto (from tokenizer_config.json)")
      ->capture_default_str()
      ->needs(chat);
  return [o, text]() {
    DSEEK_CHECK(!o->chat.empty() || text->count() > 0, "tokenize: give --text or --chat");
    const tok::Tokenizer t = tok::Tokenizer::load(o->dir);
    std::vector<int32_t> ids;
    if (!o->chat.empty()) {
      ids = tok::encode_chat(t, read_chat_file(o->chat), o->gen_prompt, tok::parse_template_kind(o->tmpl));
    } else {
      ids = t.encode(o->text, tok::EncodeOptions{.parse_special = o->special, .add_bos = o->add_bos});
    }
    std::printf("%s\n", nlohmann::json{{"ids", ids}}.dump().c_str());
    return 0;
  };
}

Runner add_detokenize(CLI::App& app) {
  struct Opts {
    std::string dir, ids;
    bool skip_special = false, json = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("TOKENIZER_DIR", o->dir, "Directory with tokenizer.json")->required();
  app.add_option("--ids", o->ids, "Comma-separated token ids")->required();
  app.add_flag("--skip-special", o->skip_special, "Leave special tokens out");
  app.add_flag("--json", o->json, "Print {\"text\": ...} instead of the bare text");
  return [o]() {
    const tok::Tokenizer t = tok::Tokenizer::load(o->dir);
    std::vector<int32_t> ids;
    for (int64_t id : parse_id_list(o->ids, "--ids")) {
      DSEEK_CHECK(id < t.num_ids() && t.has_id(int32_t(id)), "--ids: token ", id,
                  " is not in the tokenizer (", t.num_ids(), " ids)");
      ids.push_back(int32_t(id));
    }
    const std::string text = t.decode(ids, o->skip_special);
    if (o->json)
      std::printf("%s\n", nlohmann::json{{"text", text}}.dump().c_str());
    else
      std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
  };
}

namespace {

std::vector<tok::SpecialToken> specials_from(const std::vector<std::string>& names) {
  return names.empty() ? tok::default_special_tokens() : tok::special_tokens_from_names(names);
}

void check_out_dir(const std::string& out, bool force) {
  if (!fs::exists(out)) return;
  DSEEK_CHECK(fs::is_directory(out), out, ": exists and is not a directory");
  DSEEK_CHECK(force || !fs::exists(fs::path(out) / "tokenizer.json"), out,
              ": already holds a tokenizer.json (use --force to overwrite)");
}

}  // namespace

Runner add_tokenizer(CLI::App& app) {
  app.require_subcommand(1);
  struct Opts {
    std::string out;
    std::vector<std::string> inputs, specials;
    size_t vocab_size = 0;
    int64_t min_frequency = 2;
    bool force = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* bytes = app.add_subcommand(
      "bytes", "Write a byte-level tokenizer (256 byte tokens + special tokens, no merges) to a directory");
  bytes->add_option("--out", o->out, "Directory to write tokenizer.json and tokenizer_config.json into")
      ->required();
  bytes->add_option("--special", o->specials,
                    "Special tokens (default: DeepSeek-V3's BOS/EOS/pad, turn markers, "
                    "<think>, </think>, tool markers)");
  bytes->add_flag("--force", o->force, "Overwrite a tokenizer already in --out");
  CLI::App* train = app.add_subcommand("train", "Learn byte-level BPE merges from text files");
  train->add_option("--input", o->inputs, "Text files to learn from")->required()->check(CLI::ExistingFile);
  train->add_option("--vocab-size", o->vocab_size, "Total ids: 256 bytes + merges + special tokens")
      ->required();
  train->add_option("--out", o->out, "Directory to write tokenizer.json and tokenizer_config.json into")
      ->required();
  train->add_option("--special", o->specials, "Special tokens (default: as for `tokenizer bytes`)");
  train->add_option("--min-frequency", o->min_frequency, "Never merge a pair seen fewer times")
      ->capture_default_str();
  train->add_flag("--force", o->force, "Overwrite a tokenizer already in --out");
  return [o, bytes, train]() {
    const std::vector<tok::SpecialToken> specials = specials_from(o->specials);
    check_out_dir(o->out, o->force);
    if (bytes->parsed()) {
      tok::write_tokenizer_dir(o->out, tok::byte_vocab(), specials);
      std::printf("wrote %s: 256 byte tokens + %zu special tokens\n", o->out.c_str(), specials.size());
      return 0;
    }
    (void)train;
    std::vector<std::string> texts;
    for (const std::string& f : o->inputs) texts.push_back(io::read_text_file(f));
    tok::TrainOptions to{
        .vocab_size = o->vocab_size, .specials = specials, .min_frequency = o->min_frequency};
    tok::TrainStats st;
    tok::BpeVocab v = tok::train_bpe(texts, to, &st);
    tok::write_tokenizer_dir(o->out, v, specials);
    std::printf(
        "wrote %s: %zu ids (%zu tokens + %zu special), %zu merges learned from %zu words (%zu distinct) "
        "in %.2f s\n",
        o->out.c_str(), v.tokens.size() + specials.size(), v.tokens.size(), specials.size(), st.merges,
        st.words, st.unique_words, st.seconds);
    if (v.tokens.size() + specials.size() < o->vocab_size)
      std::printf("note: stopped below --vocab-size %zu: no pair occurs at least %lld times\n", o->vocab_size,
                  (long long)o->min_frequency);
    return 0;
  };
}

}  // namespace dseek::cli
