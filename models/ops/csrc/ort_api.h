// The part of ONNX Runtime's C ABI that the custom-op library (ort_bimamba.cpp) uses, declared here because the
// onnxruntime wheel ships no headers. Facts of the ABI, stable by ONNX Runtime's rules (the API table only grows):
//
// * The library exports `RegisterCustomOps(OrtSessionOptions*, const OrtApiBase*)`; ONNX Runtime calls it from
//   `SessionOptions.register_custom_ops_library(path)`.
// * `OrtApiBase` holds two function pointers: `GetApi(version)`, which returns the API table of that version (null
//   when the runtime is older), and `GetVersionString()`.
// * The API table (`OrtApi`) is an array of function pointers; `ApiSlot` below names the entries used here by their
//   index, and `kApiVersion` is the first version that has all of them (ONNX Runtime 1.18).
// * `OrtCustomOp` is a struct of a version number then 25 function pointers, in the order below; the runtime reads
//   the fields that exist in the op's version and skips null optional ones.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ort {

struct Status;  // OrtStatus: null means success
struct SessionOptions;
struct KernelInfo;
struct KernelContext;
struct Value;
struct TensorInfo;  // OrtTensorTypeAndShapeInfo
struct CustomOpDomain;
struct ShapeInferContext;

constexpr uint32_t kApiVersion = 18;

enum ErrorCode : int { kOk = 0, kFail = 1, kInvalidArgument = 2 };
enum ElementType : int { kUndefined = 0, kFloat = 1 };  // ONNXTensorElementDataType (TensorProto's numbering)
enum Characteristic : int { kRequired = 0, kOptional = 1 };
enum MemType : int { kMemDefault = 0 };

struct ApiBase {
  const void* const* (*GetApi)(uint32_t version);  // the OrtApi table
  const char* (*GetVersionString)();
};

enum ApiSlot : int {
  kCreateStatus = 0,                 // Status* (ErrorCode, const char* message)
  kCreateCustomOpDomain = 26,        // Status* (const char* domain, CustomOpDomain** out)
  kCustomOpDomainAdd = 27,           // Status* (CustomOpDomain*, const CustomOp*)
  kAddCustomOpDomain = 28,           // Status* (SessionOptions*, CustomOpDomain*)
  kGetTensorMutableData = 51,        // Status* (Value*, void** out)
  kGetTensorElementType = 60,        // Status* (const TensorInfo*, ElementType* out)
  kGetDimensionsCount = 61,          // Status* (const TensorInfo*, size_t* out)
  kGetDimensions = 62,               // Status* (const TensorInfo*, int64_t* dims, size_t count)
  kGetTensorTypeAndShape = 65,       // Status* (const Value*, TensorInfo** out)
  kKernelInfoGetAttributeInt64 = 86,  // Status* (const KernelInfo*, const char* name, int64_t* out)
  kKernelContextGetInputCount = 88,  // Status* (const KernelContext*, size_t* out)
  kKernelContextGetInput = 90,       // Status* (const KernelContext*, size_t index, const Value** out)
  kKernelContextGetOutput = 91,      // Status* (KernelContext*, size_t index, const int64_t* dims, size_t, Value**)
  kReleaseTensorTypeAndShapeInfo = 99,  // void (TensorInfo*)
  kKernelContextParallelFor = 274,   // Status* (const KernelContext*, void (*)(void*, size_t), size_t total,
                                     //          size_t num_batch, void* data)
};

struct CustomOp {
  uint32_t version;
  void* (*CreateKernel)(const CustomOp*, const void* api, const KernelInfo*);
  const char* (*GetName)(const CustomOp*);
  const char* (*GetExecutionProviderType)(const CustomOp*);  // null: the CPU provider
  ElementType (*GetInputType)(const CustomOp*, size_t index);
  size_t (*GetInputTypeCount)(const CustomOp*);
  ElementType (*GetOutputType)(const CustomOp*, size_t index);
  size_t (*GetOutputTypeCount)(const CustomOp*);
  void (*KernelCompute)(void* kernel, KernelContext*);
  void (*KernelDestroy)(void* kernel);
  Characteristic (*GetInputCharacteristic)(const CustomOp*, size_t index);
  Characteristic (*GetOutputCharacteristic)(const CustomOp*, size_t index);
  MemType (*GetInputMemoryType)(const CustomOp*, size_t index);
  int (*GetVariadicInputMinArity)(const CustomOp*);
  int (*GetVariadicInputHomogeneity)(const CustomOp*);
  int (*GetVariadicOutputMinArity)(const CustomOp*);
  int (*GetVariadicOutputHomogeneity)(const CustomOp*);
  Status* (*CreateKernelV2)(const CustomOp*, const void* api, const KernelInfo*, void** kernel);
  Status* (*KernelComputeV2)(void* kernel, KernelContext*);
  Status* (*InferOutputShapeFn)(const CustomOp*, ShapeInferContext*);
  int (*GetStartVersion)(const CustomOp*);
  int (*GetEndVersion)(const CustomOp*);
  size_t (*GetMayInplace)(int** input_index, int** output_index);
  void (*ReleaseMayInplace)(int* input_index, int* output_index);
  size_t (*GetAliasMap)(int** input_index, int** output_index);
  void (*ReleaseAliasMap)(int* input_index, int* output_index);
};

}  // namespace ort
