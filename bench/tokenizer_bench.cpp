// tokenizer_bench.cpp — encode throughput of dseek's tokenizer (model.md §7.1) on a deterministic mixed
// corpus (tokenizer/sample_text.h): MB/s on one thread (document by document), on all threads (one
// document per thread, as Hugging Face's encode_batch), and one long text split across threads.
// scripts/bench-tokenizer runs it next to tools/hf_tokenizer_bench.py on the same corpus file and
// prints the ratios; it also checks that both produce the same ids.
//
// usage: tokenizer_bench --tokenizer DIR [--mb 4] [--corpus IN.jsonl | --write-corpus OUT.jsonl]
//                        [--reps 3] [--ids-out IDS.jsonl] [--json-out RESULT.json]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "io/atomic_file.h"
#include "tokenizer/sample_text.h"
#include "tokenizer/tokenizer.h"

using namespace dseek;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

template <typename Fn>
double best_of(int reps, Fn&& fn) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    fn();
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

int run(int argc, char** argv) {
  std::string tok_dir, corpus_in, corpus_out, ids_out, json_out;
  double mb = 4;
  int reps = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&]() -> std::string {
      DSEEK_CHECK(i + 1 < argc, a, " needs a value");
      return argv[++i];
    };
    if (a == "--tokenizer")
      tok_dir = val();
    else if (a == "--mb")
      mb = std::stod(val());
    else if (a == "--corpus")
      corpus_in = val();
    else if (a == "--write-corpus")
      corpus_out = val();
    else if (a == "--reps")
      reps = std::stoi(val());
    else if (a == "--ids-out")
      ids_out = val();
    else if (a == "--json-out")
      json_out = val();
    else
      fail("unknown argument ", a, " (see the header of bench/tokenizer_bench.cpp)");
  }
  DSEEK_CHECK(!tok_dir.empty(), "--tokenizer DIR is required");

  std::vector<std::string> docs;
  if (!corpus_in.empty()) {
    std::ifstream f(corpus_in);
    DSEEK_CHECK(f, corpus_in, ": cannot open");
    std::string line;
    while (std::getline(f, line))
      if (!line.empty()) docs.push_back(nlohmann::json::parse(line).get<std::string>());
  } else {
    docs = tok::sample_documents(size_t(mb * 1024 * 1024), 1);
  }
  if (!corpus_out.empty()) {
    std::string s;
    for (const std::string& d : docs) s += nlohmann::json(d).dump() + "\n";
    io::atomic_write_text(corpus_out, s);
  }
  size_t bytes = 0;
  for (const std::string& d : docs) bytes += d.size();
  const double mbytes = double(bytes) / 1e6;

  auto t0 = Clock::now();
  const tok::Tokenizer t = tok::Tokenizer::load(tok_dir);
  const double load_s = seconds_since(t0);
  const int threads = omp_get_max_threads();

  // One thread, document by document; the first pass is cold (empty word cache).
  std::vector<std::vector<int32_t>> ids(docs.size());
  t0 = Clock::now();
  for (size_t i = 0; i < docs.size(); ++i) ids[i] = t.encode(docs[i]);
  const double cold_s = seconds_since(t0);
  size_t n_tokens = 0;
  for (auto& v : ids) n_tokens += v.size();
  const double one_s = best_of(reps, [&] {
    for (size_t i = 0; i < docs.size(); ++i) ids[i] = t.encode(docs[i]);
  });
  const double batch_s = best_of(reps, [&] { ids = t.encode_batch(docs, {}, threads); });
  std::string joined;
  for (const std::string& d : docs) joined += d;
  std::vector<int32_t> long_ids;
  const double long1_s = best_of(reps, [&] { long_ids = t.encode(joined); });
  std::vector<int32_t> long_par;
  const double longp_s = best_of(reps, [&] { long_par = t.encode_parallel(joined, {}, threads); });
  DSEEK_CHECK(long_par == long_ids, "encode_parallel disagrees with encode on the joined corpus");

  if (!ids_out.empty()) {
    std::string s;
    for (auto& v : ids) s += nlohmann::json(v).dump() + "\n";
    io::atomic_write_text(ids_out, s);
  }
  std::printf("dseek tokenizer: %zu documents, %.2f MB, %zu tokens (%.2f bytes/token), load %.2f s\n",
              docs.size(), mbytes, n_tokens, double(bytes) / double(n_tokens), load_s);
  std::printf("  1 thread, per document (cold cache) %8.2f MB/s\n", mbytes / cold_s);
  std::printf("  1 thread, per document              %8.2f MB/s\n", mbytes / one_s);
  std::printf("  %2d threads, encode_batch            %8.2f MB/s\n", threads, mbytes / batch_s);
  std::printf("  1 thread, one long text             %8.2f MB/s\n", mbytes / long1_s);
  std::printf("  %2d threads, one long text           %8.2f MB/s\n", threads, mbytes / longp_s);
  if (!json_out.empty()) {
    nlohmann::json j = {{"impl", "dseek"},
                        {"documents", docs.size()},
                        {"bytes", bytes},
                        {"tokens", n_tokens},
                        {"threads", threads},
                        {"load_seconds", load_s},
                        {"mbps_1thread_cold", mbytes / cold_s},
                        {"mbps_1thread", mbytes / one_s},
                        {"mbps_all_threads", mbytes / batch_s},
                        {"mbps_long_1thread", mbytes / long1_s},
                        {"mbps_long_all_threads", mbytes / longp_s}};
    io::atomic_write_text(json_out, j.dump(2) + "\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tokenizer_bench: error: %s\n", e.what());
    return 1;
  }
}
