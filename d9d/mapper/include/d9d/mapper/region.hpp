// Region: a box of a tensor's elements, [begin, end) along each dim, what the read plan carries
// backwards through the mappers (Note [slice pushdown] in region.cpp).
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <d9d/dims.hpp>

namespace d9d::mapper {

struct Region {
  Dims begin;
  Dims end;

  // Every element of a tensor of `shape`.
  static Region whole(const Shape& shape);
  int64_t ndim() const { return static_cast<int64_t>(begin.size()); }
  int64_t size(int64_t d) const {
    return end[static_cast<size_t>(d)] - begin[static_cast<size_t>(d)];
  }
  int64_t numel() const;
  bool covers(const Shape& shape) const;  // the whole of a tensor of `shape`
  // The smallest box holding both (same ndim).
  Region hull(const Region& other) const;
  std::string str() const;  // "[0:4, 16:32]"

  friend bool operator==(const Region& a, const Region& b) {
    return a.begin == b.begin && a.end == b.end;
  }
};

// name -> region: the part of each tensor that is wanted (or read). A name absent is not wanted
// at all.
using RegionDict = std::map<std::string, Region>;

// The box of the elements of `in_shape` that a reshape to `out_shape` takes `wanted` from: the
// rows (slices along the first dim of size > 1, the dims before it being 1) spanning the
// flattened positions of `wanted`'s first and last elements; the whole tensor when no such dim
// narrows it. A superset, exact for a run of whole rows.
Region reshape_region(const Shape& in_shape, const Shape& out_shape, const Region& wanted);

// The byte ranges, relative to the tensor's first byte, holding `region` of a contiguous tensor
// of `shape` whose elements have `bits` bits each: one run per row of the innermost narrowed dim,
// adjacent runs joined, in increasing order. Sub-byte dtypes are read in whole runs of the last
// dims.
struct ByteRun {
  int64_t offset;
  int64_t size;
};
std::vector<ByteRun> region_byte_runs(const Shape& shape, int64_t bits, const Region& region);

}  // namespace d9d::mapper
