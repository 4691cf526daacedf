// Elementwise and convolution kernels of the fused bidirectional Mamba inner path on CPU (driven by
// models/ops/bimamba_cpu.py through bimamba_cpu.cpp): the causal depthwise conv + SiLU on channels-last rows, either
// time direction, and the two passes of the silu(z) gate's backward. Index i counts steps in scan order; time
// t = i, or L - 1 - i when `reverse`. Conv: pre_i = bias + sum_k w[k] x_{i-(W-1)+k} (zero before the start),
// out_i = silu(pre_i).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "isa.h"
#include "vec_math.h"

namespace bimamba {

constexpr int64_t kMaxWidth = 8;  // conv taps

// Where the rows of a (batch, L, channels) operand with unit channel stride are: row t of batch element b starts at
// p + b * batch + (t - t0) * row. t0 > 0 lets a buffer hold only the rows of one chunk of the sequence.
template <typename T>
struct Rows {
  T* p;
  int64_t batch, row, t0;
  VM_INLINE T* at(int64_t b, int64_t t) const { return p + b * batch + (t - t0) * row; }
};

template <typename T>
struct ConvArgs {
  int64_t batch, length, dim, width, lanes, rows_per_item;
  int64_t i_begin, i_end;  // the steps (scan order) this call computes; items are blocks of rows_per_item of them
  Rows<const T> x;
  const T* w_t;   // (width, dim): the weight transposed
  const T* bias;  // (dim) or null
  bool reverse;
  Rows<T> out;           // forward: silu(pre)
  Rows<const T> dout;    // backward: gradient of out
  Rows<T> dx;
  bool accumulate;  // backward: dx += instead of dx =
  T* dw_parts;      // backward: (items, width, dim), each item's share of dweight (transposed)
  T* dbias_parts;   // backward: (items, dim)
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
  return a.x.at(b, time_of<T>(i, a.length, a.reverse));
}

// Batch element, first and one-past-last step of a work item.
template <typename T>
inline void conv_item_steps(const ConvArgs<T>& a, int64_t item, int64_t& b, int64_t& i0, int64_t& i1) {
  const int64_t blocks = (a.i_end - a.i_begin + a.rows_per_item - 1) / a.rows_per_item;
  b = item / blocks;
  i0 = a.i_begin + (item % blocks) * a.rows_per_item;
  i1 = std::min(a.i_end, i0 + a.rows_per_item);
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
  T* out = a.out.at(b, time_of<T>(i, a.length, a.reverse)) + c;
  vm::store_n<W, kFull>(out, pre * vm::sigmoid<W>(pre), count);
}

template <class W>
VM_INLINE void conv_fwd_body(const ConvArgs<typename W::Scalar>& a, int64_t item) {
  int64_t b, i0, i1;
  conv_item_steps(a, item, b, i0, i1);
  const int64_t full = a.dim / W::lanes * W::lanes;
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
    const V dout = vm::load_n<W, kFull>(a.dout.at(b, time_of<T>(i, L, a.reverse)) + c, count);
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
    T* p = a.dx.at(b, time_of<T>(s, L, a.reverse)) + c;
    vm::store_n<W, kFull>(p, a.accumulate ? vm::load_n<W, kFull>(p, count) + dx : dx, count);
  }
  for (int64_t k = 0; k < K; ++k) vm::store_n<W, kFull>(a.dw_parts + (item * K + k) * a.dim + c, dw[k], count);
  vm::store_n<W, kFull>(a.dbias_parts + item * a.dim + c, dbias, count);
}

template <class W>
VM_INLINE void conv_bwd_body(const ConvArgs<typename W::Scalar>& a, int64_t item) {
  int64_t b, i0, i1;
  conv_item_steps(a, item, b, i0, i1);
  const int64_t full = a.dim / W::lanes * W::lanes;
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

}  // namespace bimamba
