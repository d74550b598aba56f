// The whole public API of d9d.
#pragma once

#include <d9d/device.hpp>
#include <d9d/dims.hpp>
#include <d9d/dlpack.hpp>
#include <d9d/dtype.hpp>
#include <d9d/error.hpp>
#include <d9d/storage.hpp>
#include <d9d/tensor.hpp>
