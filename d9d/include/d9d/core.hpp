// The core layer's public API: DType, Device, Dims, Storage, Tensor, DLPack interchange,
// dequantization, the version.
// (<d9d/d9d.hpp> is the whole library.)
#pragma once

#include <d9d/device.hpp>
#include <d9d/dims.hpp>
#include <d9d/dlpack.hpp>
#include <d9d/dtype.hpp>
#include <d9d/error.hpp>
#include <d9d/quantization.hpp>
#include <d9d/storage.hpp>
#include <d9d/tensor.hpp>
#include <d9d/staging.hpp>
#include <d9d/version.hpp>
