// The doctest programs that need a CUDA device link common/cuda_main.cpp as their main(): without a
// visible device it exits 77, which Meson reports as skipped, so the suite passes on machines
// without a GPU. A case that needs two devices goes in the test suite kTwoCudaDevices; with one
// device, main() leaves those cases out and doctest reports them as skipped, not passed.
#pragma once

namespace d9d::test {

inline constexpr const char* kTwoCudaDevices = "two CUDA devices";

}  // namespace d9d::test
