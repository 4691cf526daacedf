// Fused selective-scan recurrence for CPU, forward and backward.
//
// The part that touches the (batch, dim, L, N) state lives here, with the delta bias + softplus
// prologue (`delta_softplus`); the D skip and silu(z) gate run as vectorised ATen ops in
// models/ops/scan_autograd.py. Layout (prepared there): all tensors fp32 and contiguous;
//   u, dt, dy: (batch, dim, L)     A: (dim, N)     Bt, Ct: (batch, G, L, N), time-major.
// Forward:  h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t,  y_t = C_t . h_t.
//
// One task is one (batch, channel) row: it walks time sequentially with the N-state in vector
// registers, so no (batch, dim, L, N) tensor is ever allocated. Rows run in parallel with
// at::parallel_for (respects torch.set_num_threads). Its OpenMP body is inlined from ATen's headers,
// so the extension is compiled with -fopenmp (see selective_scan_cpu.py); without it the loop is serial.
// State loops use 8-lane vector types, so N must be a multiple of 8 (the caller pads with zeros);
// N = 8 and 16 (every VideoMamba layer) are compiled with constant trip counts so the state and
// its adjoint stay in registers. On x86-64 the row functions are cloned for x86-64-v4 (AVX-512, which
// gives these 8-lane loops 32 vector registers) and x86-64-v3 (AVX2+FMA), picked at load time from the
// CPU's features (never -march=native: one cached binary runs anywhere). The exp and softplus are
// those of vec_math.h.
//
// Backward: per row, recompute the forward into thread-local (L+1, N) buffers of states and
// decays, then run the reverse recursion lam_t = dy_t C_t + a_{t+1} lam_{t+1}. dB and dC sum
// over channels: each worker chunk writes its own partial copy, summed at the end (race-free).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/python.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "bindings.h"
#include "denormals.h"
#include "vec_math.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define SCAN_TARGET_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SCAN_TARGET_CLONES
#endif

namespace {

// Eight fp32 lanes (GCC/Clang vector extension): AVX-512VL / AVX on the x86-64-v4 / v3 clones, two SSE/NEON
// registers elsewhere. The state size N is padded to a multiple of 8 by the Python side.
using F8 = vm::Vec<float, 8>;
typedef F8::V vf8;
constexpr int64_t kLanes = 8;
constexpr int64_t kMaxVectors = 32;  // N <= 256, as mamba_ssm

inline vf8 splat(float c) { return vm::splat<F8>(c); }
inline vf8 load8(const float* p) { return vm::load<F8>(p); }
inline void store8(float* p, vf8 v) { vm::store<F8>(p, v); }
inline float hsum(vf8 v) {
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}
inline __attribute__((always_inline)) vf8 exp8(vf8 x) { return vm::exp<F8>(x); }
inline __attribute__((always_inline)) vf8 softplus8(vf8 x) { return vm::softplus<F8>(x); }

SCAN_TARGET_CLONES
void softplus_row(const float* x, float bias, int64_t L, float* out) {
  int64_t t = 0;
  for (; t + kLanes <= L; t += kLanes) store8(out + t, softplus8(load8(x + t) + bias));
  if (t < L) {  // tail: through an 8-lane buffer padded with zeros
    float buf[kLanes] = {0.0f};
    std::memcpy(buf, x + t, (L - t) * sizeof(float));
    store8(buf, softplus8(load8(buf) + bias));
    std::memcpy(out + t, buf, (L - t) * sizeof(float));
  }
}

// Pointers of one (batch, channel) row.
struct Row {
  const float* u;   // (L)
  const float* dt;  // (L)
  const float* A;   // (N)
  const float* B;   // (L, N)
  const float* C;   // (L, N)
};

// Forward recurrence of one row: writes y (L) and the final state (N). kV > 0 fixes the number
// of 8-lane vectors in the state at compile time (so it lives in registers); kV = 0 reads it
// from n_vec.
template <int64_t kV>
inline __attribute__((always_inline)) void row_forward_impl(const Row& r, int64_t L, int64_t n_vec, float* y,
                                                            float* last_state) {
  const int64_t V = kV > 0 ? kV : n_vec, N = V * kLanes;
  vf8 h[kV > 0 ? kV : kMaxVectors], A[kV > 0 ? kV : kMaxVectors];
  for (int64_t v = 0; v < V; ++v) {
    h[v] = splat(0.0f);
    A[v] = load8(r.A + v * kLanes);
  }
  for (int64_t t = 0; t < L; ++t) {
    const float dt = r.dt[t], dtu = dt * r.u[t];
    const float* Bs = r.B + t * N;
    const float* Cs = r.C + t * N;
    vf8 acc = splat(0.0f);
    for (int64_t v = 0; v < V; ++v) {
      h[v] = exp8(dt * A[v]) * h[v] + dtu * load8(Bs + v * kLanes);
      acc += h[v] * load8(Cs + v * kLanes);
    }
    y[t] = hsum(acc);
  }
  for (int64_t v = 0; v < V; ++v) store8(last_state + v * kLanes, h[v]);
}

// Backward of one row. hs, as: scratch of (L+1) * N floats. Writes du, ddt (L) and dA (N);
// accumulates into dB, dC (L, N).
template <int64_t kV>
inline __attribute__((always_inline)) void row_backward_impl(const Row& r, const float* dy, int64_t L,
                                                             int64_t n_vec, float* hs, float* as, float* du,
                                                             float* ddt, float* dA_out, float* dB, float* dC) {
  const int64_t V = kV > 0 ? kV : n_vec, N = V * kLanes;
  vf8 A[kV > 0 ? kV : kMaxVectors], lam[kV > 0 ? kV : kMaxVectors], dA[kV > 0 ? kV : kMaxVectors];
  for (int64_t v = 0; v < V; ++v) {
    A[v] = load8(r.A + v * kLanes);
    lam[v] = splat(0.0f);
    dA[v] = splat(0.0f);
  }
  // 1. Recompute: row 0 of hs is the zero initial state, row t+1 is h_t; row L of as is 0 so the
  //    reverse sweep needs no special case at t = L-1.
  std::fill(hs, hs + N, 0.0f);
  std::fill(as + L * N, as + (L + 1) * N, 0.0f);
  for (int64_t t = 0; t < L; ++t) {
    const float dt = r.dt[t], dtu = dt * r.u[t];
    for (int64_t v = 0; v < V; ++v) {
      const int64_t i = t * N + v * kLanes;
      const vf8 a = exp8(dt * A[v]);
      store8(as + i, a);
      store8(hs + i + N, a * load8(hs + i) + dtu * load8(r.B + i));
    }
  }
  // 2. Reverse sweep; lam = dLoss/dh_t.
  for (int64_t t = L - 1; t >= 0; --t) {
    const float dt = r.dt[t], u_t = r.u[t], dy_t = dy[t], dtu = dt * u_t;
    vf8 g_dt = splat(0.0f), lam_B = splat(0.0f);
    for (int64_t v = 0; v < V; ++v) {
      const int64_t i = t * N + v * kLanes;
      const vf8 a_t = load8(as + i), h_prev = load8(hs + i), h_t = load8(hs + i + N);
      lam[v] = lam[v] * load8(as + i + N) + dy_t * load8(r.C + i);
      store8(dC + i, load8(dC + i) + dy_t * h_t);
      const vf8 g_log_a = lam[v] * h_prev * a_t;  // dLoss/d(dt * A_n)
      g_dt += g_log_a * A[v];
      dA[v] += g_log_a * dt;
      store8(dB + i, load8(dB + i) + lam[v] * dtu);
      lam_B += lam[v] * load8(r.B + i);
    }
    const float lam_B_sum = hsum(lam_B);
    ddt[t] = hsum(g_dt) + lam_B_sum * u_t;
    du[t] = lam_B_sum * dt;
  }
  for (int64_t v = 0; v < V; ++v) store8(dA_out + v * kLanes, dA[v]);
}

SCAN_TARGET_CLONES
void row_forward(const Row& r, int64_t L, int64_t N, float* y, float* last_state) {
  switch (N / kLanes) {
    case 1: return row_forward_impl<1>(r, L, 1, y, last_state);
    case 2: return row_forward_impl<2>(r, L, 2, y, last_state);
    default: return row_forward_impl<0>(r, L, N / kLanes, y, last_state);
  }
}

SCAN_TARGET_CLONES
void row_backward(const Row& r, const float* dy, int64_t L, int64_t N, float* hs, float* as, float* du,
                  float* ddt, float* dA, float* dB, float* dC) {
  switch (N / kLanes) {
    case 1: return row_backward_impl<1>(r, dy, L, 1, hs, as, du, ddt, dA, dB, dC);
    case 2: return row_backward_impl<2>(r, dy, L, 2, hs, as, du, ddt, dA, dB, dC);
    default: return row_backward_impl<0>(r, dy, L, N / kLanes, hs, as, du, ddt, dA, dB, dC);
  }
}

struct Problem {
  int64_t batch, dim, length, n_state, groups;

  Problem(const at::Tensor& u, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& Bt,
          const at::Tensor& Ct)
      : batch(u.size(0)), dim(u.size(1)), length(u.size(2)), n_state(A.size(1)), groups(Bt.size(1)) {
    for (const at::Tensor* t : {&u, &dt, &A, &Bt, &Ct}) {
      TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->device().is_cpu(),
                  "selective_scan_cpu: inputs must be contiguous fp32 CPU tensors");
    }
    TORCH_CHECK(u.dim() == 3 && dt.sizes() == u.sizes(), "selective_scan_cpu: u, dt must be (batch, dim, L)");
    TORCH_CHECK(A.dim() == 2 && A.size(0) == dim, "selective_scan_cpu: A must be (dim, N)");
    TORCH_CHECK(Bt.dim() == 4 && Bt.size(0) == batch && Bt.size(2) == length && Bt.size(3) == n_state,
                "selective_scan_cpu: Bt must be (batch, G, L, N)");
    TORCH_CHECK(Ct.sizes() == Bt.sizes(), "selective_scan_cpu: Ct must have the shape of Bt");
    TORCH_CHECK(groups > 0 && dim % groups == 0, "selective_scan_cpu: groups must divide dim");
    TORCH_CHECK(n_state % kLanes == 0 && n_state <= kMaxVectors * kLanes,
                "selective_scan_cpu: N must be a multiple of 8 and <= 256 (the Python side pads it)");
  }

  // Offset of the (L, N) block of B/C read by row = b * dim + d.
  int64_t bc_offset(int64_t row) const {
    const int64_t b = row / dim, d = row % dim;
    return (b * groups + d / (dim / groups)) * length * n_state;
  }

  Row row(int64_t index, const at::Tensor& u, const at::Tensor& dt, const at::Tensor& A,
          const at::Tensor& Bt, const at::Tensor& Ct) const {
    const int64_t d = index % dim;
    return {u.data_ptr<float>() + index * length, dt.data_ptr<float>() + index * length,
            A.data_ptr<float>() + d * n_state, Bt.data_ptr<float>() + bc_offset(index),
            Ct.data_ptr<float>() + bc_offset(index)};
  }
};

// Returns y (batch, dim, L) and the last state (batch, dim, N).
std::vector<at::Tensor> scan_fwd(const at::Tensor& u, const at::Tensor& dt, const at::Tensor& A,
                                 const at::Tensor& Bt, const at::Tensor& Ct) {
  const Problem p(u, dt, A, Bt, Ct);
  at::Tensor y = at::empty_like(u);
  at::Tensor last_state = at::empty({p.batch, p.dim, p.n_state}, u.options());
  at::parallel_for(0, p.batch * p.dim, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals flush;
    for (int64_t i = begin; i < end; ++i) {
      row_forward(p.row(i, u, dt, A, Bt, Ct), p.length, p.n_state, y.data_ptr<float>() + i * p.length,
                  last_state.data_ptr<float>() + i * p.n_state);
    }
  });
  return {y, last_state};
}

// Returns [du, ddt, dA, dBt, dCt] for the recurrence part (y = C . h) given dy.
std::vector<at::Tensor> scan_bwd(const at::Tensor& u, const at::Tensor& dt, const at::Tensor& A,
                                 const at::Tensor& Bt, const at::Tensor& Ct, const at::Tensor& dy) {
  const Problem p(u, dt, A, Bt, Ct);
  TORCH_CHECK(dy.sizes() == u.sizes() && dy.is_contiguous() && dy.scalar_type() == at::kFloat,
              "selective_scan_cpu: dy must be contiguous fp32 of u's shape");
  const int64_t L = p.length, N = p.n_state, rows = p.batch * p.dim;
  at::Tensor du = at::empty_like(u), ddt = at::empty_like(u);
  at::Tensor dA_rows = at::empty({p.batch, p.dim, N}, u.options());  // one writer per row
  const int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  at::Tensor dB_parts = at::zeros({n_chunks, p.batch, p.groups, L, N}, u.options());
  at::Tensor dC_parts = at::zeros({n_chunks, p.batch, p.groups, L, N}, u.options());
  const int64_t part_size = p.batch * p.groups * L * N;

  at::parallel_for(0, n_chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    const FlushDenormals flush;
    std::vector<float> hs((L + 1) * N), as((L + 1) * N);
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      float* dB_part = dB_parts.data_ptr<float>() + chunk * part_size;
      float* dC_part = dC_parts.data_ptr<float>() + chunk * part_size;
      for (int64_t i = chunk * rows / n_chunks; i < (chunk + 1) * rows / n_chunks; ++i) {
        row_backward(p.row(i, u, dt, A, Bt, Ct), dy.data_ptr<float>() + i * L, L, N, hs.data(), as.data(),
                     du.data_ptr<float>() + i * L, ddt.data_ptr<float>() + i * L,
                     dA_rows.data_ptr<float>() + i * N, dB_part + p.bc_offset(i), dC_part + p.bc_offset(i));
      }
    }
  });
  return {du, ddt, dA_rows.sum(0), dB_parts.sum(0), dC_parts.sum(0)};
}

// dt = softplus(delta + bias[channel]) for contiguous fp32 delta (batch, dim, L) and bias (dim) or empty:
// the discretisation step of the scan in one vectorised pass (ATen's softplus is scalar log1p/exp).
at::Tensor delta_softplus(const at::Tensor& delta, const at::Tensor& bias) {
  TORCH_CHECK(delta.scalar_type() == at::kFloat && delta.is_contiguous() && delta.device().is_cpu() &&
                  delta.dim() == 3,
              "selective_scan_cpu: delta must be a contiguous fp32 CPU tensor (batch, dim, L)");
  const int64_t dim = delta.size(1), L = delta.size(2);
  const bool has_bias = bias.numel() > 0;
  const at::Tensor b = bias.contiguous();
  TORCH_CHECK(!has_bias || (b.scalar_type() == at::kFloat && b.dim() == 1 && b.size(0) == dim),
              "selective_scan_cpu: delta_bias must be fp32 (dim,) or empty");
  at::Tensor out = at::empty_like(delta);
  const float* in = delta.data_ptr<float>();
  const float* bp = has_bias ? b.data_ptr<float>() : nullptr;
  float* o = out.data_ptr<float>();
  at::parallel_for(0, delta.size(0) * dim, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals flush;
    for (int64_t i = begin; i < end; ++i) softplus_row(in + i * L, bp ? bp[i % dim] : 0.0f, L, o + i * L);
  });
  return out;
}

}  // namespace

void register_selective_scan(pybind11::module& m) {
  m.def("fwd", &scan_fwd, "selective-scan recurrence forward: (y, last_state)");
  m.def("bwd", &scan_bwd, "selective-scan recurrence backward: [du, ddt, dA, dBt, dCt]");
  m.def("delta_softplus", &delta_softplus, "softplus(delta + bias) in one vectorised pass");
}
