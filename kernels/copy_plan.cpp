// See Note [device strided copy] in copy_plan.hpp.
#include "copy_plan.hpp"

#include <algorithm>

namespace d9d::kernels {
namespace {

struct Dim {
  int64_t size, dst_stride, src_stride;
};

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

bool aligned_to(const void* p, int64_t n) {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(n) == 0;
}

// The widest word that divides the element, both addresses and every stride.
int widest_word(const std::byte* dst, const std::byte* src, int64_t elem,
                const std::vector<Dim>& dims) {
  int word = 16;
  for (; word > 1; word /= 2) {
    bool aligned = elem % word == 0 && aligned_to(dst, word) && aligned_to(src, word);
    for (const Dim& d : dims)
      aligned = aligned && d.dst_stride % word == 0 && d.src_stride % word == 0;
    if (aligned) break;
  }
  return word;
}

// The dim along which the source is contiguous, when the copy is a transpose worth tiling
// (Note [device strided copy]); -1 otherwise.
int tile_src_dim(const std::byte* dst, const std::byte* src, int64_t elem,
                 const std::vector<Dim>& dims) {
  if (dims.size() < 2 || elem > kTileMaxElem || (elem & (elem - 1)) != 0) return -1;
  if (widest_word(dst, src, elem, dims) < elem) return -1;  // elements must be aligned words
  const Dim& inner = dims.back();
  if (inner.dst_stride != elem || inner.size < kTileMinDim) return -1;
  for (size_t k = 0; k + 1 < dims.size(); ++k) {
    if (dims[k].src_stride == elem && dims[k].size >= kTileMinDim) return static_cast<int>(k);
  }
  return -1;
}

void add_copy(std::vector<DeviceCopy>& out, std::byte* dst, const std::byte* src, int64_t elem,
              std::vector<Dim> dims, bool allow_tiled) {
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
      add_copy(out, dst + i * outer.dst_stride, src + i * outer.src_stride, elem, rest,
               allow_tiled);
    }
    return;
  }
  DeviceCopy c{};
  c.dst = dst;
  c.src = src;
  c.ndim = static_cast<int>(kept.size());
  int64_t numel = 1;
  for (int k = 0; k < c.ndim; ++k) {
    c.shape[k] = kept[static_cast<size_t>(k)].size;
    c.dst_strides[k] = kept[static_cast<size_t>(k)].dst_stride;
    c.src_strides[k] = kept[static_cast<size_t>(k)].src_stride;
    numel *= c.shape[k];
  }
  const int src_dim = allow_tiled ? tile_src_dim(dst, src, elem, kept) : -1;
  if (src_dim >= 0) {
    c.tiled = true;
    c.word = static_cast<int>(elem);
    c.tile_src_dim = src_dim;
    c.tiles_dst = ceil_div(c.shape[c.ndim - 1], kTile);
    c.tiles_src = ceil_div(c.shape[src_dim], kTile);
    c.blocks = numel / (c.shape[c.ndim - 1] * c.shape[src_dim]) * c.tiles_dst * c.tiles_src;
  } else {
    c.word = widest_word(dst, src, elem, kept);
    c.words_per_elem = elem / c.word;
    c.total_words = numel * c.words_per_elem;
    c.blocks = ceil_div(c.total_words, kWordsPerBlock);
  }
  out.push_back(c);
}

}  // namespace

CopyPlan plan_copies(const StridedCopyAnyRank* copies, size_t count, bool allow_tiled) {
  CopyPlan plan;
  for (size_t i = 0; i < count; ++i) {
    const StridedCopyAnyRank& c = copies[i];
    std::vector<Dim> dims(static_cast<size_t>(c.ndim));
    for (int k = 0; k < c.ndim; ++k) {
      dims[static_cast<size_t>(k)] = {c.shape[k], c.dst_strides[k], c.src_strides[k]};
    }
    add_copy(plan.copies, c.dst, c.src, c.elem_size, std::move(dims), allow_tiled);
  }
  for (DeviceCopy& c : plan.copies) {
    c.block_begin = plan.blocks;
    plan.blocks += c.blocks;
  }
  return plan;
}

}  // namespace d9d::kernels
