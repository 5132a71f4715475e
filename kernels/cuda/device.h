// CUDA device discovery, callable from code that never includes CUDA headers.
#pragma once

#include <string>

namespace grpo::cuda {

// Number of usable CUDA devices; 0 when there is no driver or no GPU (never an error).
int DeviceCount();

// "NVIDIA H200 (sm_90, 139 GiB)" for device `index`, or why none is usable.
std::string DeviceDescription(int index);

}  // namespace grpo::cuda
