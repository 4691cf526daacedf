// Registration of each source file's functions in the one extension module (module.cpp).
#pragma once

#include <torch/python.h>

void register_selective_scan(pybind11::module& m);
void register_bimamba(pybind11::module& m);
