// Python-facing drivers of the fused bidirectional Mamba kernels (bimamba_conv.h, bimamba_scan.h): argument checks,
// output allocation, and the work split over torch's OpenMP threads.
//
// Work is handed out item by item from an atomic counter inside one parallel region per call, so a thread
// slowed down by another process on its core simply takes fewer items; calls too small to pay for waking
// the threads run serially (kMinWorkPerThread).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/python.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <utility>
#include <vector>

#include "bimamba_conv.h"
#include "bimamba_scan.h"
#include "bindings.h"
#include "denormals.h"

namespace bimamba {
namespace {

// A register-only loop of independent multiply-adds on the widest vectors of the active instruction set: what one
// core can do at most (FMA width x FMA units x clock), for the benchmark's peak figure.
template <typename T>
struct PeakArgs {
  int64_t iterations;
  T* sink;
};

constexpr int kPeakChains = 12;  // independent accumulators: enough to cover the FMA latency on two units

template <class W>
VM_INLINE void fma_peak_body(const PeakArgs<typename W::Scalar>& a, int64_t) {
  using T = typename W::Scalar;
  using V = typename W::V;
  V acc[kPeakChains];
  for (int k = 0; k < kPeakChains; ++k) acc[k] = vm::splat<W>(T(k) * T(1e-3));
  const V scale = vm::splat<W>(T(0.999999)), shift = vm::splat<W>(T(1e-6));
  for (int64_t i = 0; i < a.iterations; ++i) {
    for (int k = 0; k < kPeakChains; ++k) acc[k] = acc[k] * scale + shift;
  }
  V sum{};
  for (int k = 0; k < kPeakChains; ++k) sum += acc[k];
  *a.sink = vm::hsum<W>(sum);
}

ISA_DISPATCH(fma_peak, PeakArgs)
ISA_DISPATCH(gate_pre, GateArgs)
ISA_DISPATCH(gate_post, GateArgs)
ISA_DISPATCH(conv_fwd, ConvArgs)
ISA_DISPATCH(conv_bwd, ConvArgs)
ISA_DISPATCH(scan_fwd, ScanArgs)
ISA_DISPATCH(scan_bwd, ScanArgs)

// Vector-lane operations below which a call stays on the calling thread (about 20 us of work).
constexpr int64_t kMinWorkPerThread = 1 << 16;

template <class F>
void run_items(int64_t n_items, int64_t work_per_item, const F& body) {
  if (n_items <= 0) return;
  const int64_t by_work = std::max<int64_t>(1, n_items * work_per_item / kMinWorkPerThread);
  const int64_t workers = std::min<int64_t>({static_cast<int64_t>(at::get_num_threads()), n_items, by_work});
  if (workers <= 1) {
    const FlushDenormals flush;
    for (int64_t i = 0; i < n_items; ++i) body(i);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    const FlushDenormals flush;
    for (int64_t i = next.fetch_add(1); i < n_items; i = next.fetch_add(1)) body(i);
  });
}

void check_rows(const at::Tensor& t, const char* name, const at::Tensor& like, bool contiguous) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == like.scalar_type(), "bimamba_cpu: ", name,
              " must be a CPU tensor of dtype ", like.scalar_type(), ", got ", t.scalar_type(), " on ", t.device());
  TORCH_CHECK(t.dim() == 3 && t.size(0) == like.size(0) && t.size(1) == like.size(1) && t.stride(2) == 1,
              "bimamba_cpu: ", name, " must be (batch=", like.size(0), ", L=", like.size(1),
              ", channels) with unit channel stride, got sizes ", t.sizes(), " strides ", t.strides());
  TORCH_CHECK(!contiguous || t.is_contiguous(), "bimamba_cpu: ", name, " must be contiguous");
}

void check_vector(const at::Tensor& t, const char* name, const at::Tensor& like, int64_t size) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == like.scalar_type() && t.dim() == 1 && t.size(0) == size,
              "bimamba_cpu: ", name, " must be a (", size, ",) CPU tensor of dtype ", like.scalar_type(), ", got ",
              t.sizes(), " ", t.scalar_type());
}

int64_t vector_count(int64_t dim, int64_t lanes) { return (dim + lanes - 1) / lanes; }

constexpr int64_t kConvRows = 64;  // steps per conv work item

// The rows of a (batch, L, channels) tensor with unit channel stride, its row 0 being step t0 of the sequence.
template <typename T, typename P>
Rows<P> rows_of(const at::Tensor& t, int64_t t0 = 0) {
  return Rows<P>{static_cast<P*>(t.data_ptr<T>()), t.stride(0), t.stride(1), t0};
}

template <typename T>
ConvArgs<T> conv_args(const at::Tensor& x, const at::Tensor& w_t, const c10::optional<at::Tensor>& bias,
                      bool reverse) {
  ConvArgs<T> a{};
  a.batch = x.size(0);
  a.length = x.size(1);
  a.dim = x.size(2);
  a.width = w_t.size(0);
  a.lanes = isa_lanes<T>();
  a.rows_per_item = kConvRows;
  a.i_begin = 0;
  a.i_end = a.length;
  a.x = rows_of<T, const T>(x);
  a.w_t = w_t.data_ptr<T>();
  a.bias = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  a.reverse = reverse;
  return a;
}

template <typename T>
int64_t conv_items(const ConvArgs<T>& a) {
  return a.batch * ((a.i_end - a.i_begin + kConvRows - 1) / kConvRows);
}

at::Tensor transposed_weight(const at::Tensor& x, const at::Tensor& weight,
                             const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == x.size(2) && weight.size(1) >= 1 &&
                  weight.size(1) <= kMaxWidth && weight.scalar_type() == x.scalar_type(),
              "bimamba_cpu: conv weight must be (channels=", x.size(2), ", width <= ", kMaxWidth, ") of dtype ",
              x.scalar_type(), ", got ", weight.sizes(), " ", weight.scalar_type());
  if (bias.has_value()) check_vector(*bias, "conv bias", x, x.size(2));
  return weight.t().contiguous();
}

// The steps (scan order) a call computes, [i_begin, i_end) of a sequence of `length`: a window of it when the caller
// gives `steps` (its chunk-sized operands then hold the rows of those steps only, the earliest time first), else
// the whole sequence.
struct Window {
  int64_t i_begin, i_end, length;
  int64_t rows() const { return i_end - i_begin; }
  int64_t t0(bool reverse) const { return reverse ? length - i_end : i_begin; }  // time of a chunk's row 0
};

Window window_of(const c10::optional<std::pair<int64_t, int64_t>>& steps, int64_t length) {
  if (!steps.has_value()) return {0, length, length};
  TORCH_CHECK(0 <= steps->first && steps->first < steps->second && steps->second <= length,
              "bimamba_cpu: steps must be 0 <= begin < end <= L=", length, ", got (", steps->first, ", ",
              steps->second, ")");
  return {steps->first, steps->second, length};
}

// Rows (batch, window rows, channels) with unit channel stride and `like`'s batch and dtype.
void check_window_rows(const at::Tensor& t, const char* name, const at::Tensor& like, const Window& w,
                       bool contiguous) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == like.scalar_type() && t.dim() == 3 &&
                  t.size(0) == like.size(0) && t.size(1) == w.rows() && t.stride(2) == 1 &&
                  (!contiguous || t.is_contiguous()),
              "bimamba_cpu: ", name, " must be (batch=", like.size(0), ", ", w.rows(), ", channels) of dtype ",
              like.scalar_type(), contiguous ? ", contiguous" : " with unit channel stride", ", got sizes ",
              t.sizes(), " strides ", t.strides(), " ", t.scalar_type());
}

// x (batch, L, dim) with unit channel stride -> silu(conv(x)) (batch, L, dim), into `out` when given. With `steps`
// (begin, end), only those steps (scan order), into `out` of (batch, end - begin, dim); the conv reads the rows of
// x before them too.
at::Tensor conv_forward(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                        bool reverse, const c10::optional<at::Tensor>& out_,
                        const c10::optional<std::pair<int64_t, int64_t>>& steps) {
  check_rows(x, "x", x, false);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "bimamba_cpu: fp32 or fp64 only");
  const Window w = window_of(steps, x.size(1));
  const at::Tensor w_t = transposed_weight(x, weight, bias);
  at::Tensor out = out_.has_value() ? *out_ : at::empty({x.size(0), w.rows(), x.size(2)}, x.options());
  check_window_rows(out, "out", x, w, true);
  TORCH_CHECK(out.size(2) == x.size(2), "bimamba_cpu: out must have x's channels");
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bimamba_conv_forward", [&] {
    ConvArgs<scalar_t> a = conv_args<scalar_t>(x, w_t, bias, reverse);
    a.i_begin = w.i_begin;
    a.i_end = w.i_end;
    a.out = rows_of<scalar_t, scalar_t>(out, w.t0(reverse));
    run_items(conv_items(a), kConvRows * a.dim * a.width, [&](int64_t item) { conv_fwd(a, item); });
  });
  return out;
}

// Gradients of silu(conv(x)) given dout (batch, L, dim): writes (or adds, `accumulate`) dx into the
// (batch, L, dim) view `dx`; returns [dweight (dim, width), dbias (dim,) or None].
std::vector<at::Tensor> conv_backward(const at::Tensor& x, const at::Tensor& weight,
                                      const c10::optional<at::Tensor>& bias, const at::Tensor& dout,
                                      at::Tensor dx, bool accumulate, bool reverse) {
  check_rows(x, "x", x, false);
  check_rows(dout, "dout", x, true);
  check_rows(dx, "dx", x, false);
  TORCH_CHECK(dout.size(2) == x.size(2) && dx.size(2) == x.size(2), "bimamba_cpu: dout, dx must match x");
  const at::Tensor w_t = transposed_weight(x, weight, bias);
  const int64_t items = x.size(0) * ((x.size(1) + kConvRows - 1) / kConvRows);
  at::Tensor dw_parts = at::empty({items, w_t.size(0), x.size(2)}, x.options());
  at::Tensor dbias_parts = at::empty({items, x.size(2)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bimamba_conv_backward", [&] {
    ConvArgs<scalar_t> a = conv_args<scalar_t>(x, w_t, bias, reverse);
    a.dout = rows_of<scalar_t, const scalar_t>(dout);
    a.dx = rows_of<scalar_t, scalar_t>(dx);
    a.accumulate = accumulate;
    a.dw_parts = dw_parts.data_ptr<scalar_t>();
    a.dbias_parts = dbias_parts.data_ptr<scalar_t>();
    run_items(items, 3 * kConvRows * a.dim * a.width, [&](int64_t item) { conv_bwd(a, item); });
  });
  return {dw_parts.sum(0).t().contiguous(), bias.has_value() ? dbias_parts.sum(0) : at::Tensor()};
}

constexpr int64_t kGateRows = 64;  // rows per gate work item

// Rows of a (batch, L, dim) view with unit channel stride that are evenly spaced (a half of a (batch, L, 2 dim)
// tensor, or a contiguous one): row b * L + t at b * L * row + t * row.
int64_t row_stride(const at::Tensor& t, const at::Tensor& like, const char* name) {
  check_rows(t, name, like, false);
  TORCH_CHECK(t.size(2) == like.size(2) && t.stride(0) == t.size(1) * t.stride(1), "bimamba_cpu: ", name,
              " must be (batch, L, ", like.size(2), ") rows spaced evenly, got sizes ", t.sizes(), " strides ",
              t.strides());
  return t.stride(1);
}

template <typename T>
GateArgs<T> gate_args(const at::Tensor& z, const at::Tensor& d_gated) {
  TORCH_CHECK(z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble, "bimamba_cpu: fp32 or fp64 only");
  check_rows(d_gated, "d_gated", z, true);
  TORCH_CHECK(d_gated.sizes() == z.sizes(), "bimamba_cpu: d_gated must have z's shape");
  GateArgs<T> a{};
  a.rows = z.size(0) * z.size(1);
  a.dim = z.size(2);
  a.rows_per_item = kGateRows;
  a.z = z.data_ptr<T>();
  a.z_row = row_stride(z, z, "z");
  a.d_gated = d_gated.data_ptr<T>();
  return a;
}

// dy = d_gated silu(z): z (batch, L, dim) evenly spaced rows, d_gated and dy contiguous.
at::Tensor gate_grad_y(const at::Tensor& z, const at::Tensor& d_gated) {
  at::Tensor dy = at::empty(z.sizes(), z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "bimamba_gate_grad_y", [&] {
    GateArgs<scalar_t> a = gate_args<scalar_t>(z, d_gated);
    a.dy = dy.data_ptr<scalar_t>();
    run_items((a.rows + kGateRows - 1) / kGateRows, kGateRows * a.dim, [&](int64_t item) { gate_pre(a, item); });
  });
  return dy;
}

// dz = d_gated y silu'(z) into the view dz (evenly spaced rows), and y <- y silu(z) in place (contiguous).
void gate_grad_z(const at::Tensor& z, const at::Tensor& d_gated, at::Tensor y, at::Tensor dz) {
  check_rows(y, "y", z, true);
  TORCH_CHECK(y.sizes() == z.sizes(), "bimamba_cpu: y must have z's shape");
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "bimamba_gate_grad_z", [&] {
    GateArgs<scalar_t> a = gate_args<scalar_t>(z, d_gated);
    a.y = y.data_ptr<scalar_t>();
    a.dz = dz.data_ptr<scalar_t>();
    a.dz_row = row_stride(dz, z, "dz");
    run_items((a.rows + kGateRows - 1) / kGateRows, kGateRows * a.dim, [&](int64_t item) { gate_post(a, item); });
  });
}

struct ScanInputs {
  at::Tensor A_t, A2_t, W_dt_t;
};

// Checks y (batch, L, dim) contiguous; u (batch, rows, dim) contiguous and proj (batch, rows, rank + 2N) rows
// [dt_low | B | C] with unit stride, the rows of the window's steps; W_dt (dim, rank); dt_bias, D (dim,); A (dim, N)
// <= 0. Returns the transposed A, A log2(e) and W_dt.
ScanInputs check_scan(const at::Tensor& u, const at::Tensor& proj, const at::Tensor& W_dt,
                      const at::Tensor& dt_bias, const at::Tensor& A, const at::Tensor& D, const at::Tensor& y,
                      const Window& w) {
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble, "bimamba_cpu: fp32 or fp64 only");
  check_rows(y, "y", y, true);
  check_window_rows(u, "u", y, w, true);
  check_window_rows(proj, "x_proj output", y, w, false);
  const int64_t dim = u.size(2);
  TORCH_CHECK(y.size(2) == dim, "bimamba_cpu: u and y must have the same channels");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == dim && A.size(1) >= 1 && A.size(1) <= kMaxState &&
                  A.scalar_type() == u.scalar_type(),
              "bimamba_cpu: A must be (channels=", dim, ", N <= ", kMaxState, ") of u's dtype, got ", A.sizes());
  TORCH_CHECK(W_dt.dim() == 2 && W_dt.size(0) == dim && W_dt.scalar_type() == u.scalar_type(),
              "bimamba_cpu: dt_proj weight must be (channels=", dim, ", rank) of u's dtype, got ", W_dt.sizes());
  TORCH_CHECK(proj.size(2) == W_dt.size(1) + 2 * A.size(1), "bimamba_cpu: x_proj output must have rank + 2N = ",
              W_dt.size(1) + 2 * A.size(1), " columns, got ", proj.size(2));
  check_vector(D, "D", u, dim);
  check_vector(dt_bias, "dt_bias", u, dim);
  TORCH_CHECK(A.max().item<double>() <= 0.0, "bimamba_cpu: A must be <= 0 (A = -exp(A_log))");
  const at::Tensor A_t = A.t().contiguous();
  return {A_t, A_t * M_LOG2E, W_dt.t().contiguous()};
}

template <typename T>
ScanArgs<T> scan_args(const at::Tensor& u, const at::Tensor& proj, const ScanInputs& in, const at::Tensor& dt_bias,
                      const at::Tensor& D, at::Tensor& y, bool accumulate, bool reverse, const Window& w) {
  ScanArgs<T> a{};
  a.batch = y.size(0);
  a.length = y.size(1);
  a.dim = y.size(2);
  a.n_state = in.A_t.size(0);
  a.rank = in.W_dt_t.size(0);
  a.n_chunks = (a.length + kChunk - 1) / kChunk;
  a.lanes = isa_lanes<T>();
  a.i_begin = w.i_begin;
  a.i_end = w.i_end;
  a.u = rows_of<T, const T>(u, w.t0(reverse));
  a.proj = rows_of<T, const T>(proj, w.t0(reverse));
  a.W_dt_t = in.W_dt_t.data_ptr<T>();
  a.dt_bias = dt_bias.data_ptr<T>();
  a.A_t = in.A_t.data_ptr<T>();
  a.A2_t = in.A2_t.data_ptr<T>();
  a.D = D.data_ptr<T>();
  a.reverse = reverse;
  a.y = rows_of<T, T>(y);
  a.accumulate = accumulate;
  return a;
}

void check_state(const c10::optional<at::Tensor>& h, const char* name, const at::Tensor& y, int64_t N) {
  if (!h.has_value()) return;
  TORCH_CHECK(h->scalar_type() == y.scalar_type() && h->is_contiguous() &&
                  h->sizes() == at::IntArrayRef({y.size(0), N, y.size(2)}),
              "bimamba_cpu: ", name, " must be a contiguous (batch, N, channels) tensor of y's dtype");
}

// Scan of one direction: y (+)= scan(u, ...), then y *= silu(gate) when a gate row view is given; Δ =
// softplus(W_dt dt_low + dt_bias) is formed inside. y is (batch, L, dim); with `steps` (begin, end) only those steps
// (scan order) run, u, proj and gate holding their rows (earliest time first), from the state h_in (batch, N, dim)
// (zero without), leaving the state after the last step in h_out. Returns the (batch, n_chunks, N, dim) states
// entering each chunk when `save_states` (whole sequences only), else None.
c10::optional<at::Tensor> scan_forward(const at::Tensor& u, const at::Tensor& proj, const at::Tensor& W_dt,
                                       const at::Tensor& dt_bias, const at::Tensor& A, const at::Tensor& D,
                                       at::Tensor y, bool accumulate, bool reverse, bool save_states,
                                       const c10::optional<at::Tensor>& gate,
                                       const c10::optional<std::pair<int64_t, int64_t>>& steps,
                                       const c10::optional<at::Tensor>& h_in, c10::optional<at::Tensor> h_out) {
  const Window w = window_of(steps, y.size(1));
  const ScanInputs in = check_scan(u, proj, W_dt, dt_bias, A, D, y, w);
  if (gate.has_value()) {
    check_window_rows(*gate, "gate", y, w, false);
    TORCH_CHECK(gate->size(2) == u.size(2), "bimamba_cpu: the gate must have u's shape");
  }
  TORCH_CHECK(!save_states || !steps.has_value(), "bimamba_cpu: states are saved for whole sequences only");
  check_state(h_in, "h_in", y, A.size(1));
  check_state(h_out, "h_out", y, A.size(1));
  const int64_t n_chunks = (y.size(1) + kChunk - 1) / kChunk;
  at::Tensor states = save_states ? at::empty({y.size(0), n_chunks, A.size(1), y.size(2)}, y.options())
                                  : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "bimamba_scan_forward", [&] {
    ScanArgs<scalar_t> a = scan_args<scalar_t>(u, proj, in, dt_bias, D, y, accumulate, reverse, w);
    a.states = save_states ? states.data_ptr<scalar_t>() : nullptr;
    if (gate.has_value()) a.gate = rows_of<scalar_t, const scalar_t>(*gate, w.t0(reverse));
    a.h_in = h_in.has_value() ? h_in->data_ptr<scalar_t>() : nullptr;
    a.h_out = h_out.has_value() ? h_out->data_ptr<scalar_t>() : nullptr;
    run_items(a.batch * vector_count(a.dim, a.lanes), w.rows() * a.lanes * (a.n_state + a.rank),
              [&](int64_t item) { scan_fwd(a, item); });
  });
  if (!save_states) return c10::nullopt;
  return states;
}

// Backward of one direction given dy, from the saved states; also recomputes y (+)= this direction's output.
// Returns [du, ddt (gradient of W_dt dt_low, before bias and softplus), dA (dim, N), dD, ddt_bias,
// dB, dC (batch, L, N)].
std::vector<at::Tensor> scan_backward(const at::Tensor& u, const at::Tensor& proj, const at::Tensor& W_dt,
                                      const at::Tensor& dt_bias, const at::Tensor& A, const at::Tensor& D,
                                      const at::Tensor& states, const at::Tensor& dy, at::Tensor y, bool accumulate,
                                      bool reverse) {
  const Window whole{0, y.size(1), y.size(1)};
  const ScanInputs in = check_scan(u, proj, W_dt, dt_bias, A, D, y, whole);
  check_rows(dy, "dy", u, true);
  const int64_t batch = u.size(0), length = u.size(1), dim = u.size(2), N = A.size(1);
  const int64_t n_chunks = (length + kChunk - 1) / kChunk;
  TORCH_CHECK(dy.size(2) == dim, "bimamba_cpu: dy must have u's shape");
  TORCH_CHECK(states.scalar_type() == u.scalar_type() && states.is_contiguous() &&
                  states.sizes() == at::IntArrayRef({batch, n_chunks, N, dim}),
              "bimamba_cpu: states must be the (batch, n_chunks, N, dim) tensor saved by the forward");
  at::Tensor du = at::empty(u.sizes(), u.options()), ddt = at::empty(u.sizes(), u.options());
  at::Tensor dA_parts = at::empty({batch, N, dim}, u.options());
  at::Tensor dD_parts = at::empty({batch, dim}, u.options()), dbias_parts = at::empty({batch, dim}, u.options());
  at::Tensor dB_parts, dC_parts;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "bimamba_scan_backward", [&] {
    ScanArgs<scalar_t> a = scan_args<scalar_t>(u, proj, in, dt_bias, D, y, accumulate, reverse, whole);
    // About four items per thread in all: enough to balance, few enough that the per-item copies of dB and dC
    // stay small.
    const int64_t vectors = vector_count(dim, a.lanes);
    const int64_t wanted = std::min(vectors, std::max<int64_t>(1, (4 * at::get_num_threads() + batch - 1) / batch));
    a.vectors_per_item = (vectors + wanted - 1) / wanted;
    const int64_t items_per_batch = (vectors + a.vectors_per_item - 1) / a.vectors_per_item;
    dB_parts = at::empty({batch, items_per_batch, length, N}, u.options());
    dC_parts = at::empty({batch, items_per_batch, length, N}, u.options());
    a.states = states.data_ptr<scalar_t>();
    a.dy = rows_of<scalar_t, const scalar_t>(dy);
    a.du = rows_of<scalar_t, scalar_t>(du);
    a.ddt = rows_of<scalar_t, scalar_t>(ddt);
    a.dA_t = dA_parts.data_ptr<scalar_t>();
    a.dD = dD_parts.data_ptr<scalar_t>();
    a.ddt_bias = dbias_parts.data_ptr<scalar_t>();
    a.dB_parts = dB_parts.data_ptr<scalar_t>();
    a.dC_parts = dC_parts.data_ptr<scalar_t>();
    run_items(batch * items_per_batch, 3 * length * a.lanes * (N + a.rank) * a.vectors_per_item,
              [&](int64_t item) { scan_bwd(a, item); });
  });
  return {du, ddt, dA_parts.sum(0).t().contiguous(), dD_parts.sum(0), dbias_parts.sum(0), dB_parts.sum(1),
          dC_parts.sum(1)};
}

// fp32 multiply-adds per second of fma_peak on the calling thread (best of `repeats` runs).
double fma_rate(int64_t iterations, int64_t repeats) {
  float sink = 0.0f;
  const PeakArgs<float> args{iterations, &sink};
  double best = 0.0;
  for (int64_t r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    fma_peak(args, 0);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, static_cast<double>(iterations) * kPeakChains * isa_lanes<float>() / seconds);
  }
  TORCH_CHECK(sink == sink, "bimamba_cpu: fma_rate produced NaN");
  return best;
}

}  // namespace
}  // namespace bimamba

void register_bimamba(pybind11::module& m) {
  namespace py = pybind11;
  m.def("conv_forward", &bimamba::conv_forward, "channels-last causal conv + SiLU", py::arg("x"), py::arg("weight"),
        py::arg("bias"), py::arg("reverse"), py::arg("out") = py::none(), py::arg("steps") = py::none());
  m.def("conv_backward", &bimamba::conv_backward, "its backward: writes dx, returns [dweight, dbias or None]");
  m.def("scan_forward", &bimamba::scan_forward, "channels-last selective scan of one direction into y",
        py::arg("u"), py::arg("proj"), py::arg("dt_proj_weight"), py::arg("dt_bias"), py::arg("A"), py::arg("D"),
        py::arg("y"), py::arg("accumulate"), py::arg("reverse"), py::arg("save_states"),
        py::arg("gate") = py::none(), py::arg("steps") = py::none(), py::arg("h_in") = py::none(),
        py::arg("h_out") = py::none());
  m.def("scan_backward", &bimamba::scan_backward, "its backward: [du, ddt, dA, dD, ddt_bias, dB, dC]");
  m.def("gate_grad_y", &bimamba::gate_grad_y, "dy = d_gated silu(z)");
  m.def("gate_grad_z", &bimamba::gate_grad_z, "dz = d_gated y silu'(z); in place y <- y silu(z)");
  m.attr("scan_chunk") = bimamba::kChunk;
  m.def("fma_rate", &bimamba::fma_rate, "fp32 multiply-adds per second of one thread (register-only FMA loop)",
        py::arg("iterations") = 4000000, py::arg("repeats") = 20);
  m.def("isa", []() { return std::string(isa::name(isa::active())); }, "instruction set the kernels use");
  m.def("best_isa", []() { return std::string(isa::name(isa::best_supported())); }, "best this CPU supports");
  m.def("set_isa", &isa::set_active, "force 'avx512', 'avx2' or 'generic' (or 'auto')");
}
