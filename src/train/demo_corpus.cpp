// demo_corpus.cpp — the generated demo corpus (see demo_corpus.h).
#include "train/demo_corpus.h"

#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "io/atomic_file.h"

namespace dseek::train {

namespace {

const std::vector<std::string> kNames = {"Mia",  "Tom",  "Ana",  "Ben",  "Lea",  "Sam",  "Ivy",
                                         "Max",  "Zoe",  "Leo",  "Eva",  "Kai",  "Nina", "Omar",
                                         "Rosa", "Finn", "Lily", "Hugo", "Maya", "Noah"};
const std::vector<char> kGender = {'f', 'm', 'f', 'm', 'f', 'm', 'f', 'm', 'f', 'm',
                                   'f', 'm', 'f', 'm', 'f', 'm', 'f', 'm', 'f', 'm'};
const std::vector<std::string> kThings = {"apple", "book",   "coin", "pencil", "shell", "stone",  "cookie",
                                          "card",  "flower", "ball", "marble", "stamp", "ribbon", "kite"};
const std::vector<std::string> kColors = {"red", "blue", "green", "yellow", "white", "black", "small", "big"};
const std::vector<std::string> kPlaces = {"the park",    "the market", "school",    "the river",
                                          "the library", "the garden", "the beach", "the old house",
                                          "the station", "the forest"};
const std::vector<std::string> kAnimals = {"cat", "dog", "bird", "fox", "horse", "rabbit", "duck", "goat"};
const std::vector<std::string> kActs = {"runs to",   "walks to", "sings near",
                                        "sleeps in", "plays at", "waits at"};
const std::vector<std::string> kNumWords = {"zero", "one",   "two",   "three", "four", "five",
                                            "six",  "seven", "eight", "nine",  "ten"};

class Gen {
 public:
  explicit Gen(uint64_t seed) : rng_(seed, 0xc0de) {}
  int64_t pick(int64_t n) { return int64_t(rng_.uniform() * double(n)) % n; }
  template <typename T>
  const T& any(const std::vector<T>& v) {
    return v[size_t(pick(int64_t(v.size())))];
  }
  std::string plural(const std::string& t, int64_t n) { return n == 1 ? t : t + "s"; }

  std::string story() {
    const int64_t a = pick(int64_t(kNames.size()));
    int64_t b = pick(int64_t(kNames.size()));
    if (b == a) b = (b + 1) % int64_t(kNames.size());
    const std::string& A = kNames[size_t(a)];
    const std::string& Bn = kNames[size_t(b)];
    const std::string she = kGender[size_t(a)] == 'f' ? "She" : "He";
    const std::string her = kGender[size_t(a)] == 'f' ? "her" : "him";
    const std::string thing = any(kThings), color = any(kColors), place = any(kPlaces);
    int64_t n = 1 + pick(9);
    std::string s = A + " goes to " + place + ". " + she + " has " + std::to_string(n) + " " + color + " " +
                    plural(thing, n) + ".";
    const int steps = 1 + int(pick(3));
    for (int i = 0; i < steps; ++i) {
      if (pick(2) == 0 || n == 0) {
        const int64_t k = 1 + pick(5);
        s += " " + Bn + " gives " + her + " " + std::to_string(k) + " more. Now " + A + " has " +
             std::to_string(n + k) + " " + plural(thing, n + k) + ".";
        n += k;
      } else {
        const int64_t k = 1 + pick(n);
        s += " " + she + " gives " + std::to_string(k) + " to " + Bn + ". Now " + A + " has " +
             std::to_string(n - k) + " " + plural(thing, n - k) + ".";
        n -= k;
      }
    }
    s += " At the end of the day, " + A + " has " + std::to_string(n) + " " + plural(thing, n) + ".";
    return s;
  }

  std::string scene() {
    const std::string animal = any(kAnimals), act = any(kActs), place = any(kPlaces), color = any(kColors);
    std::string s = "The " + color + " " + animal + " " + act + " " + place + ".";
    if (pick(2)) s += " " + any(kNames) + " sees the " + animal + " and smiles.";
    if (pick(2)) s += " It is a quiet day at " + place + ".";
    return s;
  }

  std::string sums() {
    std::string s;
    const int n = 2 + int(pick(4));
    for (int i = 0; i < n; ++i) {
      const int64_t x = pick(10), y = pick(10);
      if (pick(3) == 0) {
        s += kNumWords[size_t(std::min<int64_t>(x, 10))] + " plus " +
             kNumWords[size_t(std::min<int64_t>(y, 10))] + " is " + std::to_string(x + y) + ". ";
      } else {
        s += std::to_string(x) + " + " + std::to_string(y) + " = " + std::to_string(x + y) + ". ";
      }
    }
    s.pop_back();
    return s;
  }

  std::string document() {
    std::string d;
    const int parts = 2 + int(pick(4));
    for (int i = 0; i < parts; ++i) {
      const int64_t k = pick(10);
      d += (i ? "\n" : "") + (k < 6 ? story() : k < 8 ? scene() : sums());
    }
    return d;
  }

 private:
  Rng rng_;
};

}  // namespace

std::vector<std::string> demo_corpus(size_t bytes, uint64_t seed) {
  Gen g(seed);
  std::vector<std::string> docs;
  size_t total = 0;
  while (total < bytes) {
    docs.push_back(g.document());
    total += docs.back().size() + 1;
  }
  return docs;
}

void write_demo_corpus(const std::string& path, size_t bytes, uint64_t seed) {
  std::string out;
  for (const auto& d : demo_corpus(bytes, seed)) out += nlohmann::json{{"text", d}}.dump() + "\n";
  io::atomic_write_text(path, out);
}

}  // namespace dseek::train
