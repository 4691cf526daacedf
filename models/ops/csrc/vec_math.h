// Portable SIMD vectors (GCC/Clang vector extensions) and the elementwise math of the CPU kernels.
//
// Vec<T, kLanes> names a vector of kLanes values of T (float or double) and the integer vector of the
// same width. The code is written once against these types; which instruction set it compiles to is
// chosen by the target attribute of the function that inlines it (see isa.h): a Vec<float, 16> inside
// an x86-64-v4 function is one AVX-512 register, a Vec<float, 8> inside an x86-64-v3 function one AVX2
// register, and the same Vec<float, 8> in a default-target function two SSE registers (or NEON).
// Loads and stores go through memcpy, so no pointer needs any alignment.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define VM_X86 1
#endif

namespace vm {

#define VM_INLINE inline __attribute__((always_inline))
// For a lambda called from VM_INLINE code: a lambda is a function of its own, which would get the default target
// (not its caller's instruction set) if it were not inlined.
#define VM_INLINE_LAMBDA __attribute__((always_inline))

template <typename T, int kLanes>
struct Vec {
  using Scalar = T;
  using Int = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  static constexpr int lanes = kLanes;
  typedef T V __attribute__((vector_size(sizeof(T) * kLanes)));
  typedef Int I __attribute__((vector_size(sizeof(T) * kLanes)));
};

template <class W>
VM_INLINE typename W::V splat(typename W::Scalar c) {
  return typename W::V{} + c;
}

template <class W>
VM_INLINE typename W::V load(const typename W::Scalar* p) {
  typename W::V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <class W>
VM_INLINE void store(typename W::Scalar* p, typename W::V v) {
  std::memcpy(p, &v, sizeof(v));
}

// The first `count` lanes from p, the others zero (the channel tail of a row); a full vector takes the plain load.
template <class W>
VM_INLINE typename W::V load_part(const typename W::Scalar* p, int count) {
  if (count == W::lanes) return load<W>(p);
  typename W::V v{};
  std::memcpy(&v, p, sizeof(typename W::Scalar) * count);
  return v;
}

template <class W>
VM_INLINE void store_part(typename W::Scalar* p, typename W::V v, int count) {
  if (count == W::lanes) {
    store<W>(p, v);
  } else {
    std::memcpy(p, &v, sizeof(typename W::Scalar) * count);
  }
}

// Full-width (kFull) or partial load/store of a row segment; kFull is a compile-time choice so the hot
// loops carry no branch.
template <class W, bool kFull>
VM_INLINE typename W::V load_n(const typename W::Scalar* p, int count) {
  if constexpr (kFull) {
    return load<W>(p);
  } else {
    typename W::V v{};
    std::memcpy(&v, p, sizeof(typename W::Scalar) * count);
    return v;
  }
}

template <class W, bool kFull>
VM_INLINE void store_n(typename W::Scalar* p, typename W::V v, int count) {
  if constexpr (kFull) {
    store<W>(p, v);
  } else {
    std::memcpy(p, &v, sizeof(typename W::Scalar) * count);
  }
}

template <class W>
VM_INLINE typename W::Scalar hsum(typename W::V v) {
  typename W::Scalar s = 0;
  for (int i = 0; i < W::lanes; ++i) s += v[i];
  return s;
}

// max / min per lane: one vmaxps / vminps on AVX-512 (the builtins: the compiler keeps the comparison and blend of
// the portable expression, which is the same function, as two instructions).
template <class W>
VM_INLINE typename W::V vmax(typename W::V a, typename W::V b) {
#ifdef VM_X86
  if constexpr (sizeof(typename W::V) == 64 && sizeof(typename W::Scalar) == 4) {
    typedef float F16 __attribute__((vector_size(64)));
    return (typename W::V)__builtin_ia32_maxps512_mask((F16)a, (F16)b, (F16)a, (__mmask16)-1,
                                                       _MM_FROUND_CUR_DIRECTION);
  }
#endif
  return a > b ? a : b;
}

template <class W>
VM_INLINE typename W::V vmin(typename W::V a, typename W::V b) {
#ifdef VM_X86
  if constexpr (sizeof(typename W::V) == 64 && sizeof(typename W::Scalar) == 4) {
    typedef float F16 __attribute__((vector_size(64)));
    return (typename W::V)__builtin_ia32_minps512_mask((F16)a, (F16)b, (F16)a, (__mmask16)-1,
                                                       _MM_FROUND_CUR_DIRECTION);
  }
#endif
  return a < b ? a : b;
}

// Transposing sum: from `lanes` vectors v[0..lanes), the vector whose lane j is the sum of v[j]'s lanes. Each
// level merges pairs: the first and second half of every group of P partial sums are added, the groups of a
// pair side by side, so P halves per level and the result comes out in natural order after log2(lanes) levels
// (lanes - 1 merges of two shuffles and an add, against lanes horizontal sums).
template <int P, bool kHigh>
constexpr int merge_source(int j) {
  return (j / (P / 2)) * P + (j % (P / 2)) + (kHigh ? P / 2 : 0);
}

template <class W, int P, bool kHigh, std::size_t... J>
VM_INLINE typename W::V merge_half(typename W::V a, typename W::V b, std::index_sequence<J...>) {
#if defined(__has_builtin) && __has_builtin(__builtin_shufflevector)
  return __builtin_shufflevector(a, b, merge_source<P, kHigh>(J)...);
#else
  return __builtin_shuffle(a, b, typename W::I{merge_source<P, kHigh>(J)...});
#endif
}

// Merge levels on `count` vectors, from groups of P partial sums down: pairs are merged until one vector is left
// or the groups are single sums. With count = lanes this is the whole transposing sum.
template <class W, int P, int count>
VM_INLINE void merge_levels(typename W::V* v) {
  if constexpr (count > 1 && P >= 2) {
    constexpr auto lanes = std::make_index_sequence<W::lanes>{};
    for (int i = 0; i < count / 2; ++i) {
      v[i] = merge_half<W, P, false>(v[2 * i], v[2 * i + 1], lanes) +
             merge_half<W, P, true>(v[2 * i], v[2 * i + 1], lanes);
    }
    merge_levels<W, P / 2, count / 2>(v);
  }
}

// 1 / i! for the exp polynomial.
constexpr double kInvFactorial[14] = {1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040,
                                      1.0 / 40320, 1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800,
                                      1.0 / 479001600, 1.0 / 6227020800};

// exp(x) per lane. fp32: degree-6 Taylor polynomial, relative error < 3e-7; x clamped to [-87, 88], so
// decays below 1.6e-38 come out as 1.6e-38 instead of a denormal or zero. fp64: degree-13 polynomial,
// relative error < 1e-15; x clamped to [-708, 709].
template <class W>
VM_INLINE typename W::V exp(typename W::V x) {
  using T = typename W::Scalar;
  using V = typename W::V;
  constexpr bool f32 = sizeof(T) == 4;
  x = vmax<W>(x, splat<W>(f32 ? T(-87) : T(-708)));
  x = vmin<W>(x, splat<W>(f32 ? T(88) : T(709)));
  // k = round(x / ln2) with the 1.5 * 2^(mantissa bits) trick (exact under round-to-nearest).
  const T shifter = f32 ? T(12582912.0) : T(6755399441055744.0);
  const V kf = (x * T(1.44269504088896340736) + shifter) - shifter;
  // r = x - k ln2 with ln2 split in two parts for accuracy; |r| <= ln2 / 2.
  const T ln2_hi = f32 ? T(0.693145751953125) : T(6.93147180369123816490e-01);
  const T ln2_lo = f32 ? T(1.42860682030941723e-6) : T(1.90821492927058770002e-10);
  const V r = (x - kf * ln2_hi) - kf * ln2_lo;
  constexpr int degree = f32 ? 6 : 13;
  V p = splat<W>(T(kInvFactorial[degree]));
#pragma GCC unroll 16
  for (int i = degree - 1; i >= 0; --i) p = p * r + T(kInvFactorial[i]);
  // 2^k written straight into the exponent field.
  using I = typename W::I;
  const I bits = (__builtin_convertvector(kf, I) + (f32 ? 127 : 1023)) << (f32 ? 23 : 52);
  return p * (V)bits;  // vector cast = bit reinterpretation
}

// ln(2)^i / i!: the Taylor coefficients of 2^f.
constexpr double exp2_coefficient(int i) {
  double c = 1.0;
  for (int j = 1; j <= i; ++j) c *= 0.693147180559945309417232121458 / j;
  return c;
}

// 2^f for f in [-1/2, 1/2], fp32: a degree-5 polynomial with p(0) = 1 exactly, its other coefficients fitted to
// minimise the largest relative error on that range (iteratively reweighted least squares): 9.4e-8 in exact
// arithmetic, 1.9e-7 evaluated in fp32 by Horner's rule — as accurate as the degree-6 Taylor polynomial, one
// multiply-add cheaper in the scan's innermost loop.
constexpr float kExp2Fp32[6] = {1.0f, 0.6931470036506653f, 0.24022237956523895f, 0.05550716817378998f,
                                 0.009671706706285477f, 0.0013270233757793903f};

// 2^x per lane for x <= 0 (the scan's decays, with log2(e) folded into A): 2^f · 2^k for k = round(x) and
// f = x - k in [-1/2, 1/2] (exact), 2^f by the polynomial above (fp32) or its Taylor polynomial of degree 13 (fp64,
// relative error < 1e-15). x is clamped to the smallest normal exponent, so no result is a denormal. AVX-512 scales
// by 2^k in one instruction (vscalef); elsewhere 2^k is written into the exponent field.
template <class W>
VM_INLINE typename W::V exp2_nonpositive(typename W::V x) {
  using T = typename W::Scalar;
  using V = typename W::V;
  constexpr bool f32 = sizeof(T) == 4;
  constexpr bool zmm = sizeof(V) == 64;
  x = vmax<W>(x, splat<W>(f32 ? T(-126) : T(-1022)));
  const T shifter = f32 ? T(12582912.0) : T(6755399441055744.0);
  const V k = (x + shifter) - shifter;  // round to nearest
  const V f = x - k;
  V p;
  if constexpr (f32) {
    p = splat<W>(kExp2Fp32[5]);
#pragma GCC unroll 8
    for (int i = 4; i >= 0; --i) p = p * f + kExp2Fp32[i];
  } else {
    p = splat<W>(T(exp2_coefficient(13)));
#pragma GCC unroll 16
    for (int i = 12; i >= 0; --i) p = p * f + T(exp2_coefficient(i));
  }
#ifdef VM_X86
  // The builtins, not the _mm512 wrappers: those carry their own target and would not inline into this
  // default-target template, which is only instantiated with 512-bit vectors inside x86-64-v4 functions.
  if constexpr (zmm && f32) {
    typedef float F16 __attribute__((vector_size(64)));
    return (V)__builtin_ia32_scalefps512_mask((F16)p, (F16)k, (F16)p, (__mmask16)-1, _MM_FROUND_CUR_DIRECTION);
  } else if constexpr (zmm) {
    typedef double D8 __attribute__((vector_size(64)));
    return (V)__builtin_ia32_scalefpd512_mask((D8)p, (D8)k, (D8)p, (__mmask8)-1, _MM_FROUND_CUR_DIRECTION);
  }
#else
  static_assert(!zmm, "512-bit vectors only on x86-64");
#endif
  using I = typename W::I;
  const I bits = (__builtin_convertvector(k, I) + (f32 ? 127 : 1023)) << (f32 ? 23 : 52);
  return p * (V)bits;
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)) per lane, and exactly x above torch's threshold 20 (as
// F.softplus). With e = exp(-|x|) in (0, 1] and s = e / (2 + e) <= 1/3, log1p(e) = 2 atanh(s), summed to
// s^19 (fp32) or s^35 (fp64): the rest is below the format's precision.
template <class W>
VM_INLINE typename W::V softplus(typename W::V x) {
  using T = typename W::Scalar;
  using V = typename W::V;
  constexpr int terms = sizeof(T) == 4 ? 10 : 18;
  const V zero = splat<W>(T(0));
  const V e = exp<W>(x > zero ? -x : x);
  const V s = e / (e + T(2)), s2 = s * s;
  V p = splat<W>(T(1) / T(2 * terms - 1));
#pragma GCC unroll 20
  for (int i = terms - 2; i >= 0; --i) p = p * s2 + T(1) / T(2 * i + 1);
  const V out = vmax<W>(x, zero) + T(2) * s * p;
  return x > T(20) ? x : out;
}

// sigmoid(x) = 1 / (1 + exp(-x)): the derivative of softplus (1 above its threshold, as torch's backward).
template <class W>
VM_INLINE typename W::V softplus_grad(typename W::V x) {
  using T = typename W::Scalar;
  const typename W::V sig = T(1) / (T(1) + exp<W>(-x));
  return x > T(20) ? splat<W>(T(1)) : sig;
}

template <class W>
VM_INLINE typename W::V sigmoid(typename W::V x) {
  using T = typename W::Scalar;
  return T(1) / (T(1) + exp<W>(-x));
}

}  // namespace vm
