// Instruction-set choice of the channel-vectorised kernels, made at run time from the CPU's features.
//
// ISA_DISPATCH defines one entry point per instruction set with the matching target attribute around each
// kernel's per-item body, an always-inline template over the vector type (vec_math.h), so the body is compiled
// three times: x86-64-v4 (AVX-512, 16 fp32 lanes), x86-64-v3 (AVX2 + FMA, 8 lanes) and the default target (8 lanes
// in SSE2 / NEON registers). It must be inlined: a template instantiated on its own gets the default target
// whatever its vector width. The extension is never built with -march=native: one cached binary runs on any
// x86-64 or aarch64 host. Parallel loops stay outside these functions (a lambda does not inherit its enclosing
// function's target), so the bodies take one work item per call.
#pragma once

#include <string>

#include "vec_math.h"

namespace isa {

enum Level : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

const char* name(int level);
int best_supported();  // what this CPU can run
int active();          // what the kernels use now (best_supported() unless set_active overrode it)
void set_active(const std::string& level_name);  // "avx512", "avx2", "generic" or "auto"

}  // namespace isa

#if defined(__x86_64__) && defined(__GNUC__)
#define ISA_X86 1
#define ISA_TARGET_AVX512 __attribute__((target("arch=x86-64-v4")))
#define ISA_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))
#endif

// ISA_DISPATCH(fn, Args): given `template <class W> void fn##_body(const Args<typename W::Scalar>&, int64_t)`,
// defines `template <typename T> void fn(const Args<T>& args, int64_t item)` running the body for the active
// instruction set, for T = float and double.
#ifdef ISA_X86
#define ISA_DISPATCH(fn, Args)                                                                                  \
  ISA_TARGET_AVX512 void fn##_avx512(const Args<float>& a, int64_t i) { fn##_body<vm::Vec<float, 16>>(a, i); } \
  ISA_TARGET_AVX512 void fn##_avx512(const Args<double>& a, int64_t i) { fn##_body<vm::Vec<double, 8>>(a, i); } \
  ISA_TARGET_AVX2 void fn##_avx2(const Args<float>& a, int64_t i) { fn##_body<vm::Vec<float, 8>>(a, i); }       \
  ISA_TARGET_AVX2 void fn##_avx2(const Args<double>& a, int64_t i) { fn##_body<vm::Vec<double, 4>>(a, i); }     \
  void fn##_generic(const Args<float>& a, int64_t i) { fn##_body<vm::Vec<float, 8>>(a, i); }                    \
  void fn##_generic(const Args<double>& a, int64_t i) { fn##_body<vm::Vec<double, 4>>(a, i); }                  \
  template <typename T>                                                                                         \
  void fn(const Args<T>& a, int64_t i) {                                                                        \
    switch (isa::active()) {                                                                                    \
      case isa::kAvx512: return fn##_avx512(a, i);                                                             \
      case isa::kAvx2: return fn##_avx2(a, i);                                                                 \
      default: return fn##_generic(a, i);                                                                      \
    }                                                                                                           \
  }
#else
#define ISA_DISPATCH(fn, Args)                                                                \
  void fn##_generic(const Args<float>& a, int64_t i) { fn##_body<vm::Vec<float, 8>>(a, i); }   \
  void fn##_generic(const Args<double>& a, int64_t i) { fn##_body<vm::Vec<double, 4>>(a, i); } \
  template <typename T>                                                                        \
  void fn(const Args<T>& a, int64_t i) {                                                       \
    fn##_generic(a, i);                                                                        \
  }
#endif

// Lanes of the active instruction set for T (how many channels one vector holds).
template <typename T>
inline int isa_lanes() {
  const int bytes = isa::active() == isa::kAvx512 ? 64 : 32;
  return bytes / static_cast<int>(sizeof(T));
}
