// Element conversion between dtypes (private to core). The rules are documented on Tensor::to.
#pragma once

#include <cstddef>
#include <cstdint>

#include <d9d/dtype.hpp>

namespace d9d::detail {

// Converts `count` packed elements; throws TypeError if either dtype is sub-byte.
void cast_contiguous(const std::byte* src, DType src_dtype, std::byte* dst, DType dst_dtype,
                     int64_t count);

}  // namespace d9d::detail
