#include "cast.hpp"

#include <algorithm>
#include <cstring>

#include <d9d/error.hpp>
#include <d9d/numerics/cast_rules.hpp>

#include "parallel.hpp"

namespace d9d::detail {
namespace {

using numerics::convert_value;
using numerics::Raw;
using numerics::value_of;
using numerics::visit_element_type;

template <class D, class S>
void cast_run(const std::byte* src, std::byte* dst, int64_t begin, int64_t end) {
  constexpr size_t kSrc = sizeof(Raw<S>), kDst = sizeof(Raw<D>);
  for (int64_t i = begin; i < end; ++i) {
    Raw<S> raw;
    std::memcpy(&raw, src + i * static_cast<int64_t>(kSrc), kSrc);
    const Raw<D> out = convert_value<D>(value_of<S>(raw));
    std::memcpy(dst + i * static_cast<int64_t>(kDst), &out, kDst);
  }
}

using CastFn = void (*)(const std::byte*, std::byte*, int64_t, int64_t);

CastFn cast_fn(DType src, DType dst) {
  CastFn fn = nullptr;
  visit_element_type(src, [&](auto s) {
    visit_element_type(dst, [&](auto d) { fn = &cast_run<decltype(d), decltype(s)>; });
  });
  D9D_ASSERT(fn != nullptr);
  return fn;
}

constexpr int64_t kCastChunk = 1 << 16;  // elements per parallel unit

}  // namespace

void cast_contiguous(const std::byte* src, DType src_dtype, std::byte* dst, DType dst_dtype,
                     int64_t count) {
  D9D_CHECK_TYPE(!is_sub_byte(src_dtype) && !is_sub_byte(dst_dtype), "to: cannot convert ",
                 src_dtype, " to ", dst_dtype,
                 ": packed sub-byte dtypes have no element conversion");
  const CastFn fn = cast_fn(src_dtype, dst_dtype);
  const int64_t bytes = count * std::max(element_size(src_dtype), element_size(dst_dtype));
  if (bytes < kParallelMinBytes) {
    fn(src, dst, 0, count);
    return;
  }
  const int64_t chunks = (count + kCastChunk - 1) / kCastChunk;
  parallel_for(chunks, [&](int64_t c) {
    fn(src, dst, c * kCastChunk, std::min(count, (c + 1) * kCastChunk));
  });
}

}  // namespace d9d::detail
