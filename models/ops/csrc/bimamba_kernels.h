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
  int64_t batch, length, dim, width, lanes;
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
  T* dw_t;          // backward: (width, dim)
  T* dbias;         // backward: (dim) or null
};

template <typename T>
struct ScanArgs {
  int64_t batch, length, dim, n_state, n_chunks, lanes, vectors_per_item;
  const T* u;   // (batch, L, dim)
  const T* dt;  // (batch, L, dim), before dt_bias and softplus
  const T* B;   // B[b, t, n] at b * bc_batch + t * bc_row + n; C likewise
  const T* C;
  int64_t bc_batch, bc_row;
  const T* A_t;      // (N, dim): A transposed (A <= 0)
  const T* A2_t;     // (N, dim): A log2(e), the exponent of the decays in base 2
  const T* D;        // (dim)
  const T* dt_bias;  // (dim)
  bool reverse;
  T* y;             // (batch, L, dim): y (+)= scan output
  bool accumulate;  // y += instead of y =
  T* states;        // (batch, n_chunks, N, dim): state entering each chunk (written by the forward)
  const T* dy;      // backward: gradient of y
  T* du;            // backward outputs, (batch, L, dim) ...
  T* ddt;
  T* dA_t;      // (batch, N, dim): per batch element, A transposed
  T* dD;        // (batch, dim)
  T* ddt_bias;  // (batch, dim)
  T* dB_parts;  // (batch, items per batch, L, N): each item's share of dB, summed by the caller
  T* dC_parts;
};

template <typename T>
inline int64_t time_of(int64_t i, int64_t length, bool reverse) {
  return reverse ? length - 1 - i : i;
}

// ---- causal conv ---------------------------------------------------------------------------------------------

template <class W, bool kFull>
VM_INLINE void conv_fwd_vector(const ConvArgs<typename W::Scalar>& a, int64_t c, int count) {
  using T = typename W::Scalar;
  using V = typename W::V;
  const int64_t K = a.width, L = a.length;
  V w[kMaxWidth];
  for (int64_t k = 0; k < K; ++k) w[k] = vm::load_n<W, kFull>(a.w_t + k * a.dim + c, count);
  const V bias = a.bias ? vm::load_n<W, kFull>(a.bias + c, count) : V{};
  for (int64_t b = 0; b < a.batch; ++b) {
    V window[kMaxWidth] = {};  // window[k] = x_{i-(K-1)+k}
    for (int64_t i = 0; i < L; ++i) {
      const int64_t t = time_of<T>(i, L, a.reverse);
      for (int64_t k = 0; k + 1 < K; ++k) window[k] = window[k + 1];
      window[K - 1] = vm::load_n<W, kFull>(a.x + b * a.x_batch + t * a.x_row + c, count);
      V acc = bias;
      for (int64_t k = 0; k < K; ++k) acc += w[k] * window[k];
      const int64_t row = (b * L + t) * a.dim + c;
      vm::store_n<W, kFull>(a.out + row, acc * vm::sigmoid<W>(acc), count);
    }
  }
}

// Gradients of out = silu(conv(x)): the pre-activation is recomputed from x. dx_s = sum_k w[k] g_{s+(K-1)-k}
// needs gradients up to K-1 steps ahead, so dx trails the loop by K-1 steps through a window of g.
template <class W, bool kFull>
VM_INLINE void conv_bwd_vector(const ConvArgs<typename W::Scalar>& a, int64_t c, int count) {
  using T = typename W::Scalar;
  using V = typename W::V;
  const int64_t K = a.width, L = a.length;
  V w[kMaxWidth], dw[kMaxWidth];
  for (int64_t k = 0; k < K; ++k) {
    w[k] = vm::load_n<W, kFull>(a.w_t + k * a.dim + c, count);
    dw[k] = V{};
  }
  const V bias = a.bias ? vm::load_n<W, kFull>(a.bias + c, count) : V{};
  V dbias{};
  for (int64_t b = 0; b < a.batch; ++b) {
    V window[kMaxWidth] = {}, grads[kMaxWidth] = {};  // grads[m] = g_{i-(K-1)+m}
    for (int64_t i = 0; i < L + K - 1; ++i) {
      V g{};
      if (i < L) {
        const int64_t t = time_of<T>(i, L, a.reverse);
        for (int64_t k = 0; k + 1 < K; ++k) window[k] = window[k + 1];
        window[K - 1] = vm::load_n<W, kFull>(a.x + b * a.x_batch + t * a.x_row + c, count);
        V pre = bias;
        for (int64_t k = 0; k < K; ++k) pre += w[k] * window[k];
        const V s = vm::sigmoid<W>(pre);
        g = vm::load_n<W, kFull>(a.dout + (b * L + t) * a.dim + c, count) * s * (T(1) + pre * (T(1) - s));
        for (int64_t k = 0; k < K; ++k) dw[k] += g * window[k];
        dbias += g;
      }
      for (int64_t k = 0; k + 1 < K; ++k) grads[k] = grads[k + 1];
      grads[K - 1] = g;
      const int64_t s_step = i - (K - 1);
      if (s_step >= 0) {
        V dx{};
        for (int64_t k = 0; k < K; ++k) dx += w[k] * grads[K - 1 - k];
        T* p = a.dx + b * a.dx_batch + time_of<T>(s_step, L, a.reverse) * a.dx_row + c;
        vm::store_n<W, kFull>(p, a.accumulate ? vm::load_n<W, kFull>(p, count) + dx : dx, count);
      }
    }
  }
  for (int64_t k = 0; k < K; ++k) vm::store_n<W, kFull>(a.dw_t + k * a.dim + c, dw[k], count);
  if (a.dbias) vm::store_n<W, kFull>(a.dbias + c, dbias, count);
}

// One item = one vector of channels, all batches (dw and dbias then need no reduction across items).
template <class W>
VM_INLINE void conv_fwd_body(const ConvArgs<typename W::Scalar>& a, int64_t item) {
  const int64_t c = item * W::lanes;
  const int count = static_cast<int>(std::min<int64_t>(W::lanes, a.dim - c));
  if (count == W::lanes) {
    conv_fwd_vector<W, true>(a, c, count);
  } else {
    conv_fwd_vector<W, false>(a, c, count);
  }
}

template <class W>
VM_INLINE void conv_bwd_body(const ConvArgs<typename W::Scalar>& a, int64_t item) {
  const int64_t c = item * W::lanes;
  const int count = static_cast<int>(std::min<int64_t>(W::lanes, a.dim - c));
  if (count == W::lanes) {
    conv_bwd_vector<W, true>(a, c, count);
  } else {
    conv_bwd_vector<W, false>(a, c, count);
  }
}

// ---- selective scan: forward ----------------------------------------------------------------------------------

template <class W, int kN, bool kFull>
VM_INLINE void scan_fwd_vector(const ScanArgs<typename W::Scalar>& a, int64_t b, int64_t c, int count) {
  using T = typename W::Scalar;
  using V = typename W::V;
  const int64_t N = kN > 0 ? kN : a.n_state, L = a.length, dim = a.dim;
  V A[kN > 0 ? kN : kMaxState], h[kN > 0 ? kN : kMaxState];  // A: in base 2
  for (int64_t n = 0; n < N; ++n) {
    A[n] = vm::load_n<W, kFull>(a.A2_t + n * dim + c, count);
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
    const V delta = vm::softplus<W>(vm::load_n<W, kFull>(a.dt + row, count) + bias);
    const V u = vm::load_n<W, kFull>(a.u + row, count);
    const V du = delta * u;
    const T* Bt = a.B + b * a.bc_batch + t * a.bc_row;
    const T* Ct = a.C + b * a.bc_batch + t * a.bc_row;
    V y = D * u;
    for (int64_t n = 0; n < N; ++n) {
      h[n] = vm::exp2_nonpositive<W>(delta * A[n]) * h[n] + du * Bt[n];
      y += h[n] * Ct[n];
    }
    T* yp = a.y + row;
    vm::store_n<W, kFull>(yp, a.accumulate ? vm::load_n<W, kFull>(yp, count) + y : y, count);
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

// ---- selective scan: backward ---------------------------------------------------------------------------------

// Per-item scratch; indices in units of scalars. "acc" buffers sum over the item's channel vectors.
template <typename T>
struct ScanScratch {
  std::vector<T> h;     // (kChunk + 1, N, lanes): state entering the chunk, then after each step
  std::vector<T> a;     // (kChunk, N, lanes): decays exp(delta A)
  std::vector<T> dlt;   // (kChunk, lanes): delta
  std::vector<T> dB;    // (kChunk, N, lanes)
  std::vector<T> dC;    // (kChunk, N, lanes)
  std::vector<T> lam;   // (vectors, N, lanes): a_{i+1} lam_{i+1} carried into the next (earlier) chunk
  std::vector<T> dA;    // (vectors, N, lanes)
  std::vector<T> dD;    // (vectors, lanes)
  std::vector<T> dbias; // (vectors, lanes)

  ScanScratch(int64_t N, int64_t lanes, int64_t vectors)
      : h((kChunk + 1) * N * lanes), a(kChunk * N * lanes), dlt(kChunk * lanes), dB(kChunk * N * lanes),
        dC(kChunk * N * lanes), lam(vectors * N * lanes), dA(vectors * N * lanes), dD(vectors * lanes),
        dbias(vectors * lanes) {}
};

// Chunk [i0, i1) of one channel vector (index v within the item): recompute, then the reverse sweep.
template <class W, int kN, bool kFull>
VM_INLINE void scan_bwd_chunk(const ScanArgs<typename W::Scalar>& a, ScanScratch<typename W::Scalar>& s,
                              int64_t b, int64_t c, int count, int64_t v, int64_t chunk, int64_t i0, int64_t i1) {
  using T = typename W::Scalar;
  using V = typename W::V;
  constexpr int64_t lanes = W::lanes;
  const int64_t N = kN > 0 ? kN : a.n_state, L = a.length, dim = a.dim;
  V A[kN > 0 ? kN : kMaxState], A2[kN > 0 ? kN : kMaxState], h[kN > 0 ? kN : kMaxState];
  const T* state = a.states + (b * a.n_chunks + chunk) * N * dim + c;
  for (int64_t n = 0; n < N; ++n) {
    A[n] = vm::load_n<W, kFull>(a.A_t + n * dim + c, count);
    A2[n] = vm::load_n<W, kFull>(a.A2_t + n * dim + c, count);
    h[n] = vm::load_n<W, kFull>(state + n * dim, count);
    vm::store<W>(s.h.data() + n * lanes, h[n]);
  }
  const V bias = vm::load_n<W, kFull>(a.dt_bias + c, count);
  const V D = vm::load_n<W, kFull>(a.D + c, count);
  // 1. Recompute the chunk's decays and states; add this direction's y into a.y (the gate's gradient needs it).
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t li = i - i0, t = time_of<T>(i, L, a.reverse), row = (b * L + t) * dim + c;
    const V delta = vm::softplus<W>(vm::load_n<W, kFull>(a.dt + row, count) + bias);
    vm::store<W>(s.dlt.data() + li * lanes, delta);
    const V u = vm::load_n<W, kFull>(a.u + row, count);
    const V du = delta * u;
    const T* Bt = a.B + b * a.bc_batch + t * a.bc_row;
    const T* Ct = a.C + b * a.bc_batch + t * a.bc_row;
    V y = D * u;
    for (int64_t n = 0; n < N; ++n) {
      const V decay = vm::exp2_nonpositive<W>(delta * A2[n]);
      h[n] = decay * h[n] + du * Bt[n];
      vm::store<W>(s.a.data() + (li * N + n) * lanes, decay);
      vm::store<W>(s.h.data() + ((li + 1) * N + n) * lanes, h[n]);
      y += h[n] * Ct[n];
    }
    T* yp = a.y + row;
    vm::store_n<W, kFull>(yp, a.accumulate ? vm::load_n<W, kFull>(yp, count) + y : y, count);
  }
  // 2. Reverse sweep. lam = dLoss/dh_i; carry = a_i lam_i enters step i-1.
  V carry[kN > 0 ? kN : kMaxState], dA[kN > 0 ? kN : kMaxState];
  T* carry_mem = s.lam.data() + v * N * lanes;
  T* dA_mem = s.dA.data() + v * N * lanes;
  for (int64_t n = 0; n < N; ++n) {
    carry[n] = vm::load<W>(carry_mem + n * lanes);
    dA[n] = vm::load<W>(dA_mem + n * lanes);
  }
  V dD = vm::load<W>(s.dD.data() + v * lanes), dbias = vm::load<W>(s.dbias.data() + v * lanes);
  for (int64_t i = i1 - 1; i >= i0; --i) {
    const int64_t li = i - i0, t = time_of<T>(i, L, a.reverse), row = (b * L + t) * dim + c;
    const V delta = vm::load<W>(s.dlt.data() + li * lanes);
    const V u = vm::load_n<W, kFull>(a.u + row, count);
    const V dy = vm::load_n<W, kFull>(a.dy + row, count);
    const V du = delta * u;
    const T* Bt = a.B + b * a.bc_batch + t * a.bc_row;
    const T* Ct = a.C + b * a.bc_batch + t * a.bc_row;
    V g_delta{}, lam_B{};
    for (int64_t n = 0; n < N; ++n) {
      const int64_t k = (li * N + n) * lanes;
      const V lam = carry[n] + dy * Ct[n];
      const V decay = vm::load<W>(s.a.data() + k);
      const V g = lam * vm::load<W>(s.h.data() + k) * decay;  // dLoss/d(delta A): h_{i-1} is row li
      vm::store<W>(s.dC.data() + k, vm::load<W>(s.dC.data() + k) + dy * vm::load<W>(s.h.data() + k + N * lanes));
      vm::store<W>(s.dB.data() + k, vm::load<W>(s.dB.data() + k) + lam * du);
      g_delta += g * A[n];
      dA[n] += g * delta;
      lam_B += lam * Bt[n];
      carry[n] = lam * decay;
    }
    const V x = vm::load_n<W, kFull>(a.dt + row, count) + bias;
    const V ddt = (g_delta + lam_B * u) * vm::softplus_grad<W>(x);
    vm::store_n<W, kFull>(a.ddt + row, ddt, count);
    vm::store_n<W, kFull>(a.du + row, lam_B * delta + D * dy, count);
    dD += dy * u;
    dbias += ddt;
  }
  for (int64_t n = 0; n < N; ++n) {
    vm::store<W>(carry_mem + n * lanes, carry[n]);
    vm::store<W>(dA_mem + n * lanes, dA[n]);
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
    std::fill(s.dB.begin(), s.dB.end(), T(0));
    std::fill(s.dC.begin(), s.dC.end(), T(0));
    for (int64_t v = v0; v < v1; ++v) {
      const int64_t c = v * lanes;
      const int count = static_cast<int>(std::min<int64_t>(lanes, dim - c));
      if (count == lanes) {
        scan_bwd_chunk<W, kN, true>(a, s, b, c, count, v - v0, chunk, i0, i1);
      } else {
        scan_bwd_chunk<W, kN, false>(a, s, b, c, count, v - v0, chunk, i0, i1);
      }
    }
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = time_of<T>(i, L, a.reverse);
      for (int64_t n = 0; n < N; ++n) {
        const int64_t k = ((i - i0) * N + n) * lanes;
        dB_part[t * N + n] = vm::hsum<W>(vm::load<W>(s.dB.data() + k));
        dC_part[t * N + n] = vm::hsum<W>(vm::load<W>(s.dC.data() + k));
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
