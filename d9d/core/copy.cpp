#include "copy.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <d9d/error.hpp>

#include "parallel.hpp"

namespace d9d::detail {
namespace {

enum class Plan { kFlat, kRuns, kTile, kGather };

constexpr int64_t kMinRunBytes = 64;     // shorter contiguous runs are copied element-wise
constexpr int64_t kFlatChunk = 1 << 18;  // bytes per unit of a flat copy
// A transpose tile is square and spans two cache lines of each row it touches (64 BF16 or 32 F32
// elements per side): tile sizes from 64 to 256 bytes measured within noise of each other.
constexpr int64_t kTileBytes = 128;
int64_t tile_side(int64_t elem) { return kTileBytes / elem; }

struct Normalized {
  Plan plan = Plan::kFlat;
  std::byte* dst = nullptr;
  const std::byte* src = nullptr;
  int64_t elem = 0;  // bytes moved per innermost step
  Dims shape;        // loop dims, outer to inner; for kTile the last two are (a, b)
  Dims ds;           // destination byte strides
  Dims ss;           // source byte strides
  int64_t units = 0;
  int64_t unit_bytes = 0;
  int64_t tiles_a = 0;
  int64_t tiles_b = 0;
  int64_t tile = 0;  // kTile: elements per tile side
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

Normalized normalize(const CopyTask& task) {
  Normalized n;
  n.dst = task.dst;
  n.src = task.src;
  n.elem = task.elem_size;
  for (size_t i = 0; i < task.shape.size(); ++i) {
    if (task.shape[i] == 0) return n;  // nothing to copy: units = 0
    if (task.shape[i] == 1) continue;
    n.shape.push_back(task.shape[i]);
    n.ds.push_back(task.dst_strides[i]);
    n.ss.push_back(task.src_strides[i]);
  }
  // Order dims by destination stride, largest first (insertion sort: ndim is small).
  for (size_t i = 1; i < n.shape.size(); ++i) {
    for (size_t j = i; j > 0 && n.ds[j - 1] < n.ds[j]; --j) {
      std::swap(n.shape[j - 1], n.shape[j]);
      std::swap(n.ds[j - 1], n.ds[j]);
      std::swap(n.ss[j - 1], n.ss[j]);
    }
  }
  // Coalesce dim i into dim i+1 when stepping dim i is the same as finishing dim i+1 on both sides.
  for (size_t i = n.shape.size(); i-- > 1;) {
    if (n.ds[i - 1] == n.ds[i] * n.shape[i] && n.ss[i - 1] == n.ss[i] * n.shape[i]) {
      n.shape[i - 1] *= n.shape[i];
      n.ds[i - 1] = n.ds[i];
      n.ss[i - 1] = n.ss[i];
      n.shape.erase(i);
      n.ds.erase(i);
      n.ss.erase(i);
    }
  }
  // Fold a contiguous inner dim into the element.
  if (!n.shape.empty() && n.ds.back() == n.elem && n.ss.back() == n.elem) {
    n.elem *= n.shape.back();
    n.shape.resize(n.shape.size() - 1);
    n.ds.resize(n.ds.size() - 1);
    n.ss.resize(n.ss.size() - 1);
  }
  const size_t nd = n.shape.size();
  if (nd == 0) {
    n.plan = Plan::kFlat;
    n.units = ceil_div(n.elem, kFlatChunk);
    n.unit_bytes = kFlatChunk;
    return n;
  }
  if (n.elem >= kMinRunBytes) {
    n.plan = Plan::kRuns;
    n.units = numel_of(n.shape);
    n.unit_bytes = n.elem;
    return n;
  }
  const bool small_elem = n.elem == 1 || n.elem == 2 || n.elem == 4 || n.elem == 8;
  if (small_elem && nd >= 2 && n.ds[nd - 1] == n.elem && n.shape[nd - 1] >= 8) {
    // A dim contiguous in the source (other than the inner one) makes this a transpose.
    for (size_t j = nd - 1; j-- > 0;) {
      if (n.ss[j] == n.elem && n.shape[j] >= 8) {
        const int64_t size = n.shape[j], d = n.ds[j], s = n.ss[j];
        n.shape.erase(j);
        n.ds.erase(j);
        n.ss.erase(j);
        n.shape.insert(nd - 2, size);
        n.ds.insert(nd - 2, d);
        n.ss.insert(nd - 2, s);
        n.plan = Plan::kTile;
        n.tile = tile_side(n.elem);
        n.tiles_a = ceil_div(n.shape[nd - 2], n.tile);
        n.tiles_b = ceil_div(n.shape[nd - 1], n.tile);
        int64_t outer = 1;
        for (size_t k = 0; k + 2 < nd; ++k) outer *= n.shape[k];
        n.units = outer * n.tiles_a * n.tiles_b;
        n.unit_bytes = n.tile * n.tile * n.elem;
        return n;
      }
    }
  }
  n.plan = Plan::kGather;
  n.units = numel_of(n.shape) / n.shape[nd - 1];
  n.unit_bytes = n.shape[nd - 1] * n.elem;
  return n;
}

// Walks a multi-index over `count` dims, keeping the byte offset on both sides.
class Odometer {
 public:
  Odometer(const Normalized& n, size_t count, int64_t linear) : n_(n), idx_(count, 0) {
    for (size_t d = count; d-- > 0;) {
      idx_[d] = linear % n.shape[d];
      linear /= n.shape[d];
      dst_ += idx_[d] * n.ds[d];
      src_ += idx_[d] * n.ss[d];
    }
  }
  int64_t dst() const { return dst_; }
  int64_t src() const { return src_; }
  void next() {
    for (size_t d = idx_.size(); d-- > 0;) {
      dst_ += n_.ds[d];
      src_ += n_.ss[d];
      if (++idx_[d] < n_.shape[d]) return;
      dst_ -= n_.ds[d] * n_.shape[d];
      src_ -= n_.ss[d] * n_.shape[d];
      idx_[d] = 0;
    }
  }

 private:
  const Normalized& n_;
  Dims idx_;
  int64_t dst_ = 0;
  int64_t src_ = 0;
};

template <int64_t kSize>
void gather_row(std::byte* dst, const std::byte* src, int64_t count, int64_t ds, int64_t ss) {
  for (int64_t k = 0; k < count; ++k) std::memcpy(dst + k * ds, src + k * ss, kSize);
}

void gather_row_any(std::byte* dst, const std::byte* src, int64_t count, int64_t ds, int64_t ss,
                    int64_t elem) {
  switch (elem) {
    case 1: return gather_row<1>(dst, src, count, ds, ss);
    case 2: return gather_row<2>(dst, src, count, ds, ss);
    case 4: return gather_row<4>(dst, src, count, ds, ss);
    case 8: return gather_row<8>(dst, src, count, ds, ss);
    case 16: return gather_row<16>(dst, src, count, ds, ss);
    default:
      for (int64_t k = 0; k < count; ++k) std::memcpy(dst + k * ds, src + k * ss, elem);
  }
}

// One tile of a transpose: element (a, b) is at a * ds_a + b * kSize in the destination and at
// a * kSize + b * ss_b in the source. Rows of the destination are written in order; the source
// lines of the tile stay in L1 while the rows walk across them.
template <int64_t kSize>
void copy_tile_scalar(std::byte* dst, const std::byte* src, int64_t na, int64_t nb, int64_t ds_a,
                      int64_t ss_b) {
  for (int64_t a = 0; a < na; ++a) {
    std::byte* d = dst + a * ds_a;
    const std::byte* s = src + a * kSize;
    for (int64_t b = 0; b < nb; ++b) std::memcpy(d + b * kSize, s + b * ss_b, kSize);
  }
}

#if defined(__SSE2__)
// Square blocks transposed in registers (SSE2 is part of x86-64): 8x8 of 2 bytes, 4x4 of 4 bytes.
void transpose_8x8_u16(std::byte* dst, const std::byte* src, int64_t ds_a, int64_t ss_b) {
  __m128i r[8];
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i * ss_b));
  }
  __m128i t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm_unpacklo_epi16(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm_unpackhi_epi16(r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {  // h = 0: rows 0-3, h = 1: rows 4-7
    u[4 * h + 0] = _mm_unpacklo_epi32(t[4 * h + 0], t[4 * h + 2]);
    u[4 * h + 1] = _mm_unpackhi_epi32(t[4 * h + 0], t[4 * h + 2]);
    u[4 * h + 2] = _mm_unpacklo_epi32(t[4 * h + 1], t[4 * h + 3]);
    u[4 * h + 3] = _mm_unpackhi_epi32(t[4 * h + 1], t[4 * h + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (2 * i) * ds_a),
                     _mm_unpacklo_epi64(u[i], u[4 + i]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (2 * i + 1) * ds_a),
                     _mm_unpackhi_epi64(u[i], u[4 + i]));
  }
}

void transpose_4x4_u32(std::byte* dst, const std::byte* src, int64_t ds_a, int64_t ss_b) {
  __m128i r[4];
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i * ss_b));
  }
  const __m128i t0 = _mm_unpacklo_epi32(r[0], r[1]);
  const __m128i t1 = _mm_unpacklo_epi32(r[2], r[3]);
  const __m128i t2 = _mm_unpackhi_epi32(r[0], r[1]);
  const __m128i t3 = _mm_unpackhi_epi32(r[2], r[3]);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm_unpacklo_epi64(t0, t1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + ds_a), _mm_unpackhi_epi64(t0, t1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * ds_a), _mm_unpacklo_epi64(t2, t3));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 3 * ds_a), _mm_unpackhi_epi64(t2, t3));
}

// A tile walked in kB x kB register blocks; the ragged edges go element by element.
template <int64_t kSize, int64_t kB, void (*kBlock)(std::byte*, const std::byte*, int64_t, int64_t)>
void copy_tile_blocked(std::byte* dst, const std::byte* src, int64_t na, int64_t nb, int64_t ds_a,
                       int64_t ss_b) {
  const int64_t full_a = na / kB * kB, full_b = nb / kB * kB;
  // Destination rows outer: each group of kB destination lines is finished before the next.
  for (int64_t a = 0; a < full_a; a += kB) {
    for (int64_t b = 0; b < full_b; b += kB) {
      kBlock(dst + a * ds_a + b * kSize, src + a * kSize + b * ss_b, ds_a, ss_b);
    }
  }
  if (full_b < nb) {
    copy_tile_scalar<kSize>(dst + full_b * kSize, src + full_b * ss_b, full_a, nb - full_b, ds_a,
                            ss_b);
  }
  if (full_a < na) {
    copy_tile_scalar<kSize>(dst + full_a * ds_a, src + full_a * kSize, na - full_a, nb, ds_a, ss_b);
  }
}
#endif

void copy_tile_any(std::byte* dst, const std::byte* src, int64_t na, int64_t nb, int64_t ds_a,
                   int64_t ss_b, int64_t elem) {
  switch (elem) {
    case 1: return copy_tile_scalar<1>(dst, src, na, nb, ds_a, ss_b);
#if defined(__SSE2__)
    case 2: return copy_tile_blocked<2, 8, transpose_8x8_u16>(dst, src, na, nb, ds_a, ss_b);
    case 4: return copy_tile_blocked<4, 4, transpose_4x4_u32>(dst, src, na, nb, ds_a, ss_b);
#else
    case 2: return copy_tile_scalar<2>(dst, src, na, nb, ds_a, ss_b);
    case 4: return copy_tile_scalar<4>(dst, src, na, nb, ds_a, ss_b);
#endif
    case 8: return copy_tile_scalar<8>(dst, src, na, nb, ds_a, ss_b);
    default: D9D_ASSERT(false);
  }
}

// Note [tile order]: with rows a page or more apart, every tile touches a page per row on each
// side. Tiles are visited in bands of kBandTiles tile-columns (destination columns = source
// rows), along the band's rows before moving down, so the pages in use at once (kBandTiles tiles
// of source rows and one tile of destination rows) stay within the TLB, and destination
// rows are written in long runs. Row-major tile order instead walks every page of the matrix
// between two visits to the same one: about half the speed on a 4096 x 4096 BF16 transpose.
constexpr int64_t kBandTiles = 2;

std::pair<int64_t, int64_t> tile_at(int64_t t, int64_t tiles_a, int64_t tiles_b) {
  const int64_t band = t / (kBandTiles * tiles_a);
  const int64_t cols = std::min(kBandTiles, tiles_b - band * kBandTiles);
  const int64_t rest = t - band * kBandTiles * tiles_a;
  return {rest / cols, band * kBandTiles + rest % cols};
}

void run_units(const Normalized& n, int64_t begin, int64_t end) {
  const size_t nd = n.shape.size();
  switch (n.plan) {
    case Plan::kFlat: {
      const int64_t lo = begin * kFlatChunk;
      const int64_t hi = std::min(end * kFlatChunk, n.elem);
      std::memcpy(n.dst + lo, n.src + lo, static_cast<size_t>(hi - lo));
      return;
    }
    case Plan::kRuns: {
      Odometer it(n, nd, begin);
      const auto bytes = static_cast<size_t>(n.elem);
      for (int64_t u = begin; u < end; ++u, it.next()) {
        std::memcpy(n.dst + it.dst(), n.src + it.src(), bytes);
      }
      return;
    }
    case Plan::kGather: {
      Odometer it(n, nd - 1, begin);
      for (int64_t u = begin; u < end; ++u, it.next()) {
        gather_row_any(n.dst + it.dst(), n.src + it.src(), n.shape[nd - 1], n.ds[nd - 1],
                       n.ss[nd - 1], n.elem);
      }
      return;
    }
    case Plan::kTile: {
      const int64_t tiles = n.tiles_a * n.tiles_b;
      const int64_t size_a = n.shape[nd - 2], size_b = n.shape[nd - 1];
      for (int64_t u = begin; u < end; ++u) {
        Odometer outer(n, nd - 2, u / tiles);
        const auto [ta, tb] = tile_at(u % tiles, n.tiles_a, n.tiles_b);
        const int64_t a0 = ta * n.tile;
        const int64_t b0 = tb * n.tile;
        const int64_t na = std::min(n.tile, size_a - a0);
        const int64_t nb = std::min(n.tile, size_b - b0);
        std::byte* d = n.dst + outer.dst() + a0 * n.ds[nd - 2] + b0 * n.ds[nd - 1];
        const std::byte* s = n.src + outer.src() + a0 * n.ss[nd - 2] + b0 * n.ss[nd - 1];
        copy_tile_any(d, s, na, nb, n.ds[nd - 2], n.ss[nd - 1], n.elem);
      }
      return;
    }
  }
}

struct Piece {
  size_t task;
  int64_t begin;
  int64_t end;
};

}  // namespace

CopyTask copy_task(const Tensor& dst, const Tensor& src) {
  D9D_ASSERT(dst.shape() == src.shape());
  D9D_ASSERT(dst.element_size() == src.element_size());
  CopyTask task;
  task.dst = static_cast<std::byte*>(dst.mutable_data_ptr());
  task.src = static_cast<const std::byte*>(src.data_ptr());
  task.elem_size = dst.element_size();
  task.shape = dst.shape();
  task.dst_strides = dst.strides();
  task.src_strides = src.strides();
  for (auto& s : task.dst_strides) s *= task.elem_size;
  for (auto& s : task.src_strides) s *= task.elem_size;
  return task;
}

void run_copies(std::span<const CopyTask> tasks) {
  std::vector<Normalized> plans;
  plans.reserve(tasks.size());
  int64_t total = 0;
  for (const auto& task : tasks) {
    plans.push_back(normalize(task));
    total += plans.back().units * plans.back().unit_bytes;
  }
  const int threads = num_threads();
  if (threads == 1 || total < kParallelMinBytes) {
    for (const auto& n : plans) run_units(n, 0, n.units);
    return;
  }
  // Deal the units out in `parts` shares of about equal bytes.
  const int64_t parts = int64_t{threads} * 4;
  const int64_t share = ceil_div(total, parts);
  std::vector<std::vector<Piece>> work(1);
  int64_t filled = 0;
  for (size_t i = 0; i < plans.size(); ++i) {
    const Normalized& n = plans[i];
    for (int64_t u = 0; u < n.units;) {
      const int64_t want = std::max<int64_t>(1, (share - filled) / n.unit_bytes);
      const int64_t take = std::min(want, n.units - u);
      work.back().push_back({i, u, u + take});
      u += take;
      filled += take * n.unit_bytes;
      if (filled >= share) {
        work.emplace_back();
        filled = 0;
      }
    }
  }
  parallel_for(static_cast<int64_t>(work.size()), [&](int64_t p) {
    for (const Piece& piece : work[static_cast<size_t>(p)]) {
      run_units(plans[piece.task], piece.begin, piece.end);
    }
  });
}

}  // namespace d9d::detail
