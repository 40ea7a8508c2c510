// Precompiled header for the translation units that use libtorch. Only .cpp
// files see it (through CMake); no header of pgolf includes libtorch's
// umbrella headers.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/api/include/torch/version.h>

#include "model/torch_compat.h"
