// train_cli_test.cpp — `dseek train` and `dseek data prepare` end to end: a run killed with SIGKILL at
// random moments, several times, and resumed each time ends with exactly the weights and optimizer state
// of an uninterrupted run, and every checkpoint directory present at any time is complete.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "test_util.h"
#include "train/data.h"
#include "train/trainer.h"

namespace dseek {
namespace {

namespace fs = std::filesystem;

struct Tmp {
  fs::path dir = fs::temp_directory_path() / ("dseek-traincli-" + std::to_string(::getpid()));
  Tmp() {
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~Tmp() { fs::remove_all(dir); }
  std::string operator/(const std::string& f) const { return (dir / f).string(); }
};

pid_t spawn(const std::vector<std::string>& args, const std::string& log) {
  pid_t pid = fork();
  if (pid == 0) {
    FILE* f = std::freopen(log.c_str(), "a", stderr);
    (void)f;
    FILE* g = std::freopen("/dev/null", "w", stdout);
    (void)g;
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(DSEEK_BIN));
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(DSEEK_BIN, argv.data());
    _exit(127);
  }
  return pid;
}

int wait_exit(pid_t pid) {
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
}

void expect_complete_checkpoints(const std::string& run) {
  if (!fs::exists(run)) return;
  for (auto& e : fs::directory_iterator(run)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("checkpoint-", 0) != 0) continue;
    for (const char* f : {"config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"})
      EXPECT_TRUE(fs::exists(e.path() / f)) << n << " lacks " << f;
    EXPECT_NO_THROW(io::SafetensorsFile::open((e.path() / "model.safetensors").string())) << n;
  }
}

TEST(TrainCli, KilledAndResumedRunsEndLikeAnUninterruptedOne) {
  Tmp t;
  {  // data: generated text, byte-encoded (no tokenizer needed)
    std::ofstream f(t / "in.txt");
    for (int i = 0; i < 200; ++i) f << "paragraph " << i << " talks about checkpoints and resumes\n\n";
  }
  train::Encoder enc = [](const std::string& s) {
    std::vector<int64_t> v;
    for (unsigned char c : s) v.push_back(int64_t(c) % 60 + 2);
    return v;
  };
  train::prepare_data({t / "in.txt"}, t / "data", enc, 1, 64, "", {.val_fraction = 0.05, .seed = 2});
  const std::vector<std::string> common = {"--threads", "1",
                                           "train",     "--model",
                                           "tiny",      "--data",
                                           t / "data",  "--steps",
                                           "160",       "--save-every",
                                           "2",         "--keep-last",
                                           "2",         "--seq-len",
                                           "16",        "--batch-size",
                                           "2",         "--eval-every",
                                           "10",        "--sample-tokens",
                                           "0",         "--seed",
                                           "5",         "--lr",
                                           "0.003",     "--warmup",
                                           "3"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = common;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(wait_exit(spawn(with({"--out", t / "ref"}), t / "ref.log")), 0)
      << io::read_text_file(t / "ref.log");
  const double ref_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const std::string ref = train::latest_checkpoint(t / "ref");
  ASSERT_FALSE(ref.empty());

  // The kill moments are fractions of the uninterrupted run's time; on a loaded machine that time can
  // mislead (a slow reference run, fast resumed runs that finish before their kill), so a series that
  // got fewer than 3 kills starts over with moments half as late.
  std::mt19937 rng(1234);
  int kills = 0, runs = 0;
  double scale = 1.0;
  for (int attempt = 0; attempt < 4 && kills < 3; ++attempt, scale *= 0.5) {
    fs::remove_all(t / "kill");
    kills = 0;
    for (runs = 0; runs < 40; ++runs) {
      const bool have = !train::latest_checkpoint(t / "kill").empty();
      auto args = with({"--out", t / "kill"});
      if (have) {
        args.push_back("--resume");
        args.push_back(t / "kill");
      }
      pid_t pid = spawn(args, t / "kill.log");
      // Kill within the first 5-30 % of what a whole run takes: each run gets part of the way.
      const int ms = int(scale * ref_ms * (0.05 + 0.25 * double(rng() % 1000) / 1000.0));
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
      if (kill(pid, SIGKILL) == 0) {
        const int code = wait_exit(pid);
        if (code == -SIGKILL) {
          ++kills;
          expect_complete_checkpoints(t / "kill");
          continue;
        }
        ASSERT_EQ(code, 0) << io::read_text_file(t / "kill.log");
        break;
      }
      ASSERT_EQ(wait_exit(pid), 0) << io::read_text_file(t / "kill.log");
      break;
    }
  }
  EXPECT_GE(kills, 3) << "the run finished before it could be killed several times";
  const std::string fin = train::latest_checkpoint(t / "kill");
  ASSERT_EQ(fs::path(fin).filename(), fs::path(ref).filename());
  EXPECT_EQ(io::read_text_file(fin + "/model.safetensors"), io::read_text_file(ref + "/model.safetensors"))
      << "weights differ after " << kills << " kills";
  EXPECT_EQ(io::read_text_file(fin + "/optimizer.safetensors"),
            io::read_text_file(ref + "/optimizer.safetensors"));
  EXPECT_TRUE(fs::exists(t / "kill/loss.svg"));
  std::printf("killed %d times over %d runs (uninterrupted run: %.0f ms); final %s identical to it\n", kills,
              runs + 1, ref_ms, fs::path(fin).filename().c_str());
}

}  // namespace
}  // namespace dseek
