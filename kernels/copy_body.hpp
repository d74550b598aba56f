// What one thread of the strided-copy kernel does (Note [device strided copy] in copy_plan.hpp),
// as functions that compile for the device and for the host: copy.cu wraps them in the kernel,
// tests/kernels runs them over every block and thread of a plan on the CPU.
//
// The kernel, per block: thread 0 finds the block's copy (find_copy) and puts it in shared memory;
// after a barrier every thread either moves its words (copy_words) or, for a tiled copy, loads its
// part of the tile (tile_load), waits at a barrier, and stores its part (tile_store). The *_any
// forms at the end choose the word size from the descriptor.
#pragma once

#include <cstddef>
#include <cstdint>
#include "access.hpp"
#include "copy_plan.hpp"

namespace d9d::kernels {

// The copy that block `block` of the launch works on: the last whose first block is at or before
// it.
D9D_HOST_DEVICE int find_copy(const DeviceCopy* copies, int count, int64_t block) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (copies[mid].block_begin <= block)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// Element-wise: byte offsets of word `w` of the copy in the destination and in the source.
D9D_HOST_DEVICE void word_offsets(const DeviceCopy& c, int64_t w, int64_t& dst, int64_t& src) {
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

// Element-wise: thread `thread` of the copy's block `block` (counted from the copy's first block).
template <int W>
D9D_HOST_DEVICE void copy_words(const DeviceCopy& c, int64_t block, int thread) {
  using T = Word<W>;
  const int64_t first = block * kWordsPerBlock + thread;
  T values[kWordsPerThread];
  int64_t dst_offsets[kWordsPerThread];
  D9D_UNROLL
  for (int k = 0; k < kWordsPerThread; ++k) {
    const int64_t w = first + int64_t{k} * kCopyThreads;
    dst_offsets[k] = -1;
    if (w < c.total_words) {
      int64_t src_offset;
      word_offsets(c, w, dst_offsets[k], src_offset);
      values[k] = load_as<T>(c.src + src_offset);
    }
  }
  D9D_UNROLL
  for (int k = 0; k < kWordsPerThread; ++k) {
    if (dst_offsets[k] >= 0) store_as<T>(c.dst + dst_offsets[k], values[k]);
  }
}

// Tiled: where the tile of the copy's block `block` lies. Dim A is the destination's contiguous
// (last) dim, dim B the source's; `a0`/`b0` are the tile's first indices along them and the bases
// the byte offsets of the block's batch index (the other dims) on each side.
struct TilePosition {
  int64_t dst_base, src_base;
  int64_t a0, b0;
};

D9D_HOST_DEVICE TilePosition tile_position(const DeviceCopy& c, int64_t block) {
  TilePosition p{0, 0, 0, 0};
  p.a0 = block % c.tiles_dst * kTile;
  block /= c.tiles_dst;
  p.b0 = block % c.tiles_src * kTile;
  block /= c.tiles_src;
  for (int k = c.ndim - 2; k >= 0; --k) {  // what is left of `block` is the batch index
    if (k == c.tile_src_dim) continue;
    const int64_t i = block % c.shape[k];
    block /= c.shape[k];
    p.dst_base += i * c.dst_strides[k];
    p.src_base += i * c.src_strides[k];
  }
  return p;
}

// Byte offset of element (row, col) of the tile: row along A, col along B, one spare column.
D9D_HOST_DEVICE int tile_offset(int row, int col, int elem) {
  return (row * (kTile + 1) + col) * elem;
}

// Tiled, before the barrier: the thread reads rows of the tile along B (coalesced in the source).
template <int W>
D9D_HOST_DEVICE void tile_load(const DeviceCopy& c, const TilePosition& p, int thread,
                               std::byte* tile) {
  const int b = thread % kTile;
  const int64_t size_a = c.shape[c.ndim - 1];
  const int64_t size_b = c.shape[c.tile_src_dim];
  if (p.b0 + b >= size_b) return;
  const std::byte* src = c.src + p.src_base + (p.b0 + b) * c.src_strides[c.tile_src_dim];
  D9D_UNROLL
  for (int pass = 0; pass < kTile / kTileRowsPerPass; ++pass) {
    const int row = thread / kTile + pass * kTileRowsPerPass;
    if (p.a0 + row < size_a) {
      move_word<W>(tile + tile_offset(row, b, W), src + (p.a0 + row) * c.src_strides[c.ndim - 1]);
    }
  }
}

// Tiled, after the barrier: the thread writes columns of the tile along A (coalesced in the
// destination, whose stride along A is the element).
template <int W>
D9D_HOST_DEVICE void tile_store(const DeviceCopy& c, const TilePosition& p, int thread,
                                const std::byte* tile) {
  const int a = thread % kTile;
  const int64_t size_a = c.shape[c.ndim - 1];
  const int64_t size_b = c.shape[c.tile_src_dim];
  if (p.a0 + a >= size_a) return;
  std::byte* dst = c.dst + p.dst_base + (p.a0 + a) * W;
  D9D_UNROLL
  for (int pass = 0; pass < kTile / kTileRowsPerPass; ++pass) {
    const int col = thread / kTile + pass * kTileRowsPerPass;
    if (p.b0 + col < size_b) {
      move_word<W>(dst + (p.b0 + col) * c.dst_strides[c.tile_src_dim],
                   tile + tile_offset(a, col, W));
    }
  }
}

// The bodies above take the word size as a template argument; these pick it from the descriptor.
// One dispatch for the kernel and for tests/kernels, so the test runs the kernel's choice too.
D9D_HOST_DEVICE void copy_words_any(const DeviceCopy& c, int64_t block, int thread) {
  switch (c.word) {
    case 16: copy_words<16>(c, block, thread); break;
    case 8: copy_words<8>(c, block, thread); break;
    case 4: copy_words<4>(c, block, thread); break;
    case 2: copy_words<2>(c, block, thread); break;
    default: copy_words<1>(c, block, thread); break;
  }
}

D9D_HOST_DEVICE void tile_load_any(const DeviceCopy& c, const TilePosition& p, int thread,
                                   std::byte* tile) {
  switch (c.word) {
    case 8: tile_load<8>(c, p, thread, tile); break;
    case 4: tile_load<4>(c, p, thread, tile); break;
    case 2: tile_load<2>(c, p, thread, tile); break;
    default: tile_load<1>(c, p, thread, tile); break;
  }
}

D9D_HOST_DEVICE void tile_store_any(const DeviceCopy& c, const TilePosition& p, int thread,
                                    const std::byte* tile) {
  switch (c.word) {
    case 8: tile_store<8>(c, p, thread, tile); break;
    case 4: tile_store<4>(c, p, thread, tile); break;
    case 2: tile_store<2>(c, p, thread, tile); break;
    default: tile_store<1>(c, p, thread, tile); break;
  }
}

}  // namespace d9d::kernels
