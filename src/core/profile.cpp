// profile.cpp — see profile.h.
#include "core/profile.h"

#include <cstdlib>
#include <cstring>

namespace dseek::prof {

namespace {
double g_total[kPhases] = {};
const char* const kNames[kPhases] = {
    "layers fwd", "  mla fwd", "    attention core", "  dense mlp fwd", "  moe fwd",          "lm head + ce",
    "layers bwd", "  moe bwd", "  dense mlp bwd",    "  mla bwd",       "    attention core", "embedding"};
}  // namespace

bool enabled() {
  static const bool on = [] {
    const char* v = std::getenv("DSEEK_PROFILE");
    return v && *v && std::strcmp(v, "0") != 0;
  }();
  return on;
}

void add(Phase p, double seconds) {
  g_total[p] += seconds;
}

void report(std::FILE* f, double steps) {
  for (int i = 0; i < kPhases; ++i)
    std::fprintf(f, "  %-22s %8.2f ms\n", kNames[i], 1e3 * g_total[i] / steps);
  // what the layers spend outside their attention and FFN blocks: RMSNorms, residual adds, saved copies
  const double rest = g_total[kLayerFwd] - g_total[kMlaFwd] - g_total[kMlpFwd] - g_total[kMoeFwd] +
                      g_total[kLayerBwd] - g_total[kMoeBwd] - g_total[kMlpBwd] - g_total[kMlaBwd];
  std::fprintf(f, "  %-22s %8.2f ms\n", "layer norms+residuals", 1e3 * rest / steps);
  reset();
}

void reset() {
  for (double& t : g_total) t = 0;
}

}  // namespace dseek::prof
