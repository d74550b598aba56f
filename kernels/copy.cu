// See Note [device strided copy] in copy.cuh.
#include "copy.cuh"

#include <algorithm>
#include <vector>

namespace d9d::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWordsPerThread = 4;
constexpr int64_t kWordsPerBlock = int64_t{kThreads} * kWordsPerThread;

// One normalized copy as the kernel sees it (plain data: it lives in __shared__ memory).
struct DeviceCopy {
  std::byte* dst;
  const std::byte* src;
  int64_t words_per_elem;  // element bytes / word bytes
  int64_t total_words;
  int64_t block_begin;  // first block of the launch that works on this copy
  int word;             // bytes moved per load/store: 16, 8, 4, 2 or 1
  int ndim;
  int64_t shape[kMaxCopyDims];
  int64_t dst_strides[kMaxCopyDims];
  int64_t src_strides[kMaxCopyDims];
};

template <int W>
struct Word;
template <>
struct Word<16> {
  using type = uint4;
};
template <>
struct Word<8> {
  using type = uint2;
};
template <>
struct Word<4> {
  using type = uint32_t;
};
template <>
struct Word<2> {
  using type = uint16_t;
};
template <>
struct Word<1> {
  using type = uint8_t;
};

// Byte offsets of word `w` of the copy in the destination and in the source.
__device__ __forceinline__ void word_offsets(const DeviceCopy& c, int64_t w, int64_t& dst,
                                             int64_t& src) {
  int64_t e = w / c.words_per_elem;
  const int64_t within = (w - e * c.words_per_elem) * c.word;
  dst = within;
  src = within;
  for (int k = c.ndim - 1; k >= 0; --k) {
    const int64_t i = e % c.shape[k];
    e /= c.shape[k];
    dst += i * c.dst_strides[k];
    src += i * c.src_strides[k];
  }
}

template <int W>
__device__ __forceinline__ void copy_words(const DeviceCopy& c, int64_t first) {
  using T = typename Word<W>::type;
  T values[kWordsPerThread];
  int64_t dst_offsets[kWordsPerThread];
#pragma unroll
  for (int k = 0; k < kWordsPerThread; ++k) {
    const int64_t w = first + threadIdx.x + int64_t{k} * kThreads;
    dst_offsets[k] = -1;
    if (w < c.total_words) {
      int64_t src_offset;
      word_offsets(c, w, dst_offsets[k], src_offset);
      values[k] = *reinterpret_cast<const T*>(c.src + src_offset);
    }
  }
#pragma unroll
  for (int k = 0; k < kWordsPerThread; ++k) {
    if (dst_offsets[k] >= 0) *reinterpret_cast<T*>(c.dst + dst_offsets[k]) = values[k];
  }
}

__global__ void __launch_bounds__(kThreads)
    strided_copy_kernel(const DeviceCopy* copies, int count) {
  __shared__ DeviceCopy c;
  const auto block = static_cast<int64_t>(blockIdx.x);
  if (threadIdx.x == 0) {
    int lo = 0, hi = count - 1;  // the last copy whose first block is at or before this one
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (copies[mid].block_begin <= block) lo = mid;
      else hi = mid - 1;
    }
    c = copies[lo];
  }
  __syncthreads();
  const int64_t first = (block - c.block_begin) * kWordsPerBlock;
  switch (c.word) {
    case 16: copy_words<16>(c, first); break;
    case 8: copy_words<8>(c, first); break;
    case 4: copy_words<4>(c, first); break;
    case 2: copy_words<2>(c, first); break;
    default: copy_words<1>(c, first); break;
  }
}

struct Dim {
  int64_t size, dst_stride, src_stride;
};

// Normalizes one copy (Note [device strided copy]) and appends it, split along its outer dims
// when more than kMaxCopyDims remain.
void add_copy(std::vector<DeviceCopy>& out, std::byte* dst, const std::byte* src, int64_t elem,
              std::vector<Dim> dims) {
  std::vector<Dim> kept;
  for (const Dim& d : dims) {
    if (d.size == 0) return;  // nothing to copy
    if (d.size != 1) kept.push_back(d);
  }
  std::stable_sort(kept.begin(), kept.end(),
                   [](const Dim& a, const Dim& b) { return a.dst_stride > b.dst_stride; });
  for (size_t i = kept.size(); i-- > 1;) {
    Dim& outer = kept[i - 1];
    const Dim& inner = kept[i];
    if (outer.dst_stride == inner.dst_stride * inner.size &&
        outer.src_stride == inner.src_stride * inner.size) {
      outer = Dim{outer.size * inner.size, inner.dst_stride, inner.src_stride};
      kept.erase(kept.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }
  if (!kept.empty() && kept.back().dst_stride == elem && kept.back().src_stride == elem) {
    elem *= kept.back().size;
    kept.pop_back();
  }
  if (kept.size() > static_cast<size_t>(kMaxCopyDims)) {
    const Dim outer = kept.front();
    const std::vector<Dim> rest(kept.begin() + 1, kept.end());
    for (int64_t i = 0; i < outer.size; ++i) {
      add_copy(out, dst + i * outer.dst_stride, src + i * outer.src_stride, elem, rest);
    }
    return;
  }
  int word = 16;
  for (; word > 1; word /= 2) {
    bool aligned = elem % word == 0 && reinterpret_cast<uintptr_t>(dst) % word == 0 &&
                   reinterpret_cast<uintptr_t>(src) % word == 0;
    for (const Dim& d : kept) {
      aligned = aligned && d.dst_stride % word == 0 && d.src_stride % word == 0;
    }
    if (aligned) break;
  }
  DeviceCopy c{};
  c.dst = dst;
  c.src = src;
  c.word = word;
  c.words_per_elem = elem / word;
  c.ndim = static_cast<int>(kept.size());
  int64_t numel = 1;
  for (int k = 0; k < c.ndim; ++k) {
    c.shape[k] = kept[static_cast<size_t>(k)].size;
    c.dst_strides[k] = kept[static_cast<size_t>(k)].dst_stride;
    c.src_strides[k] = kept[static_cast<size_t>(k)].src_stride;
    numel *= c.shape[k];
  }
  c.total_words = numel * c.words_per_elem;
  out.push_back(c);
}

}  // namespace

cudaError_t launch_strided_copies(const StridedCopyAnyRank* copies, size_t count,
                                  cudaStream_t stream) {
  std::vector<DeviceCopy> plan;
  for (size_t i = 0; i < count; ++i) {
    const StridedCopyAnyRank& c = copies[i];
    std::vector<Dim> dims(static_cast<size_t>(c.ndim));
    for (int k = 0; k < c.ndim; ++k) dims[static_cast<size_t>(k)] = {c.shape[k], c.dst_strides[k], c.src_strides[k]};
    add_copy(plan, c.dst, c.src, c.elem_size, std::move(dims));
  }
  if (plan.empty()) return cudaSuccess;
  if (plan.size() > static_cast<size_t>(INT32_MAX)) return cudaErrorInvalidValue;
  int64_t blocks = 0;
  for (DeviceCopy& c : plan) {
    c.block_begin = blocks;
    blocks += (c.total_words + kWordsPerBlock - 1) / kWordsPerBlock;
  }
  if (blocks > INT32_MAX) return cudaErrorInvalidConfiguration;
  const size_t bytes = plan.size() * sizeof(DeviceCopy);
  DeviceCopy* device_plan = nullptr;
  cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&device_plan), bytes, stream);
  if (err != cudaSuccess) return err;
  // From pageable memory: returns once `plan` has been staged, so it may go out of scope.
  err = cudaMemcpyAsync(device_plan, plan.data(), bytes, cudaMemcpyHostToDevice, stream);
  if (err == cudaSuccess) {
    strided_copy_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        device_plan, static_cast<int>(plan.size()));
    err = cudaGetLastError();
  }
  const cudaError_t free_err = cudaFreeAsync(device_plan, stream);
  return err != cudaSuccess ? err : free_err;
}

}  // namespace d9d::kernels
