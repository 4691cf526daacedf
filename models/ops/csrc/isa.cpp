// Run-time instruction-set choice shared by the channel-vectorised kernels (see isa.h).
#include "isa.h"

#include <atomic>
#include <stdexcept>

namespace isa {

namespace {
std::atomic<int> g_active{-1};
}

const char* name(int level) {
  switch (level) {
    case kAvx512: return "avx512";
    case kAvx2: return "avx2";
    default: return "generic";
  }
}

int best_supported() {
#ifdef ISA_X86
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
    return kAvx512;
  }
  if (avx2) return kAvx2;
#endif
  return kGeneric;
}

int active() {
  int level = g_active.load(std::memory_order_relaxed);
  if (level < 0) {
    level = best_supported();
    g_active.store(level, std::memory_order_relaxed);
  }
  return level;
}

void set_active(const std::string& level_name) {
  if (level_name == "auto") {
    g_active.store(best_supported());
    return;
  }
  int level = -1;
  for (int candidate : {kGeneric, kAvx2, kAvx512}) {
    if (level_name == name(candidate)) level = candidate;
  }
  if (level < 0) {
    throw std::invalid_argument("unknown instruction set '" + level_name + "'; choose avx512, avx2, generic or auto");
  }
  if (level > best_supported()) {
    throw std::invalid_argument(std::string("this CPU cannot run the '") + level_name + "' kernels (best: " +
                                name(best_supported()) + ")");
  }
  g_active.store(level);
}

}  // namespace isa
