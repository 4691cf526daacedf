// The CPU extension module: the selective scan of `selective_scan_fn` and the fused bidirectional kernels.
#include "bindings.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  register_selective_scan(m);
  register_bimamba(m);
}
