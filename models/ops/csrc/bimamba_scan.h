// Selective-scan kernels of the fused bidirectional Mamba inner path on CPU (driven by models/ops/bimamba_cpu.py
// through bimamba_cpu.cpp), on channels-last (batch, L, dim) rows, either time direction (the mixer's second
// direction runs backwards without flipped copies). Index i counts steps in scan order (see bimamba_conv.h).
//
// delta_i = softplus(W_dt dt_low_i + dt_bias); h_i = exp(delta_i A) h_{i-1} + delta_i u_i B_i;
// y_i = C_i . h_i + D u_i, added into y (one buffer for both directions).
// Channels sit in vector lanes, the state index n in a loop of vector registers, so B_t and C_t are broadcast
// scalars shared by every channel (the mixer has one group), no horizontal sum is needed in the forward pass and
// the (batch, dim, L, N) states are never stored: the forward keeps the state that enters every chunk of kChunk
// steps, and the backward recomputes one chunk at a time into a buffer that stays in cache, then runs the adjoint
// recursion lam_i = dy_i C_i + a_{i+1} lam_{i+1} through it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "bimamba_conv.h"
#include "isa.h"
#include "vec_math.h"

namespace bimamba {

constexpr int64_t kChunk = 64;      // scan steps between saved states; also the forward's block of steps
constexpr int64_t kMaxState = 256;  // N, as mamba_ssm
constexpr int kBlock = 8;           // states a loop keeps in registers at once

template <typename T>
struct ScanArgs {
  int64_t batch, length, dim, n_state, rank, n_chunks, lanes, vectors_per_item;
  int64_t i_begin, i_end;  // forward: the steps (scan order) this call runs; [0, L) for a whole sequence
  Rows<const T> u;         // (batch, L, dim) conv output
  Rows<const T> proj;      // x_proj output rows [dt_low (rank) | B (N) | C (N)]
  const T* W_dt_t;   // (rank, dim): dt_proj weight transposed; dt = W_dt dt_low, before dt_bias and softplus
  const T* dt_bias;  // (dim)
  const T* A_t;      // (N, dim): A transposed (A <= 0)
  const T* A2_t;     // (N, dim): A log2(e), the exponent of the decays in base 2
  const T* D;        // (dim)
  bool reverse;
  Rows<T> y;          // (batch, L, dim): y (+)= scan output
  bool accumulate;    // y += instead of y =
  Rows<const T> gate;  // forward: z rows; y *= silu(z) as it is written, or gate.p == nullptr
  T* states;         // (batch, n_chunks, N, dim): state entering each chunk of kChunk steps (step i absolute)
  const T* h_in;     // forward: (batch, N, dim) state before step i_begin, or null for zero
  T* h_out;          // forward: (batch, N, dim) state after step i_end - 1, or null
  Rows<const T> dy;  // backward: gradient of y
  Rows<T> du;        // backward outputs, (batch, L, dim) ...
  Rows<T> ddt;       // ... gradient of dt (before dt_bias and softplus)
  T* dA_t;           // (batch, N, dim): per batch element, A transposed
  T* dD;             // (batch, dim)
  T* ddt_bias;       // (batch, dim)
  T* dB_parts;       // (batch, items per batch, L, N): each item's share of dB, summed by the caller
  T* dC_parts;
};

// ---- selective scan ------------------------------------------------------------------------------------------

// dt_bias + W_dt dt_low at a step: the Δ projection (rank FMAs per vector, two chains), before softplus.
template <class W, bool kFull>
VM_INLINE typename W::V delta_input(const ScanArgs<typename W::Scalar>& a, const typename W::Scalar* row_proj,
                                    typename W::V bias, int64_t c, int count) {
  typename W::V x0 = bias, x1{};
  int64_t r = 0;
  for (; r + 1 < a.rank; r += 2) {
    x0 += vm::load_n<W, kFull>(a.W_dt_t + r * a.dim + c, count) * row_proj[r];
    x1 += vm::load_n<W, kFull>(a.W_dt_t + (r + 1) * a.dim + c, count) * row_proj[r + 1];
  }
  if (r < a.rank) x0 += vm::load_n<W, kFull>(a.W_dt_t + r * a.dim + c, count) * row_proj[r];
  return x0 + x1;
}

// x_j = dt_bias + W_dt dt_low at steps i0 .. i1-1 (scan order) of one channel vector, handed to emit(j, x_j) with
// j = i - i0 (a lambda marked VM_INLINE_LAMBDA: inlined, it is compiled for its caller's instruction set); four steps
// at a time, whose projections and whatever emit computes from them are independent work that
// the core overlaps (one step's softplus alone is a long chain of dependent operations).
template <class W, bool kFull, class Emit>
VM_INLINE void for_each_delta_input(const ScanArgs<typename W::Scalar>& a, int64_t b, int64_t c, int count,
                                    int64_t i0, int64_t i1, const Emit& emit) {
  using T = typename W::Scalar;
  using V = typename W::V;
  constexpr int kSteps = 4;
  const V bias = vm::load_n<W, kFull>(a.dt_bias + c, count);
  int64_t i = i0;
  for (; i + kSteps <= i1; i += kSteps) {
    const T* proj[kSteps];
    V x[kSteps];
#pragma GCC unroll 4
    for (int j = 0; j < kSteps; ++j) {
      proj[j] = a.proj.at(b, time_of<T>(i + j, a.length, a.reverse));
      x[j] = bias;
    }
    for (int64_t r = 0; r < a.rank; ++r) {
      const V w = vm::load_n<W, kFull>(a.W_dt_t + r * a.dim + c, count);
#pragma GCC unroll 4
      for (int j = 0; j < kSteps; ++j) x[j] += w * proj[j][r];
    }
#pragma GCC unroll 4
    for (int j = 0; j < kSteps; ++j) emit(i + j - i0, x[j]);
  }
  for (; i < i1; ++i) emit(i - i0, delta_input<W, kFull>(a, a.proj.at(b, time_of<T>(i, a.length, a.reverse)), bias, c,
                                                         count));
}

// Forward scratch of one block of kChunk steps of one channel vector (units of vectors).
template <class W>
struct FwdBlock {
  typename W::V delta[kChunk], du[kChunk], y[kChunk];
};

// The recurrence of states [n0, n0 + nb) over the block's steps, those states in registers: h = exp(Δ A) h + Δ u B,
// y += C . h. The first pass starts y at D u; blk.y carries y between passes and holds it at the end.
template <class W, int kStates, bool kFull>
VM_INLINE void scan_fwd_states(const ScanArgs<typename W::Scalar>& a, FwdBlock<W>& blk, typename W::V* h, int64_t b,
                               int64_t c, int count, int64_t i0, int64_t i1, int64_t n0, int nb, typename W::V D) {
  using T = typename W::Scalar;
  using V = typename W::V;
  const int64_t N = a.n_state, L = a.length;
  V A2[kStates], hk[kStates];
  for (int k = 0; k < nb; ++k) {
    A2[k] = vm::load_n<W, kFull>(a.A2_t + (n0 + k) * a.dim + c, count);
    hk[k] = h[n0 + k];
  }
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t t = time_of<T>(i, L, a.reverse);
    const T* Bt = a.proj.at(b, t) + a.rank + n0;
    const T* Ct = Bt + N;
    const V delta = blk.delta[i - i0], du = blk.du[i - i0];
    V y0 = n0 == 0 ? D * vm::load_n<W, kFull>(a.u.at(b, t) + c, count) : blk.y[i - i0], y1{};
    if (nb == kStates) {  // two accumulators of y: the adds of one state need not wait for the other's
#pragma GCC unroll 16
      for (int k = 0; k < kStates; k += 2) {
        hk[k] = vm::exp2_nonpositive<W>(delta * A2[k]) * hk[k] + du * Bt[k];
        y0 += hk[k] * Ct[k];
        hk[k + 1] = vm::exp2_nonpositive<W>(delta * A2[k + 1]) * hk[k + 1] + du * Bt[k + 1];
        y1 += hk[k + 1] * Ct[k + 1];
      }
    } else {
      for (int k = 0; k < nb; ++k) {
        hk[k] = vm::exp2_nonpositive<W>(delta * A2[k]) * hk[k] + du * Bt[k];
        y0 += hk[k] * Ct[k];
      }
    }
    blk.y[i - i0] = y0 + y1;
  }
  for (int k = 0; k < nb; ++k) h[n0 + k] = hk[k];
}

// Steps [i0, i1) (one block, within one chunk) of one channel vector: first Δ and Δ u for every step (work without
// a recurrence, which the core overlaps), then the recurrence (all 16 states in registers when N = 16, else kBlock
// at a time with the others parked in `h`), then y written (+ the gate).
template <class W, int kN, bool kFull>
VM_INLINE void scan_fwd_block(const ScanArgs<typename W::Scalar>& a, FwdBlock<W>& blk, typename W::V* h,
                              int64_t b, int64_t c, int count, int64_t i0, int64_t i1) {
  using T = typename W::Scalar;
  using V = typename W::V;
  const int64_t N = a.n_state, L = a.length;
  const V D = vm::load_n<W, kFull>(a.D + c, count);
  for_each_delta_input<W, kFull>(a, b, c, count, i0, i1, [&](int64_t j, V x) VM_INLINE_LAMBDA {
    const V delta = vm::softplus<W>(x);
    blk.delta[j] = delta;
    blk.du[j] = delta * vm::load_n<W, kFull>(a.u.at(b, time_of<T>(i0 + j, L, a.reverse)) + c, count);
  });
  if constexpr (kN == 16) {
    scan_fwd_states<W, 16, kFull>(a, blk, h, b, c, count, i0, i1, 0, 16, D);
  } else {
    for (int64_t n0 = 0; n0 < N; n0 += kBlock) {
      scan_fwd_states<W, kBlock, kFull>(a, blk, h, b, c, count, i0, i1, n0,
                                        static_cast<int>(std::min<int64_t>(kBlock, N - n0)), D);
    }
  }
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t t = time_of<T>(i, L, a.reverse);
    V y = blk.y[i - i0];
    T* yp = a.y.at(b, t) + c;
    if (a.accumulate) y += vm::load_n<W, kFull>(yp, count);
    if (a.gate.p) {
      const V z = vm::load_n<W, kFull>(a.gate.at(b, t) + c, count);
      y *= z * vm::sigmoid<W>(z);
    }
    vm::store_n<W, kFull>(yp, y, count);
  }
}

// Steps [i_begin, i_end) of one channel vector, in blocks of kChunk aligned to the chunks whose entering states
// the training forward saves.
template <class W, int kN, bool kFull>
VM_INLINE void scan_fwd_vector(const ScanArgs<typename W::Scalar>& a, int64_t b, int64_t c, int count) {
  using T = typename W::Scalar;
  using V = typename W::V;
  const int64_t N = kN > 0 ? kN : a.n_state, dim = a.dim;
  V h[kN > 0 ? kN : kMaxState];
  for (int64_t n = 0; n < N; ++n) h[n] = a.h_in ? vm::load_n<W, kFull>(a.h_in + (b * N + n) * dim + c, count) : V{};
  FwdBlock<W> blk;
  for (int64_t i0 = a.i_begin; i0 < a.i_end; i0 = (i0 / kChunk + 1) * kChunk) {
    if (a.states && i0 % kChunk == 0) {
      T* s = a.states + (b * a.n_chunks + i0 / kChunk) * N * dim + c;
      for (int64_t n = 0; n < N; ++n) vm::store_n<W, kFull>(s + n * dim, h[n], count);
    }
    scan_fwd_block<W, kN, kFull>(a, blk, h, b, c, count, i0, std::min(a.i_end, (i0 / kChunk + 1) * kChunk));
  }
  if (a.h_out) {
    for (int64_t n = 0; n < N; ++n) vm::store_n<W, kFull>(a.h_out + (b * N + n) * dim + c, h[n], count);
  }
}

template <class W, int kN>
VM_INLINE void scan_fwd_item(const ScanArgs<typename W::Scalar>& a, int64_t item) {
  const int64_t vectors = (a.dim + W::lanes - 1) / W::lanes;
  const int64_t b = item / vectors, c = (item % vectors) * W::lanes;
  const int count = static_cast<int>(std::min<int64_t>(W::lanes, a.dim - c));
  if (count == W::lanes) {
    scan_fwd_vector<W, kN, true>(a, b, c, count);
  } else {
    scan_fwd_vector<W, kN, false>(a, b, c, count);
  }
}

// One item = one vector of channels of one batch element.
template <class W>
VM_INLINE void scan_fwd_body(const ScanArgs<typename W::Scalar>& a, int64_t item) {
  if (a.n_state == 16) {
    scan_fwd_item<W, 16>(a, item);
  } else {
    scan_fwd_item<W, 0>(a, item);
  }
}

// Per-item scratch, in units of scalars.
template <typename T>
struct ScanScratch {
  std::vector<T> h;      // (kChunk + 1, N, lanes): state entering the chunk, then after each step
  std::vector<T> a;      // (kChunk, N, lanes): decays exp(delta A)
  std::vector<T> dlt;    // (kChunk, lanes): delta
  std::vector<T> sg;     // (kChunk, lanes): softplus'(dt + dt_bias)
  std::vector<T> acc1;   // (kChunk, lanes): y, then g_delta, summed over the state blocks so far
  std::vector<T> acc2;   // (kChunk, lanes): lam_B summed over the state blocks so far
  std::vector<T> pair;   // (kChunk, lanes): a state block's partial channel sums, awaiting the next block
  std::vector<T> lam;    // (vectors, N, lanes): a_{i+1} lam_{i+1} carried into the next (earlier) chunk
  std::vector<T> dA;     // (vectors, N, lanes)
  std::vector<T> dD;     // (vectors, lanes)
  std::vector<T> dbias;  // (vectors, lanes)

  ScanScratch(int64_t N, int64_t lanes, int64_t vectors)
      : h((kChunk + 1) * N * lanes), a(kChunk * N * lanes), dlt(kChunk * lanes), sg(kChunk * lanes),
        acc1(kChunk * lanes), acc2(kChunk * lanes), pair(kChunk * lanes), lam(vectors * N * lanes),
        dA(vectors * N * lanes), dD(vectors * lanes), dbias(vectors * lanes) {}
};

// The backward works on the states in blocks of kBlock, so that a block's recurrences, adjoints and dA sums stay in
// vector registers; what couples the blocks (y, g_delta and lam_B, sums over all states) goes through small
// per-step buffers.

// Adds (or writes, when `first`) the sums over channels (lanes) of terms[0..nb) to dst[n0 + k], for the state block
// starting at n0 (< N). With 16 lanes a block of 8 leaves 8 groups of 2 partial sums: even blocks park them in
// `pair` and odd blocks finish both (natural order); a last even block finishes against zeros.
template <class W>
VM_INLINE void add_block_sums(typename W::V* terms, int nb, int64_t n0, int64_t N, typename W::Scalar* dst,
                              bool first, typename W::Scalar* pair) {
  using V = typename W::V;
  constexpr int lanes = W::lanes;
  for (int k = nb; k < kBlock; ++k) terms[k] = V{};
  auto put = [&](int64_t n, V sums) {
    const int count = static_cast<int>(std::min<int64_t>(lanes, N - n));
    if (!first) sums += vm::load_part<W>(dst + n, count);
    vm::store_part<W>(dst + n, sums, count);
  };
  vm::merge_levels<W, lanes, kBlock>(terms);
  if constexpr (lanes <= kBlock) {
    for (int j = 0; j < kBlock / lanes && n0 + j * lanes < N; ++j) put(n0 + j * lanes, terms[j]);
  } else {
    static_assert(lanes == 2 * kBlock, "one pair of blocks per vector of sums");
    constexpr auto seq = std::make_index_sequence<lanes>{};
    if ((n0 / kBlock) % 2 == 0 && n0 + kBlock < N) {
      vm::store<W>(pair, terms[0]);
    } else if ((n0 / kBlock) % 2 == 0) {
      put(n0, vm::merge_half<W, 2, false>(terms[0], V{}, seq) + vm::merge_half<W, 2, true>(terms[0], V{}, seq));
    } else {
      const V first_half = vm::load<W>(pair);
      put(n0 - kBlock, vm::merge_half<W, 2, false>(first_half, terms[0], seq) +
                           vm::merge_half<W, 2, true>(first_half, terms[0], seq));
    }
  }
}

// Phase 1 of the backward of one chunk for states [n0, n0 + nb) (kNb = nb at compile time, so the block's states
// stay in registers; 0: nb at run time, for the last block of an N that is not a multiple of kBlock): recompute the
// decays and states into the chunk's scratch, y = C.h + D u (into a.y after the last block, which the gate's
// gradient needs) and dC = sum over channels of dy h.
template <class W, int kNb, bool kFull>
VM_INLINE void scan_bwd_states_forward(const ScanArgs<typename W::Scalar>& a, ScanScratch<typename W::Scalar>& s,
                                       int64_t b, int64_t c, int count, bool first, const typename W::Scalar* state,
                                       int64_t i0, int64_t i1, int64_t n0, int nb, typename W::Scalar* dC_part) {
  using T = typename W::Scalar;
  using V = typename W::V;
  constexpr int64_t lanes = W::lanes;
  constexpr int kBound = kNb > 0 ? kNb : kBlock;
  const int n_block = kNb > 0 ? kNb : nb;
  const int64_t N = a.n_state, L = a.length, dim = a.dim;
  const bool last = n0 + kBlock >= N;
  const V D = vm::load_n<W, kFull>(a.D + c, count);
  V A2[kBound], h[kBound], terms[kBlock];
#pragma GCC unroll 8
  for (int k = 0; k < n_block; ++k) {
    A2[k] = vm::load_n<W, kFull>(a.A2_t + (n0 + k) * dim + c, count);
    h[k] = vm::load_n<W, kFull>(state + (n0 + k) * dim, count);
    vm::store<W>(s.h.data() + (n0 + k) * lanes, h[k]);
  }
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t li = i - i0, t = time_of<T>(i, L, a.reverse);
    const T* Bt = a.proj.at(b, t) + a.rank + n0;
    const T* Ct = Bt + N;
    const V delta = vm::load<W>(s.dlt.data() + li * lanes);
    const V u = vm::load_n<W, kFull>(a.u.at(b, t) + c, count);
    const V dy = vm::load_n<W, kFull>(a.dy.at(b, t) + c, count);
    const V du = delta * u;
    V y = n0 == 0 ? D * u : vm::load<W>(s.acc1.data() + li * lanes), y_odd{};  // two chains of adds
#pragma GCC unroll 8
    for (int k = 0; k < n_block; ++k) {
      const V decay = vm::exp2_nonpositive<W>(delta * A2[k]);
      h[k] = decay * h[k] + du * Bt[k];
      vm::store<W>(s.a.data() + (li * N + n0 + k) * lanes, decay);
      vm::store<W>(s.h.data() + ((li + 1) * N + n0 + k) * lanes, h[k]);
      (k % 2 ? y_odd : y) += h[k] * Ct[k];
      terms[k] = dy * h[k];
    }
    y += y_odd;
    add_block_sums<W>(terms, n_block, n0, N, dC_part + t * N, first, s.pair.data() + li * lanes);
    if (!last) {
      vm::store<W>(s.acc1.data() + li * lanes, y);
    } else {
      T* yp = a.y.at(b, t) + c;
      vm::store_n<W, kFull>(yp, a.accumulate ? vm::load_n<W, kFull>(yp, count) + y : y, count);
    }
  }
}

// Phase 2 for states [n0, n0 + nb) (kNb as above): the reverse sweep, lam = dLoss/dh_i with carry = a_i lam_i
// entering step i-1, giving dB, dA and, after the last block, ddt, du, dD and the Δ bias's gradient.
template <class W, int kNb, bool kFull>
VM_INLINE void scan_bwd_states_reverse(const ScanArgs<typename W::Scalar>& a, ScanScratch<typename W::Scalar>& s,
                                       int64_t b, int64_t c, int count, int64_t v, bool first, int64_t i0,
                                       int64_t i1, int64_t n0, int nb, typename W::Scalar* dB_part,
                                       typename W::V& dD, typename W::V& dbias) {
  using T = typename W::Scalar;
  using V = typename W::V;
  constexpr int64_t lanes = W::lanes;
  constexpr int kBound = kNb > 0 ? kNb : kBlock;
  const int n_block = kNb > 0 ? kNb : nb;
  const int64_t N = a.n_state, L = a.length, dim = a.dim;
  const bool last = n0 + kBlock >= N;
  const V D = vm::load_n<W, kFull>(a.D + c, count);
  T* carry_mem = s.lam.data() + (v * N + n0) * lanes;
  T* dA_mem = s.dA.data() + (v * N + n0) * lanes;
  V A[kBound], carry[kBound], dA[kBound], terms[kBlock];
#pragma GCC unroll 8
  for (int k = 0; k < n_block; ++k) {
    A[k] = vm::load_n<W, kFull>(a.A_t + (n0 + k) * dim + c, count);
    carry[k] = vm::load<W>(carry_mem + k * lanes);
    dA[k] = vm::load<W>(dA_mem + k * lanes);
  }
  for (int64_t i = i1 - 1; i >= i0; --i) {
    const int64_t li = i - i0, t = time_of<T>(i, L, a.reverse);
    const T* Bt = a.proj.at(b, t) + a.rank + n0;
    const T* Ct = Bt + N;
    const V delta = vm::load<W>(s.dlt.data() + li * lanes);
    const V u = vm::load_n<W, kFull>(a.u.at(b, t) + c, count);
    const V dy = vm::load_n<W, kFull>(a.dy.at(b, t) + c, count);
    const V du = delta * u;
    // the sums over the block's states in two chains each, so that a step's adds do not wait on one another
    V g_delta = n0 == 0 ? V{} : vm::load<W>(s.acc1.data() + li * lanes), g_delta_odd{};
    V lam_B = n0 == 0 ? V{} : vm::load<W>(s.acc2.data() + li * lanes), lam_B_odd{};
#pragma GCC unroll 8
    for (int k = 0; k < n_block; ++k) {
      const int64_t at = (li * N + n0 + k) * lanes;
      const V lam = carry[k] + dy * Ct[k];
      const V decay = vm::load<W>(s.a.data() + at);
      const V g = lam * vm::load<W>(s.h.data() + at) * decay;  // dLoss/d(delta A): h_{i-1} is row li
      (k % 2 ? g_delta_odd : g_delta) += g * A[k];
      dA[k] += g * delta;
      (k % 2 ? lam_B_odd : lam_B) += lam * Bt[k];
      carry[k] = lam * decay;
      terms[k] = lam * du;
    }
    g_delta += g_delta_odd;
    lam_B += lam_B_odd;
    add_block_sums<W>(terms, n_block, n0, N, dB_part + t * N, first, s.pair.data() + li * lanes);
    if (!last) {
      vm::store<W>(s.acc1.data() + li * lanes, g_delta);
      vm::store<W>(s.acc2.data() + li * lanes, lam_B);
      continue;
    }
    const V ddt = (g_delta + lam_B * u) * vm::load<W>(s.sg.data() + li * lanes);
    vm::store_n<W, kFull>(a.ddt.at(b, t) + c, ddt, count);
    vm::store_n<W, kFull>(a.du.at(b, t) + c, lam_B * delta + D * dy, count);
    dD += dy * u;
    dbias += ddt;
  }
#pragma GCC unroll 8
  for (int k = 0; k < n_block; ++k) {
    vm::store<W>(carry_mem + k * lanes, carry[k]);
    vm::store<W>(dA_mem + k * lanes, dA[k]);
  }
}

// Chunk [i0, i1) of one channel vector (index v within the item): Δ and softplus' per step (the Δ projection once
// for all blocks), then phase 1 (`scan_bwd_states_forward`) and phase 2 (`scan_bwd_states_reverse`), each block of
// states in turn.
template <class W, int kN, bool kFull>
VM_INLINE void scan_bwd_chunk(const ScanArgs<typename W::Scalar>& a, ScanScratch<typename W::Scalar>& s,
                              int64_t b, int64_t c, int count, int64_t v, bool first, int64_t chunk, int64_t i0,
                              int64_t i1, typename W::Scalar* dB_part, typename W::Scalar* dC_part) {
  using T = typename W::Scalar;
  using V = typename W::V;
  constexpr int64_t lanes = W::lanes;
  const int64_t N = kN > 0 ? kN : a.n_state, L = a.length, dim = a.dim;
  const T* state = a.states + (b * a.n_chunks + chunk) * N * dim + c;
  for_each_delta_input<W, kFull>(a, b, c, count, i0, i1, [&](int64_t j, V x) VM_INLINE_LAMBDA {
    vm::store<W>(s.dlt.data() + j * lanes, vm::softplus<W>(x));
    vm::store<W>(s.sg.data() + j * lanes, vm::softplus_grad<W>(x));
  });
  for (int64_t n0 = 0; n0 < N; n0 += kBlock) {
    const int nb = static_cast<int>(std::min<int64_t>(kBlock, N - n0));
    if (nb == kBlock) {
      scan_bwd_states_forward<W, kBlock, kFull>(a, s, b, c, count, first, state, i0, i1, n0, nb, dC_part);
    } else {
      scan_bwd_states_forward<W, 0, kFull>(a, s, b, c, count, first, state, i0, i1, n0, nb, dC_part);
    }
  }
  V dD = vm::load<W>(s.dD.data() + v * lanes), dbias = vm::load<W>(s.dbias.data() + v * lanes);
  for (int64_t n0 = 0; n0 < N; n0 += kBlock) {
    const int nb = static_cast<int>(std::min<int64_t>(kBlock, N - n0));
    if (nb == kBlock) {
      scan_bwd_states_reverse<W, kBlock, kFull>(a, s, b, c, count, v, first, i0, i1, n0, nb, dB_part, dD, dbias);
    } else {
      scan_bwd_states_reverse<W, 0, kFull>(a, s, b, c, count, v, first, i0, i1, n0, nb, dB_part, dD, dbias);
    }
  }
  vm::store<W>(s.dD.data() + v * lanes, dD);
  vm::store<W>(s.dbias.data() + v * lanes, dbias);
}

template <class W, int kN>
VM_INLINE void scan_bwd_item(const ScanArgs<typename W::Scalar>& a, int64_t item) {
  using T = typename W::Scalar;
  constexpr int64_t lanes = W::lanes;
  const int64_t N = kN > 0 ? kN : a.n_state, L = a.length, dim = a.dim;
  const int64_t vectors = (dim + lanes - 1) / lanes;
  const int64_t items_per_batch = (vectors + a.vectors_per_item - 1) / a.vectors_per_item;
  const int64_t b = item / items_per_batch;
  const int64_t v0 = (item % items_per_batch) * a.vectors_per_item;
  const int64_t v1 = std::min(vectors, v0 + a.vectors_per_item);
  ScanScratch<T> s(N, lanes, v1 - v0);
  T* dB_part = a.dB_parts + item * L * N;
  T* dC_part = a.dC_parts + item * L * N;
  for (int64_t chunk = a.n_chunks - 1; chunk >= 0; --chunk) {
    const int64_t i0 = chunk * kChunk, i1 = std::min(L, i0 + kChunk);
    for (int64_t v = v0; v < v1; ++v) {
      const int64_t c = v * lanes;
      const int count = static_cast<int>(std::min<int64_t>(lanes, dim - c));
      if (count == lanes) {
        scan_bwd_chunk<W, kN, true>(a, s, b, c, count, v - v0, v == v0, chunk, i0, i1, dB_part, dC_part);
      } else {
        scan_bwd_chunk<W, kN, false>(a, s, b, c, count, v - v0, v == v0, chunk, i0, i1, dB_part, dC_part);
      }
    }
  }
  // Per-channel gradients of batch element b; the caller sums them over the batch.
  for (int64_t v = v0; v < v1; ++v) {
    const int64_t c = v * lanes;
    const int count = static_cast<int>(std::min<int64_t>(lanes, dim - c));
    for (int64_t n = 0; n < N; ++n) {
      vm::store_part<W>(a.dA_t + (b * N + n) * dim + c, vm::load<W>(s.dA.data() + ((v - v0) * N + n) * lanes),
                        count);
    }
    vm::store_part<W>(a.dD + b * dim + c, vm::load<W>(s.dD.data() + (v - v0) * lanes), count);
    vm::store_part<W>(a.ddt_bias + b * dim + c, vm::load<W>(s.dbias.data() + (v - v0) * lanes), count);
  }
}

template <class W>
VM_INLINE void scan_bwd_body(const ScanArgs<typename W::Scalar>& a, int64_t item) {
  if (a.n_state == 16) {
    scan_bwd_item<W, 16>(a, item);
  } else {
    scan_bwd_item<W, 0>(a, item);
  }
}

}  // namespace bimamba
