// Shape algebra of the leaf ops: what core's Tensor ops produce, computed from specs alone.
//
// Each rule mirrors the checks of the core op it stands for (the same error types, the same
// conditions), so that whatever infer() accepts, apply() accepts and produces with the same
// spec. The property tests in tests/mapper hold the two sides against each other.
#pragma once

#include <cstdint>
#include <vector>

#include <d9d/dims.hpp>
#include <d9d/dtype.hpp>

namespace d9d::mapper::detail {

// A possibly negative dim mapped into [0, ndim); IndexError otherwise.
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op);
// TypeError for packed sub-byte dtypes, which element-addressing ops reject.
void check_elements(DType dtype, const char* op);

Shape transpose_shape(const Shape& shape, int64_t dim0, int64_t dim1);
Shape permute_shape(const Shape& shape, const Dims& dims);
Shape squeeze_shape(const Shape& shape);
// `changed` tells whether a dim was dropped (torch.squeeze(dim) of a dim not of size 1 is a no-op).
Shape squeeze_shape(const Shape& shape, int64_t dim, bool* changed);
Shape unsqueeze_shape(const Shape& shape, int64_t dim);
// `target` with its -1 resolved for `numel` elements (ValueError if it cannot hold them).
Shape reshape_shape(const Shape& from, const Shape& target);
// The sizes torch.chunk gives along a dim of `size` for `chunks` chunks (maybe fewer pieces).
std::vector<int64_t> chunk_sizes(int64_t size, int64_t chunks);

}  // namespace d9d::mapper::detail
