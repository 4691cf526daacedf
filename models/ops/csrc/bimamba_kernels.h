// Kernels of the fused bidirectional Mamba inner path on CPU (driven by models/ops/bimamba_cpu.py):
// a causal depthwise conv + SiLU and a selective scan, both on channels-last (batch, L, dim) rows, both
// vectorised over channels and both able to run backwards in time (the mixer's second direction) without
// flipped copies. Index i counts steps in scan order; time t = i, or L - 1 - i when `reverse`.
//
// Conv: pre_i = bias + sum_k w[k] x_{i-(W-1)+k} (zero before the start), out_i = silu(pre_i).
// Scan: delta_i = softplus(dt_i + dt_bias); h_i = exp(delta_i A) h_{i-1} + delta_i u_i B_i;
//       y_i = C_i . h_i + D u_i, added into y (one buffer for both directions).
// Channels sit in vector lanes, the state index n in a loop of vector registers, so B_t and C_t are
// broadcast scalars shared by every channel (the mixer has one group), no horizontal sum is needed in
// the forward pass and the (batch, dim, L, N) states are never stored: the forward keeps the state that
// enters every chunk of kChunk steps, and the backward recomputes one chunk at a time into a buffer that
// stays in cache, then runs the adjoint recursion lam_i = dy_i C_i + a_{i+1} lam_{i+1} through it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "isa.h"
#include "vec_math.h"

namespace bimamba {

constexpr int64_t kChunk = 64;      // scan steps between saved states
constexpr int64_t kMaxState = 256;  // N, as mamba_ssm
constexpr int64_t kMaxWidth = 8;    // conv taps

template <typename T>
struct ConvArgs {
  int64_t batch, length, dim, width, lanes, rows_per_item;
  const T* x;  // x[b, t, c] at b * x_batch + t * x_row + c
  int64_t x_batch, x_row;
  const T* w_t;   // (width, dim): the weight transposed
  const T* bias;  // (dim) or null
  bool reverse;
  T* out;          // forward: (batch, L, dim) silu(pre)
  const T* dout;   // backward: gradient of out, (batch, L, dim)
  T* dx;           // backward: dx[b, t, c] at b * dx_batch + t * dx_row + c
  int64_t dx_batch, dx_row;
  bool accumulate;  // backward: dx += instead of dx =
  T* dw_parts;      // backward: (items, width, dim), each item's share of dweight (transposed)
  T* dbias_parts;   // backward: (items, dim)
};

template <typename T>
struct ScanArgs {
  int64_t batch, length, dim, n_state, rank, n_chunks, lanes, vectors_per_item;
  const T* u;     // (batch, L, dim)
  const T* proj;  // x_proj output rows [dt_low (rank) | B (N) | C (N)] at b * proj_batch + t * proj_row
  int64_t proj_batch, proj_row;
  const T* W_dt_t;   // (rank, dim): dt_proj weight transposed; dt = W_dt dt_low, before dt_bias and softplus
  const T* dt_bias;  // (dim)
  const T* A_t;      // (N, dim): A transposed (A <= 0)
  const T* A2_t;     // (N, dim): A log2(e), the exponent of the decays in base 2
  const T* D;        // (dim)
  bool reverse;
  T* y;             // (batch, L, dim): y (+)= scan output
  bool accumulate;  // y += instead of y =
  const T* gate;    // forward: z rows (z[b, t, c] at b * gate_batch + t * gate_row + c): y *= silu(z), or null
  int64_t gate_batch, gate_row;
  T* states;        // (batch, n_chunks, N, dim): state entering each chunk (written by the forward)
  const T* dy;      // backward: gradient of y
  T* du;            // backward outputs, (batch, L, dim) ...
  T* ddt;           // ... gradient of dt (before dt_bias and softplus)
  T* dA_t;          // (batch, N, dim): per batch element, A transposed
  T* dD;            // (batch, dim)
  T* ddt_bias;      // (batch, dim)
  T* dB_parts;      // (batch, items per batch, L, N): each item's share of dB, summed by the caller
  T* dC_parts;
};

template <typename T>
struct GateArgs {
  int64_t rows, dim, rows_per_item;
  const T* z;  // row r at z + r * z_row, channels contiguous (a half of the in_proj output)
  int64_t z_row;
  const T* d_gated;  // (rows, dim): gradient of y silu(z)
  T* dy;             // gate_pre out (rows, dim): gradient of y
  T* y;              // gate_post: in y, out y silu(z), (rows, dim)
  T* dz;             // gate_post out: gradient of z, row r at dz + r * dz_row
  int64_t dz_row;
};

template <typename T>
inline int64_t time_of(int64_t i, int64_t length, bool reverse) {
  return reverse ? length - 1 - i : i;
}

// ---- causal conv ---------------------------------------------------------------------------------------------
// One item = a block of rows_per_item consecutive steps of one batch element, all channels: every row is read
// and written contiguously, the K input rows a step needs are still in cache from the previous steps.

template <typename T>
inline const T* conv_row(const ConvArgs<T>& a, int64_t b, int64_t i) {
  return a.x + b * a.x_batch + time_of<T>(i, a.length, a.reverse) * a.x_row;
}

// pre_i for channels [c, c + count): bias + sum_k w[k] x_{i-(K-1)+k}.
template <class W, bool kFull>
VM_INLINE typename W::V conv_pre(const ConvArgs<typename W::Scalar>& a, int64_t b, int64_t i, int64_t c, int count) {
  typename W::V acc = a.bias ? vm::load_n<W, kFull>(a.bias + c, count) : typename W::V{};
  for (int64_t k = std::max<int64_t>(0, a.width - 1 - i); k < a.width; ++k) {
    acc += vm::load_n<W, kFull>(a.w_t + k * a.dim + c, count) *
           vm::load_n<W, kFull>(conv_row(a, b, i - (a.width - 1) + k) + c, count);
  }
  return acc;
}

template <class W, bool kFull>
VM_INLINE void conv_fwd_vector(const ConvArgs<typename W::Scalar>& a, int64_t b, int64_t i, int64_t c, int count) {
  using T = typename W::Scalar;
  const typename W::V pre = conv_pre<W, kFull>(a, b, i, c, count);
  T* out = a.out + (b * a.length + time_of<T>(i, a.length, a.reverse)) * a.dim + c;
  vm::store_n<W, kFull>(out, pre * vm::sigmoid<W>(pre), count);
}

template <class W>
VM_INLINE void conv_fwd_body(const ConvArgs<typename W::Scalar>& a, int64_t item) {
  const int64_t blocks = (a.length + a.rows_per_item - 1) / a.rows_per_item;
  const int64_t b = item / blocks, i0 = (item % blocks) * a.rows_per_item;
  const int64_t i1 = std::min(a.length, i0 + a.rows_per_item), full = a.dim / W::lanes * W::lanes;
  for (int64_t i = i0; i < i1; ++i) {
    for (int64_t c = 0; c < full; c += W::lanes) conv_fwd_vector<W, true>(a, b, i, c, W::lanes);
    if (full < a.dim) conv_fwd_vector<W, false>(a, b, i, full, static_cast<int>(a.dim - full));
  }
}

// Backward of out = silu(pre) for the block's rows: g_i = dout_i silu'(pre_i) (pre recomputed) for the block and
// the K-1 steps after it, which dx_s = sum_k w[k] g_{s+(K-1)-k} needs; dweight and dbias from the block's own rows.
template <class W, bool kFull>
VM_INLINE void conv_bwd_vector(const ConvArgs<typename W::Scalar>& a, typename W::Scalar* g, int64_t b, int64_t item,
                               int64_t i0, int64_t i1, int64_t c, int count) {
  using T = typename W::Scalar;
  using V = typename W::V;
  const int64_t K = a.width, L = a.length, end = std::min(L, i1 + K - 1);
  V dw[kMaxWidth] = {}, dbias{};
  for (int64_t i = i0; i < end; ++i) {
    const V pre = conv_pre<W, kFull>(a, b, i, c, count);
    const V s = vm::sigmoid<W>(pre);
    const V dout = vm::load_n<W, kFull>(a.dout + (b * L + time_of<T>(i, L, a.reverse)) * a.dim + c, count);
    const V gi = dout * s * (T(1) + pre * (T(1) - s));
    vm::store<W>(g + (i - i0) * W::lanes, gi);
    if (i < i1) {
      for (int64_t k = std::max<int64_t>(0, K - 1 - i); k < K; ++k) {
        dw[k] += gi * vm::load_n<W, kFull>(conv_row(a, b, i - (K - 1) + k) + c, count);
      }
      dbias += gi;
    }
  }
  for (int64_t s = i0; s < i1; ++s) {
    V dx{};
    for (int64_t k = 0; k < K; ++k) {
      const int64_t i = s + (K - 1) - k;
      if (i < end) dx += vm::load_n<W, kFull>(a.w_t + k * a.dim + c, count) * vm::load<W>(g + (i - i0) * W::lanes);
    }
    T* p = a.dx + b * a.dx_batch + time_of<T>(s, L, a.reverse) * a.dx_row + c;
    vm::store_n<W, kFull>(p, a.accumulate ? vm::load_n<W, kFull>(p, count) + dx : dx, count);
  }
  for (int64_t k = 0; k < K; ++k) vm::store_n<W, kFull>(a.dw_parts + (item * K + k) * a.dim + c, dw[k], count);
  vm::store_n<W, kFull>(a.dbias_parts + item * a.dim + c, dbias, count);
}

template <class W>
VM_INLINE void conv_bwd_body(const ConvArgs<typename W::Scalar>& a, int64_t item) {
  const int64_t blocks = (a.length + a.rows_per_item - 1) / a.rows_per_item;
  const int64_t b = item / blocks, i0 = (item % blocks) * a.rows_per_item;
  const int64_t i1 = std::min(a.length, i0 + a.rows_per_item), full = a.dim / W::lanes * W::lanes;
  std::vector<typename W::Scalar> g((a.rows_per_item + a.width - 1) * W::lanes);  // one channel vector's g
  for (int64_t c = 0; c < full; c += W::lanes) conv_bwd_vector<W, true>(a, g.data(), b, item, i0, i1, c, W::lanes);
  if (full < a.dim) {
    conv_bwd_vector<W, false>(a, g.data(), b, item, i0, i1, full, static_cast<int>(a.dim - full));
  }
}

// ---- the silu(z) gate's backward -------------------------------------------------------------------------------
// Two passes over (rows, dim) instead of a dozen elementwise ops: gate_pre before the scans (dy), gate_post after
// them (dz, and the gated output out_proj's weight gradient needs).

template <class W, bool kPost, bool kFull>
VM_INLINE void gate_vector(const GateArgs<typename W::Scalar>& a, int64_t r, int64_t c, int count) {
  using T = typename W::Scalar;
  using V = typename W::V;
  const V z = vm::load_n<W, kFull>(a.z + r * a.z_row + c, count);
  const V d = vm::load_n<W, kFull>(a.d_gated + r * a.dim + c, count);
  const V s = vm::sigmoid<W>(z), silu = z * s;
  if constexpr (kPost) {
    T* y = a.y + r * a.dim + c;
    const V yv = vm::load_n<W, kFull>(y, count);
    // silu' = s + silu (1 - s)
    vm::store_n<W, kFull>(a.dz + r * a.dz_row + c, d * yv * (s + silu * (T(1) - s)), count);
    vm::store_n<W, kFull>(y, yv * silu, count);
  } else {
    vm::store_n<W, kFull>(a.dy + r * a.dim + c, d * silu, count);
  }
}

template <class W, bool kPost>
VM_INLINE void gate_body(const GateArgs<typename W::Scalar>& a, int64_t item) {
  const int64_t end = std::min(a.rows, (item + 1) * a.rows_per_item), full = a.dim / W::lanes * W::lanes;
  for (int64_t r = item * a.rows_per_item; r < end; ++r) {
    for (int64_t c = 0; c < full; c += W::lanes) gate_vector<W, kPost, true>(a, r, c, W::lanes);
    if (full < a.dim) gate_vector<W, kPost, false>(a, r, full, static_cast<int>(a.dim - full));
  }
}

template <class W>
VM_INLINE void gate_pre_body(const GateArgs<typename W::Scalar>& a, int64_t item) {
  gate_body<W, false>(a, item);
}

template <class W>
VM_INLINE void gate_post_body(const GateArgs<typename W::Scalar>& a, int64_t item) {
  gate_body<W, true>(a, item);
}

// ---- selective scan ------------------------------------------------------------------------------------------

// dt_bias + W_dt dt_low at step t: the Δ projection (rank FMAs per vector), before softplus.
template <class W, bool kFull>
VM_INLINE typename W::V delta_input(const ScanArgs<typename W::Scalar>& a, const typename W::Scalar* row_proj,
                                    typename W::V bias, int64_t c, int count) {
  typename W::V x = bias;
  for (int64_t r = 0; r < a.rank; ++r) x += vm::load_n<W, kFull>(a.W_dt_t + r * a.dim + c, count) * row_proj[r];
  return x;
}

template <class W, int kN, bool kFull>
VM_INLINE void scan_fwd_vector(const ScanArgs<typename W::Scalar>& a, int64_t b, int64_t c, int count) {
  using T = typename W::Scalar;
  using V = typename W::V;
  const int64_t N = kN > 0 ? kN : a.n_state, L = a.length, dim = a.dim;
  V A2[kN > 0 ? kN : kMaxState], h[kN > 0 ? kN : kMaxState];
  for (int64_t n = 0; n < N; ++n) {
    A2[n] = vm::load_n<W, kFull>(a.A2_t + n * dim + c, count);
    h[n] = V{};
  }
  const V bias = vm::load_n<W, kFull>(a.dt_bias + c, count);
  const V D = vm::load_n<W, kFull>(a.D + c, count);
  for (int64_t i = 0; i < L; ++i) {
    if (a.states && i % kChunk == 0) {
      T* s = a.states + (b * a.n_chunks + i / kChunk) * N * dim + c;
      for (int64_t n = 0; n < N; ++n) vm::store_n<W, kFull>(s + n * dim, h[n], count);
    }
    const int64_t t = time_of<T>(i, L, a.reverse), row = (b * L + t) * dim + c;
    const T* proj = a.proj + b * a.proj_batch + t * a.proj_row;
    const T* Bt = proj + a.rank;
    const T* Ct = Bt + N;
    const V delta = vm::softplus<W>(delta_input<W, kFull>(a, proj, bias, c, count));
    const V u = vm::load_n<W, kFull>(a.u + row, count);
    const V du = delta * u;
    V y = D * u;
    for (int64_t n = 0; n < N; ++n) {
      h[n] = vm::exp2_nonpositive<W>(delta * A2[n]) * h[n] + du * Bt[n];
      y += h[n] * Ct[n];
    }
    T* yp = a.y + row;
    if (a.accumulate) y += vm::load_n<W, kFull>(yp, count);
    if (a.gate) {
      const V z = vm::load_n<W, kFull>(a.gate + b * a.gate_batch + t * a.gate_row + c, count);
      y *= z * vm::sigmoid<W>(z);
    }
    vm::store_n<W, kFull>(yp, y, count);
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
constexpr int kBlock = 8;

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

// Chunk [i0, i1) of one channel vector (index v within the item): recompute the chunk's decays and states (and dC,
// and y), then the reverse sweep (dB and the per-channel gradients), each block of states in turn.
template <class W, int kN, bool kFull>
VM_INLINE void scan_bwd_chunk(const ScanArgs<typename W::Scalar>& a, ScanScratch<typename W::Scalar>& s,
                              int64_t b, int64_t c, int count, int64_t v, bool first, int64_t chunk, int64_t i0,
                              int64_t i1, typename W::Scalar* dB_part, typename W::Scalar* dC_part) {
  using T = typename W::Scalar;
  using V = typename W::V;
  constexpr int64_t lanes = W::lanes;
  const int64_t N = kN > 0 ? kN : a.n_state, L = a.length, dim = a.dim;
  const T* state = a.states + (b * a.n_chunks + chunk) * N * dim + c;
  const V bias = vm::load_n<W, kFull>(a.dt_bias + c, count);
  const V D = vm::load_n<W, kFull>(a.D + c, count);
  V terms[kBlock];
  // 0. Per step: delta and softplus' (the Δ projection once for all blocks).
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t li = i - i0;
    const T* proj = a.proj + b * a.proj_batch + time_of<T>(i, L, a.reverse) * a.proj_row;
    const V x = delta_input<W, kFull>(a, proj, bias, c, count);
    vm::store<W>(s.dlt.data() + li * lanes, vm::softplus<W>(x));
    vm::store<W>(s.sg.data() + li * lanes, vm::softplus_grad<W>(x));
  }
  // 1. Recompute the decays and states; y = C.h + D u into a.y (the gate's gradient needs it); dC = sum dy h.
  for (int64_t n0 = 0; n0 < N; n0 += kBlock) {
    const int nb = static_cast<int>(std::min<int64_t>(kBlock, N - n0));
    const bool last = n0 + kBlock >= N;
    V A2[kBlock], h[kBlock];
    for (int k = 0; k < nb; ++k) {
      A2[k] = vm::load_n<W, kFull>(a.A2_t + (n0 + k) * dim + c, count);
      h[k] = vm::load_n<W, kFull>(state + (n0 + k) * dim, count);
      vm::store<W>(s.h.data() + (n0 + k) * lanes, h[k]);
    }
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t li = i - i0, t = time_of<T>(i, L, a.reverse), row = (b * L + t) * dim + c;
      const T* Bt = a.proj + b * a.proj_batch + t * a.proj_row + a.rank;
      const T* Ct = Bt + N;
      const V delta = vm::load<W>(s.dlt.data() + li * lanes);
      const V u = vm::load_n<W, kFull>(a.u + row, count);
      const V dy = vm::load_n<W, kFull>(a.dy + row, count);
      const V du = delta * u;
      V y = n0 == 0 ? D * u : vm::load<W>(s.acc1.data() + li * lanes);
      for (int k = 0; k < nb; ++k) {
        const int64_t n = n0 + k;
        const V decay = vm::exp2_nonpositive<W>(delta * A2[k]);
        h[k] = decay * h[k] + du * Bt[n];
        vm::store<W>(s.a.data() + (li * N + n) * lanes, decay);
        vm::store<W>(s.h.data() + ((li + 1) * N + n) * lanes, h[k]);
        y += h[k] * Ct[n];
        terms[k] = dy * h[k];
      }
      add_block_sums<W>(terms, nb, n0, N, dC_part + t * N, first, s.pair.data() + li * lanes);
      if (!last) {
        vm::store<W>(s.acc1.data() + li * lanes, y);
      } else {
        T* yp = a.y + row;
        vm::store_n<W, kFull>(yp, a.accumulate ? vm::load_n<W, kFull>(yp, count) + y : y, count);
      }
    }
  }
  // 2. Reverse sweep. lam = dLoss/dh_i; carry = a_i lam_i enters step i-1.
  V dD = vm::load<W>(s.dD.data() + v * lanes), dbias = vm::load<W>(s.dbias.data() + v * lanes);
  for (int64_t n0 = 0; n0 < N; n0 += kBlock) {
    const int nb = static_cast<int>(std::min<int64_t>(kBlock, N - n0));
    const bool last = n0 + kBlock >= N;
    T* carry_mem = s.lam.data() + (v * N + n0) * lanes;
    T* dA_mem = s.dA.data() + (v * N + n0) * lanes;
    V A[kBlock], carry[kBlock], dA[kBlock];
    for (int k = 0; k < nb; ++k) {
      A[k] = vm::load_n<W, kFull>(a.A_t + (n0 + k) * dim + c, count);
      carry[k] = vm::load<W>(carry_mem + k * lanes);
      dA[k] = vm::load<W>(dA_mem + k * lanes);
    }
    for (int64_t i = i1 - 1; i >= i0; --i) {
      const int64_t li = i - i0, t = time_of<T>(i, L, a.reverse), row = (b * L + t) * dim + c;
      const T* Bt = a.proj + b * a.proj_batch + t * a.proj_row + a.rank;
      const T* Ct = Bt + N;
      const V delta = vm::load<W>(s.dlt.data() + li * lanes);
      const V u = vm::load_n<W, kFull>(a.u + row, count);
      const V dy = vm::load_n<W, kFull>(a.dy + row, count);
      const V du = delta * u;
      V g_delta = n0 == 0 ? V{} : vm::load<W>(s.acc1.data() + li * lanes);
      V lam_B = n0 == 0 ? V{} : vm::load<W>(s.acc2.data() + li * lanes);
      for (int k = 0; k < nb; ++k) {
        const int64_t n = n0 + k, at = (li * N + n) * lanes;
        const V lam = carry[k] + dy * Ct[n];
        const V decay = vm::load<W>(s.a.data() + at);
        const V g = lam * vm::load<W>(s.h.data() + at) * decay;  // dLoss/d(delta A): h_{i-1} is row li
        g_delta += g * A[k];
        dA[k] += g * delta;
        lam_B += lam * Bt[n];
        carry[k] = lam * decay;
        terms[k] = lam * du;
      }
      add_block_sums<W>(terms, nb, n0, N, dB_part + t * N, first, s.pair.data() + li * lanes);
      if (!last) {
        vm::store<W>(s.acc1.data() + li * lanes, g_delta);
        vm::store<W>(s.acc2.data() + li * lanes, lam_B);
        continue;
      }
      const V ddt = (g_delta + lam_B * u) * vm::load<W>(s.sg.data() + li * lanes);
      vm::store_n<W, kFull>(a.ddt + row, ddt, count);
      vm::store_n<W, kFull>(a.du + row, lam_B * delta + D * dy, count);
      dD += dy * u;
      dbias += ddt;
    }
    for (int k = 0; k < nb; ++k) {
      vm::store<W>(carry_mem + k * lanes, carry[k]);
      vm::store<W>(dA_mem + k * lanes, dA[k]);
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
