// Note [slice pushdown]: a reader that wants only part of a group's outputs (a tensor-parallel
// rank's slice, or a spec whose "shard_tensor" keeps one piece) asks the group's mapper which
// parts of its inputs apply() reads to make them: ModelStateMapper::input_regions(). Each op
// answers for itself with a box per input (Region): a rename passes the box on, shard_tensor
// shifts it (narrow too), pad cuts it to the input, cat and stack split it across their inputs,
// chunk / split / unstack join their pieces' boxes, transpose and permute swap its dims, reshape
// maps it to whole rows, cast keeps it, RoPE permutation and the QKV interleave widen it to whole
// heads, stack_experts to the experts it holds, dequantize to whole scale blocks of rows;
// sequential walks its stages backwards with the specs infer() gave each one. A box is a superset of what
// apply() reads: apply() run on inputs whose bytes are right inside the boxes (anything outside)
// makes outputs right inside the wanted boxes. An op that cannot carry a box (its default)
// answers with its whole inputs and names itself, which `d9d plan` reports; the group is then
// read whole, and only that group. The reader reads each box's byte runs (region_byte_runs) and
// nothing else.
#include <d9d/mapper/region.hpp>

#include <algorithm>
#include <sstream>

#include <d9d/error.hpp>

namespace d9d::mapper {

Region Region::whole(const Shape& shape) {
  return Region{Dims(shape.size(), 0), shape};
}

int64_t Region::numel() const {
  int64_t n = 1;
  for (int64_t d = 0; d < ndim(); ++d) n *= std::max<int64_t>(size(d), 0);
  return n;
}

bool Region::covers(const Shape& shape) const {
  if (begin.size() != shape.size()) return false;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (begin[d] > 0 || end[d] < shape[d]) return false;
  }
  return true;
}

Region Region::hull(const Region& other) const {
  D9D_ASSERT(other.begin.size() == begin.size());
  if (numel() == 0) return other;
  if (other.numel() == 0) return *this;
  Region out = *this;
  for (size_t d = 0; d < begin.size(); ++d) {
    out.begin[d] = std::min(begin[d], other.begin[d]);
    out.end[d] = std::max(end[d], other.end[d]);
  }
  return out;
}

std::string Region::str() const {
  std::ostringstream out;
  out << "[";
  for (size_t d = 0; d < begin.size(); ++d) out << (d ? ", " : "") << begin[d] << ":" << end[d];
  out << "]";
  return out.str();
}

Region reshape_region(const Shape& in_shape, const Shape& out_shape, const Region& wanted) {
  Region whole = Region::whole(in_shape);
  size_t p = 0;
  while (p < in_shape.size() && in_shape[p] == 1) ++p;
  if (p == in_shape.size() || wanted.covers(out_shape)) return whole;
  int64_t inner = 1;
  for (size_t d = p + 1; d < in_shape.size(); ++d) inner *= in_shape[d];
  if (wanted.numel() == 0 || inner == 0) {
    whole.end[p] = whole.begin[p];
    return whole;
  }
  // The flattened positions of the first and the last element of the box.
  int64_t first = 0;
  int64_t last = 0;
  for (size_t d = 0; d < out_shape.size(); ++d) {
    first = first * out_shape[d] + wanted.begin[d];
    last = last * out_shape[d] + wanted.end[d] - 1;
  }
  whole.begin[p] = first / inner;
  whole.end[p] = last / inner + 1;
  return whole;
}

std::vector<ByteRun> region_byte_runs(const Shape& shape, int64_t bits, const Region& wanted) {
  const auto ndim = static_cast<int64_t>(shape.size());
  D9D_ASSERT(wanted.ndim() == ndim);
  if (wanted.numel() == 0) return {};
  Region region = wanted;
  if (bits < 8) {  // packed: whole runs of the last dims, so that every run starts at a byte
    for (int64_t d = 1; d < ndim; ++d) {
      region.begin[static_cast<size_t>(d)] = 0;
      region.end[static_cast<size_t>(d)] = shape[static_cast<size_t>(d)];
    }
  }
  // The innermost dim the box narrows; every dim after it is whole, so each row of it is a run.
  int64_t k = ndim - 1;
  while (k >= 0 && region.begin[static_cast<size_t>(k)] == 0 &&
         region.end[static_cast<size_t>(k)] == shape[static_cast<size_t>(k)]) {
    --k;
  }
  const int64_t total_bits = numel_of(shape) * bits;
  if (k < 0) return {ByteRun{0, total_bits / 8}};
  Strides strides(shape.size(), 1);
  for (int64_t d = ndim - 2; d >= 0; --d) {
    strides[static_cast<size_t>(d)] =
        strides[static_cast<size_t>(d + 1)] * shape[static_cast<size_t>(d + 1)];
  }
  const int64_t run_bits = region.size(k) * strides[static_cast<size_t>(k)] * bits;
  if (strides[static_cast<size_t>(k)] * bits % 8 != 0)
    return {ByteRun{0, (total_bits + 7) / 8}};  // not byte-aligned: all
  std::vector<ByteRun> runs;
  Dims index(static_cast<size_t>(k), 0);  // over the dims before k, within the box
  for (int64_t d = 0; d < k; ++d)
    index[static_cast<size_t>(d)] = region.begin[static_cast<size_t>(d)];
  for (;;) {
    int64_t element = region.begin[static_cast<size_t>(k)] * strides[static_cast<size_t>(k)];
    for (int64_t d = 0; d < k; ++d)
      element += index[static_cast<size_t>(d)] * strides[static_cast<size_t>(d)];
    const int64_t offset = element * bits / 8;
    if (!runs.empty() && runs.back().offset + runs.back().size == offset) {
      runs.back().size += run_bits / 8;
    } else {
      runs.push_back(ByteRun{offset, run_bits / 8});
    }
    int64_t d = k - 1;
    for (; d >= 0; --d) {
      auto& i = index[static_cast<size_t>(d)];
      if (++i < region.end[static_cast<size_t>(d)]) break;
      i = region.begin[static_cast<size_t>(d)];
    }
    if (d < 0) break;
  }
  return runs;
}

}  // namespace d9d::mapper
