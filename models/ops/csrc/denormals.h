// FlushDenormals: flush-to-zero (FTZ) and denormals-are-zero (DAZ) on the current thread for the guard's lifetime,
// the thread's previous mode restored after. x86 cores take a microcode assist, ~100 cycles, for every operation
// that reads or makes a denormal: with the official initialisation (dt_proj bias 0, so Δ ≈ 0.69 and decays down to
// exp(-11) per step) the scan's states and adjoints underflow often enough that a VideoMamba-Ti training step at
// 16x224 took 3.2 s instead of 2.1-2.2 s. Values below 1.2e-38 (fp32) become 0, which no result here can tell apart.
// Each kernel sets it inside its parallel region, on every thread that runs its work, never globally.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

class FlushDenormals {
 public:
#if defined(__x86_64__) || defined(_M_X64)
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFlushToZero | kDenormalsAreZero); }
  ~FlushDenormals() { _mm_setcsr(saved_); }
#else
  // Other architectures keep their mode (aarch64 flushes with FPCR.FZ; not measured there).
  FlushDenormals() = default;
#endif
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
#if defined(__x86_64__) || defined(_M_X64)
  static constexpr unsigned kFlushToZero = 0x8000;       // MXCSR bit 15
  static constexpr unsigned kDenormalsAreZero = 0x0040;  // MXCSR bit 6
  unsigned saved_;
#endif
};
