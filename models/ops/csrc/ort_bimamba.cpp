// ONNX Runtime custom ops over the fused mixer's CPU kernels (bimamba_conv.h, bimamba_scan.h), so that an exported
// VideoMamba graph runs its scans as fast as eager PyTorch: `videomamba.CausalConvSilu` and `videomamba.SelectiveScan`
// (schemas in models/ops/ort_bimamba.py, which emits them from the exporter and builds this file). The GEMMs between
// them stay standard MatMul nodes. No ATen, no OpenMP: the work is split over ONNX Runtime's own intra-op threads
// (KernelContext_ParallelFor), and the ABI is declared in ort_api.h. fp32 only, as the exported graphs.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "bimamba_conv.h"
#include "bimamba_scan.h"
#include "denormals.h"
#include "ort_api.h"

namespace bimamba {
namespace {

ISA_DISPATCH(conv_fwd, ConvArgs)
ISA_DISPATCH(scan_fwd, ScanArgs)

const void* const* g_api = nullptr;  // the OrtApi table of version ort::kApiVersion

template <typename Fn>
Fn api(ort::ApiSlot slot) {
  return reinterpret_cast<Fn>(const_cast<void*>(g_api[slot]));
}

ort::Status* make_status(const std::string& message) {
  using Fn = ort::Status* (*)(ort::ErrorCode, const char*);
  return api<Fn>(ort::kCreateStatus)(ort::kFail, message.c_str());
}

// A failed call of the runtime (its status is handed back as it is) or a failed check of ours (a message).
struct Failure {
  ort::Status* status;
  std::string message;
};

void check(ort::Status* status) {
  if (status != nullptr) throw Failure{status, ""};
}

void require(bool ok, const std::string& message) {
  if (!ok) throw Failure{nullptr, message};
}

// ---- tensors --------------------------------------------------------------------------------------------------

struct Tensor {
  float* data = nullptr;  // null: an absent optional input
  std::vector<int64_t> shape;

  bool is(std::initializer_list<int64_t> dims) const {
    return shape.size() == dims.size() && std::equal(dims.begin(), dims.end(), shape.begin());
  }
};

std::string describe(const Tensor& t) {
  std::string s = "(";
  for (size_t i = 0; i < t.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
  return s + (t.shape.size() == 1 ? ",)" : ")");
}

Tensor tensor_of(ort::Value* value) {
  Tensor t;
  ort::TensorInfo* info = nullptr;
  check(api<ort::Status* (*)(const ort::Value*, ort::TensorInfo**)>(ort::kGetTensorTypeAndShape)(value, &info));
  size_t rank = 0;
  ort::Status* status = api<ort::Status* (*)(const ort::TensorInfo*, size_t*)>(ort::kGetDimensionsCount)(info, &rank);
  if (status == nullptr) {
    t.shape.resize(rank);
    status = api<ort::Status* (*)(const ort::TensorInfo*, int64_t*, size_t)>(ort::kGetDimensions)(
        info, t.shape.data(), rank);
  }
  api<void (*)(ort::TensorInfo*)>(ort::kReleaseTensorTypeAndShapeInfo)(info);
  check(status);
  void* data = nullptr;
  check(api<ort::Status* (*)(ort::Value*, void**)>(ort::kGetTensorMutableData)(value, &data));
  t.data = static_cast<float*>(data);
  return t;
}

Tensor input(ort::KernelContext* context, size_t index) {
  const ort::Value* value = nullptr;
  check(api<ort::Status* (*)(const ort::KernelContext*, size_t, const ort::Value**)>(ort::kKernelContextGetInput)(
      context, index, &value));
  return value == nullptr ? Tensor{} : tensor_of(const_cast<ort::Value*>(value));
}

Tensor output(ort::KernelContext* context, size_t index, const std::vector<int64_t>& shape) {
  ort::Value* value = nullptr;
  check(api<ort::Status* (*)(ort::KernelContext*, size_t, const int64_t*, size_t, ort::Value**)>(
      ort::kKernelContextGetOutput)(context, index, shape.data(), shape.size(), &value));
  return tensor_of(value);
}

// (dim, k) row-major -> (k, dim), optionally scaled.
std::vector<float> transposed(const Tensor& t, float scale = 1.0f) {
  const int64_t rows = t.shape[0], cols = t.shape[1];
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) out[c * rows + r] = t.data[r * cols + c] * scale;
  }
  return out;
}

// ---- work split -----------------------------------------------------------------------------------------------

constexpr int64_t kMinWorkPerThread = 1 << 16;  // vector-lane operations worth waking a thread for (as bimamba_cpu)
constexpr int64_t kConvRows = 64;               // steps per conv work item

// body(item) for every item: on the calling thread when the call is small, else over ONNX Runtime's threads, which
// hand the items out one by one; denormals flushed while an item runs (denormals.h).
template <class F>
void run_items(ort::KernelContext* context, int64_t n_items, int64_t work_per_item, const F& body) {
  if (n_items <= 1 || n_items * work_per_item < 2 * kMinWorkPerThread) {
    const FlushDenormals flush;
    for (int64_t i = 0; i < n_items; ++i) body(i);
    return;
  }
  using Fn = ort::Status* (*)(const ort::KernelContext*, void (*)(void*, size_t), size_t, size_t, void*);
  auto call = [](void* data, size_t item) {
    const FlushDenormals flush;
    (*static_cast<const F*>(data))(static_cast<int64_t>(item));
  };
  check(api<Fn>(ort::kKernelContextParallelFor)(context, call, static_cast<size_t>(n_items), 0,
                                                const_cast<F*>(&body)));
}

// ---- the kernels' arguments (keep in step with conv_args / scan_args of bimamba_cpu.cpp) ----------------------
// Each call runs the whole sequence as one window: steps [0, L), every operand a contiguous (batch, L, columns)
// tensor whose row 0 is time 0.

template <typename T>
Rows<T> rows_of(T* data, int64_t length, int64_t columns) {
  return Rows<T>{data, length * columns, columns, 0};
}

ConvArgs<float> conv_args(const Tensor& x, const std::vector<float>& w_t, const Tensor& bias, bool reverse,
                          float* out) {
  ConvArgs<float> a{};
  a.batch = x.shape[0];
  a.length = x.shape[1];
  a.dim = x.shape[2];
  a.width = static_cast<int64_t>(w_t.size()) / a.dim;
  a.lanes = isa_lanes<float>();
  a.rows_per_item = kConvRows;
  a.i_begin = 0;
  a.i_end = a.length;
  a.x = rows_of<const float>(x.data, a.length, a.dim);
  a.w_t = w_t.data();
  a.bias = bias.data;
  a.reverse = reverse;
  a.out = rows_of<float>(out, a.length, a.dim);
  return a;
}

struct ScanWeights {
  std::vector<float> A_t, A2_t, W_dt_t;  // (N, dim), (N, dim) A log2(e), (rank, dim)
};

ScanArgs<float> scan_args(const Tensor& u, const Tensor& proj, const ScanWeights& w, const Tensor& dt_bias,
                          const Tensor& D, const Tensor& gate, bool accumulate, bool reverse, float* y) {
  ScanArgs<float> a{};
  a.batch = u.shape[0];
  a.length = u.shape[1];
  a.dim = u.shape[2];
  a.n_state = static_cast<int64_t>(w.A_t.size()) / a.dim;
  a.rank = static_cast<int64_t>(w.W_dt_t.size()) / a.dim;
  a.n_chunks = (a.length + kChunk - 1) / kChunk;
  a.lanes = isa_lanes<float>();
  a.i_begin = 0;
  a.i_end = a.length;
  a.u = rows_of<const float>(u.data, a.length, a.dim);
  a.proj = rows_of<const float>(proj.data, a.length, proj.shape[2]);
  a.W_dt_t = w.W_dt_t.data();
  a.dt_bias = dt_bias.data;
  a.A_t = w.A_t.data();
  a.A2_t = w.A2_t.data();
  a.D = D.data;
  a.reverse = reverse;
  a.y = rows_of<float>(y, a.length, a.dim);
  a.accumulate = accumulate;
  a.gate = rows_of<const float>(gate.data, a.length, a.dim);  // gate.p null: no gate
  a.states = nullptr;
  a.h_in = nullptr;  // the whole sequence is one window: the scan starts from zero
  a.h_out = nullptr;
  return a;
}

// ---- the ops --------------------------------------------------------------------------------------------------

struct Kernel {
  bool reverse;
};

// CausalConvSilu(x (B, L, C), weight (C, W), bias (C,) optional) -> silu(causal depthwise conv(x)) (B, L, C);
// attribute reverse: 1 runs the conv backwards in time.
struct ConvOp {
  static constexpr const char* kName = "CausalConvSilu";
  static constexpr size_t kInputs = 3, kRequired = 2;

  static void compute(const Kernel& k, ort::KernelContext* context) {
    const Tensor x = input(context, 0), weight = input(context, 1), bias = input(context, 2);
    require(x.shape.size() == 3, "CausalConvSilu: x must be (batch, L, channels), got " + describe(x));
    const int64_t dim = x.shape[2];
    require(weight.shape.size() == 2 && weight.shape[0] == dim && weight.shape[1] >= 1 &&
                weight.shape[1] <= kMaxWidth,
            "CausalConvSilu: weight must be (channels=" + std::to_string(dim) + ", width <= " +
                std::to_string(kMaxWidth) + "), got " + describe(weight));
    require(!bias.data || bias.is({dim}), "CausalConvSilu: bias must be (" + std::to_string(dim) + ",), got " +
                                              describe(bias));
    const Tensor out = output(context, 0, x.shape);
    const std::vector<float> w_t = transposed(weight);
    const ConvArgs<float> a = conv_args(x, w_t, bias, k.reverse, out.data);
    const int64_t items = a.batch * ((a.length + kConvRows - 1) / kConvRows);
    run_items(context, items, kConvRows * a.dim * a.width, [&](int64_t item) { conv_fwd(a, item); });
  }
};

// SelectiveScan(u (B, L, C), proj (B, L, R + 2N) rows [dt_low | B | C], dt_weight (C, R), dt_bias (C,), A (C, N),
// D (C,), y_in (B, L, C) optional, gate (B, L, C) optional) -> y = (y_in + scan(u)) * silu(gate) (B, L, C), where the
// scan forms delta = softplus(dt_weight dt_low + dt_bias) itself and adds D u; attribute reverse as the conv's.
struct ScanOp {
  static constexpr const char* kName = "SelectiveScan";
  static constexpr size_t kInputs = 8, kRequired = 6;

  static void compute(const Kernel& k, ort::KernelContext* context) {
    const Tensor u = input(context, 0), proj = input(context, 1), W_dt = input(context, 2);
    const Tensor dt_bias = input(context, 3), A = input(context, 4), D = input(context, 5);
    const Tensor y_in = input(context, 6), gate = input(context, 7);
    require(u.shape.size() == 3, "SelectiveScan: u must be (batch, L, channels), got " + describe(u));
    const int64_t batch = u.shape[0], length = u.shape[1], dim = u.shape[2];
    const std::string channels = std::to_string(dim);
    require(A.shape.size() == 2 && A.shape[0] == dim && A.shape[1] >= 1 && A.shape[1] <= kMaxState,
            "SelectiveScan: A must be (channels=" + channels + ", N <= " + std::to_string(kMaxState) + "), got " +
                describe(A));
    require(W_dt.shape.size() == 2 && W_dt.shape[0] == dim,
            "SelectiveScan: dt_weight must be (channels=" + channels + ", rank), got " + describe(W_dt));
    require(proj.is({batch, length, W_dt.shape[1] + 2 * A.shape[1]}),
            "SelectiveScan: proj must be (batch, L, rank + 2N), got " + describe(proj));
    require(dt_bias.is({dim}) && D.is({dim}), "SelectiveScan: dt_bias and D must be (" + channels + ",)");
    require(!y_in.data || y_in.shape == u.shape, "SelectiveScan: y_in must have u's shape, got " + describe(y_in));
    require(!gate.data || gate.shape == u.shape, "SelectiveScan: gate must have u's shape, got " + describe(gate));
    require(*std::max_element(A.data, A.data + dim * A.shape[1]) <= 0.0f, "SelectiveScan: A must be <= 0");
    const Tensor y = output(context, 0, u.shape);
    if (y_in.data) std::memcpy(y.data, y_in.data, sizeof(float) * static_cast<size_t>(batch * length * dim));
    const ScanWeights w{transposed(A), transposed(A, static_cast<float>(M_LOG2E)), transposed(W_dt)};
    const ScanArgs<float> a = scan_args(u, proj, w, dt_bias, D, gate, y_in.data != nullptr, k.reverse, y.data);
    const int64_t items = a.batch * ((a.dim + a.lanes - 1) / a.lanes);
    run_items(context, items, a.length * a.lanes * (a.n_state + a.rank), [&](int64_t item) { scan_fwd(a, item); });
  }
};

ort::Status* to_status(const Failure& failure) {
  return failure.status != nullptr ? failure.status : make_status("videomamba." + failure.message);
}

template <class Op>
ort::Status* create_kernel(const ort::CustomOp*, const void*, const ort::KernelInfo* info, void** kernel) {
  int64_t reverse = 0;
  using Fn = ort::Status* (*)(const ort::KernelInfo*, const char*, int64_t*);
  if (ort::Status* status = api<Fn>(ort::kKernelInfoGetAttributeInt64)(info, "reverse", &reverse)) return status;
  *kernel = new Kernel{reverse != 0};
  return nullptr;
}

template <class Op>
ort::Status* compute(void* kernel, ort::KernelContext* context) {
  try {
    Op::compute(*static_cast<const Kernel*>(kernel), context);
  } catch (const Failure& failure) {
    return to_status(failure);
  } catch (const std::exception& error) {
    return make_status(std::string("videomamba.") + Op::kName + ": " + error.what());
  }
  return nullptr;
}

template <class Op>
ort::CustomOp make_op() {
  ort::CustomOp op{};
  op.version = ort::kApiVersion;
  op.GetName = [](const ort::CustomOp*) { return Op::kName; };
  op.GetExecutionProviderType = [](const ort::CustomOp*) -> const char* { return nullptr; };
  op.GetInputType = [](const ort::CustomOp*, size_t) { return ort::kFloat; };
  op.GetInputTypeCount = [](const ort::CustomOp*) { return Op::kInputs; };
  op.GetOutputType = [](const ort::CustomOp*, size_t) { return ort::kFloat; };
  op.GetOutputTypeCount = [](const ort::CustomOp*) -> size_t { return 1; };
  op.KernelDestroy = [](void* kernel) { delete static_cast<Kernel*>(kernel); };
  op.GetInputCharacteristic = [](const ort::CustomOp*, size_t index) {
    return index < Op::kRequired ? ort::kRequired : ort::kOptional;
  };
  op.GetOutputCharacteristic = [](const ort::CustomOp*, size_t) { return ort::kRequired; };
  op.GetInputMemoryType = [](const ort::CustomOp*, size_t) { return ort::kMemDefault; };
  op.CreateKernelV2 = create_kernel<Op>;
  op.KernelComputeV2 = compute<Op>;
  return op;
}

const ort::CustomOp kConvOp = make_op<ConvOp>();
const ort::CustomOp kScanOp = make_op<ScanOp>();

}  // namespace
}  // namespace bimamba

// Called by SessionOptions.register_custom_ops_library: adds the domain "videomamba" with both ops.
extern "C" __attribute__((visibility("default"))) ort::Status* RegisterCustomOps(ort::SessionOptions* options,
                                                                                 const ort::ApiBase* base) {
  using namespace bimamba;
  g_api = base->GetApi(ort::kApiVersion);
  if (g_api == nullptr) {
    g_api = base->GetApi(1);  // CreateStatus is in every version
    return make_status(std::string("videomamba custom ops need onnxruntime >= 1.18, this is ") +
                       base->GetVersionString());
  }
  try {
    ort::CustomOpDomain* domain = nullptr;
    check(api<ort::Status* (*)(const char*, ort::CustomOpDomain**)>(ort::kCreateCustomOpDomain)("videomamba",
                                                                                                 &domain));
    using Add = ort::Status* (*)(ort::CustomOpDomain*, const ort::CustomOp*);
    check(api<Add>(ort::kCustomOpDomainAdd)(domain, &kConvOp));
    check(api<Add>(ort::kCustomOpDomainAdd)(domain, &kScanOp));
    check(api<ort::Status* (*)(ort::SessionOptions*, ort::CustomOpDomain*)>(ort::kAddCustomOpDomain)(options,
                                                                                                      domain));
  } catch (const Failure& failure) {
    return to_status(failure);
  }
  return nullptr;
}
