// The CUDA kernels' own code run on the CPU: the copy planner (copy_plan.cpp) and what each thread
// of the copy, cast and dequantize kernels does (copy_body.hpp, cast_body.hpp,
// dequantize_body.hpp), executed block by block and thread by thread over host memory, with the
// barrier of a tiled copy kept (every thread loads its part of the tile before any stores). Results
// must be byte-identical to core's CPU ops. This is the index arithmetic, alignment choices, tiling
// and splitting of the GPU path, tested on every machine; launch limits, shared-memory races and
// the CUDA calls themselves are left to tests/core/test_cuda_parity on a GPU.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include <d9d/core.hpp>

#include "cast_body.hpp"
#include "common/helpers.hpp"
#include "copy_body.hpp"
#include "dequantize_body.hpp"

using namespace d9d;
using namespace d9d::kernels;

namespace {

// Runs every block and thread of the launch `plan` describes, as strided_copy_kernel does.
void run_copy_kernel_on_cpu(const CopyPlan& plan) {
  alignas(16) std::byte tile[kTileBytes];
  const int count = static_cast<int>(plan.copies.size());
  for (int64_t block = 0; block < plan.blocks; ++block) {
    const DeviceCopy& c =
        plan.copies[static_cast<size_t>(find_copy(plan.copies.data(), count, block))];
    const int64_t local = block - c.block_begin;
    REQUIRE(local >= 0);
    REQUIRE(local < c.blocks);
    if (c.tiled) {
      std::memset(tile, 0xEE, sizeof tile);  // a tile element read before it was loaded shows up
      const TilePosition p = tile_position(c, local);
      for (int t = 0; t < kCopyThreads; ++t) tile_load_any(c, p, t, tile);
      for (int t = 0; t < kCopyThreads; ++t) tile_store_any(c, p, t, tile);  // after the barrier
      continue;
    }
    for (int t = 0; t < kCopyThreads; ++t) copy_words_any(c, local, t);
  }
}

// The kernel's view of dst.copy_(src) (same shapes, byte strides), as core's cuda_run_copies
// hands it over.
struct CopyArgs {
  Shape shape;
  std::vector<int64_t> dst_strides, src_strides;
  StridedCopyAnyRank copy;
};

CopyArgs copy_args(const Tensor& dst, const Tensor& src) {
  REQUIRE(dst.shape() == src.shape());
  CopyArgs a;
  a.shape = dst.shape();
  for (int64_t d = 0; d < dst.dim(); ++d) {
    a.dst_strides.push_back(dst.stride(d) * dst.element_size());
    a.src_strides.push_back(src.stride(d) * src.element_size());
  }
  return a;
}

StridedCopyAnyRank as_copy(const CopyArgs& a, const Tensor& dst, const Tensor& src) {
  StridedCopyAnyRank c;
  c.dst = static_cast<std::byte*>(dst.mutable_data_ptr());
  c.src = static_cast<const std::byte*>(src.data_ptr());
  c.elem_size = src.element_size();
  c.ndim = static_cast<int>(a.shape.size());
  c.shape = a.shape.data();
  c.dst_strides = a.dst_strides.data();
  c.src_strides = a.src_strides.data();
  return c;
}

Tensor poisoned(const Shape& shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  std::memset(t.mutable_data_ptr(), 0xA5, static_cast<size_t>(t.nbytes()));
  return t;
}

// Whether the `guard` bytes after `t`'s last byte still hold the poison.
bool guard_intact(const Tensor& t, int64_t guard) {
  const auto* end = static_cast<const unsigned char*>(t.data_ptr()) + t.nbytes();
  return std::all_of(end, end + guard, [](unsigned char b) { return b == 0xA5; });
}

constexpr int64_t kGuard = 64;

// The kernel's contiguous() of `src` into a poisoned buffer with a guard after it, with tiling
// allowed or not; also returns the plan.
Tensor contiguous_by_kernel(const Tensor& src, bool allow_tiled, CopyPlan* plan_out = nullptr) {
  const int64_t nbytes = src.numel() * src.element_size();
  const Tensor out = Tensor::from_storage(poisoned({nbytes + kGuard}, DType::U8).storage(),
                                          src.dtype(), src.shape());
  const CopyArgs a = copy_args(out, src);
  const StridedCopyAnyRank c = as_copy(a, out, src);
  CopyPlan plan = plan_copies(&c, 1, allow_tiled);
  run_copy_kernel_on_cpu(plan);
  CHECK(guard_intact(out, kGuard));
  if (plan_out != nullptr) *plan_out = std::move(plan);
  return out;
}

void check_bytes(const Tensor& got, const Tensor& want) {
  REQUIRE(got.shape() == want.shape());
  CHECK(test::reference_bytes(got) == test::reference_bytes(want));
}

bool any_tiled(const CopyPlan& plan) {
  return std::any_of(plan.copies.begin(), plan.copies.end(),
                     [](const DeviceCopy& c) { return c.tiled; });
}

// A random permutation and narrowing of a fresh random tensor (odd offsets included).
Tensor random_view(const Shape& shape, DType dtype) {
  Tensor t = test::random_tensor(shape, dtype);
  Dims perm(shape.size(), 0);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), test::rng());
  t = t.permute(perm);
  for (int64_t d = 0; d < t.dim(); ++d) {
    const int64_t size = t.size(d);
    const int64_t start = test::randint(0, size / 3);
    t = t.narrow(d, start, test::randint(std::min<int64_t>(1, size - start), size - start));
  }
  return t;
}

std::vector<DType> element_dtypes() {
  std::vector<DType> out;
  for (int i = 0; i < kNumDTypes; ++i) {
    if (!is_sub_byte(all_dtypes()[i].dtype)) out.push_back(all_dtypes()[i].dtype);
  }
  return out;
}

}  // namespace

TEST_CASE("the copy kernel's contiguous() of random strided views matches the CPU, tiled or not") {
  int tiled_plans = 0;
  for (DType dtype : element_dtypes()) {
    for (int round = 0; round < 10; ++round) {
      const Tensor view = random_view(test::random_shape(4, 70), dtype);
      const Tensor want = view.contiguous();
      CopyPlan plan;
      check_bytes(contiguous_by_kernel(view, true, &plan), want);
      tiled_plans += any_tiled(plan) ? 1 : 0;
      check_bytes(contiguous_by_kernel(view, false), want);
    }
  }
  CHECK(tiled_plans > 10);  // the random views did exercise the tiled path
}

TEST_CASE("transposes are planned as tiles, with partial tiles, batch dims and narrowed views") {
  for (DType dtype : {DType::U8, DType::BF16, DType::F32, DType::F64}) {
    CAPTURE(dtype);
    // A plain matrix transpose whose sides are not multiples of the tile.
    const Tensor m = test::random_tensor({67, 45}, dtype);
    CopyPlan plan;
    check_bytes(contiguous_by_kernel(m.transpose(0, 1), true, &plan),
                m.transpose(0, 1).contiguous());
    REQUIRE(plan.copies.size() == 1);
    CHECK(plan.copies[0].tiled);
    CHECK(plan.copies[0].word == static_cast<int>(element_size(dtype)));
    CHECK(plan.blocks == 3 * 2);  // ceil(67/32) x ceil(45/32)
    // Batch dims on both sides of the swapped pair, and a narrowed source.
    const Tensor b = test::random_tensor({3, 40, 5, 37}, dtype).narrow(1, 3, 33);
    for (const Dims& perm :
         {Dims{0, 3, 2, 1}, Dims{3, 0, 1, 2}, Dims{2, 3, 0, 1}, Dims{1, 0, 3, 2}}) {
      CAPTURE(perm);
      const Tensor v = b.permute(perm);
      check_bytes(contiguous_by_kernel(v, true, &plan), v.contiguous());
    }
  }
  // Pairs of BF16 moved together (a contiguous inner dim folds into a 4-byte element).
  const Tensor pairs = test::random_tensor({50, 40, 2}, DType::BF16);
  CopyPlan plan;
  check_bytes(contiguous_by_kernel(pairs.permute({1, 0, 2}), true, &plan),
              pairs.permute({1, 0, 2}).contiguous());
  REQUIRE(plan.copies.size() == 1);
  CHECK(plan.copies[0].tiled);
  CHECK(plan.copies[0].word == 4);
}

TEST_CASE("copies the tile cannot serve stay element-wise") {
  CopyPlan plan;
  // Too narrow to be worth a tile.
  const Tensor thin = test::random_tensor({300, 8}, DType::F32);
  check_bytes(contiguous_by_kernel(thin.transpose(0, 1), true, &plan),
              thin.transpose(0, 1).contiguous());
  CHECK_FALSE(any_tiled(plan));
  // Elements wider than 8 bytes.
  const Tensor wide = test::random_tensor({40, 40, 3}, DType::F64);
  check_bytes(contiguous_by_kernel(wide.permute({1, 0, 2}), true, &plan),
              wide.permute({1, 0, 2}).contiguous());
  CHECK_FALSE(any_tiled(plan));
  // A source misaligned for its element (a byte view of F32 data starting one byte in).
  Tensor bytes = test::random_tensor({40 * 41 * 4 + 1}, DType::U8);
  Storage storage = bytes.storage();
  const Tensor odd = Tensor::from_storage(storage, DType::U8, {40, 41 * 4}, 1);
  check_bytes(contiguous_by_kernel(odd.narrow(1, 0, 40 * 4).view({40, 40, 4}).permute({1, 0, 2}),
                                   true, &plan),
              odd.narrow(1, 0, 40 * 4).view({40, 40, 4}).permute({1, 0, 2}).contiguous());
  CHECK_FALSE(any_tiled(plan));
  // A contiguous copy is one packed run of 16-byte words.
  const Tensor flat = test::random_tensor({1000, 3}, DType::F32);
  check_bytes(contiguous_by_kernel(flat.narrow(0, 0, 999), true, &plan),
              flat.narrow(0, 0, 999).contiguous());
  REQUIRE(plan.copies.size() == 1);
  CHECK(plan.copies[0].ndim == 0);
  CHECK(plan.copies[0].word == 4);  // 999*12 bytes: a multiple of 4, not of 8
}

TEST_CASE("copies that do not coalesce below 8 dims are split and still exact") {
  const Tensor t = test::random_tensor(Shape(11, 2), DType::BF16);
  const Dims perm = {10, 8, 6, 4, 2, 0, 1, 3, 5, 7, 9};
  CopyPlan plan;
  check_bytes(contiguous_by_kernel(t.permute(perm), true, &plan), t.permute(perm).contiguous());
  CHECK(plan.copies.size() > 1);
}

TEST_CASE("many copies in one launch: each block finds its own copy") {
  // Stack of 300 tensors of different layouts into one poisoned output, in one plan.
  std::vector<Tensor> parts;
  for (int i = 0; i < 300; ++i) {
    const Tensor t = test::random_tensor({test::randint(17, 40), 33}, DType::BF16).narrow(0, 0, 17);
    parts.push_back(i % 3 == 0 ? t
                               : (i % 3 == 1 ? t.transpose(0, 1).contiguous().transpose(0, 1)
                                             : t.narrow(1, 0, 33)));
  }
  const Tensor want = stack(parts, 1);
  Tensor out = poisoned(want.shape(), DType::BF16);
  std::vector<CopyArgs> args;
  args.reserve(parts.size());
  for (size_t i = 0; i < parts.size(); ++i)
    args.push_back(copy_args(out.select(1, static_cast<int64_t>(i)), parts[i]));
  std::vector<StridedCopyAnyRank> copies;
  for (size_t i = 0; i < parts.size(); ++i) {
    copies.push_back(as_copy(args[i], out.select(1, static_cast<int64_t>(i)), parts[i]));
  }
  const CopyPlan plan = plan_copies(copies.data(), copies.size());
  CHECK(plan.copies.size() == 300);
  run_copy_kernel_on_cpu(plan);
  check_bytes(out, want);
}

TEST_CASE("empty copies plan nothing") {
  const Tensor t = test::random_tensor({0, 5}, DType::F32);
  CopyPlan plan;
  (void)contiguous_by_kernel(t.transpose(0, 1), true, &plan);
  CHECK(plan.copies.empty());
  CHECK(plan.blocks == 0);
}

namespace {

// Runs every work item of the cast launch, as cast_kernel does; returns whether it was vectorized.
bool cast_by_kernel(const std::byte* src, DType src_dtype, std::byte* dst, DType dst_dtype,
                    int64_t count) {
  bool vector = false;
  d9d::numerics::visit_element_type(src_dtype, [&](auto s) {
    d9d::numerics::visit_element_type(dst_dtype, [&](auto d) {
      using S = decltype(s);
      using D = decltype(d);
      vector = cast_vectorizable<D, S>(src, dst);
      const int64_t items = cast_items<D, S>(count, vector);
      for (int64_t i = 0; i < items; ++i) cast_item<D, S>(src, dst, count, i, vector);
    });
  });
  return vector;
}

}  // namespace

TEST_CASE("the cast kernel converts every dtype pair as the CPU does, vectorized or not") {
  for (DType from : element_dtypes()) {
    for (DType to : element_dtypes()) {
      if (to == from) continue;  // Tensor::to returns the tensor itself; the kernel never sees it
      CAPTURE(from);
      CAPTURE(to);
      // Lengths around the vector width, and a start one element in (misaligned for 16 bytes).
      for (int64_t count : {int64_t{1}, int64_t{15}, int64_t{16}, int64_t{17}, int64_t{515}}) {
        for (int64_t skip : {int64_t{0}, int64_t{1}}) {
          const Tensor src = test::random_tensor({count + skip}, from).narrow(0, skip, count);
          const Tensor want = src.to(to);
          Tensor got = poisoned({count + skip + kGuard}, to).narrow(0, skip, count);
          const bool vector =
              cast_by_kernel(static_cast<const std::byte*>(src.data_ptr()), from,
                             static_cast<std::byte*>(got.mutable_data_ptr()), to, count);
          CHECK(vector == (skip == 0));  // one element in is off 16-byte alignment for every dtype
          check_bytes(got, want);
          CHECK(guard_intact(got, kGuard));
        }
      }
    }
  }
}

namespace {

// One dequantization, with the layout the kernel is handed written out here from the formats (not
// taken from core), so a layout core computed differently shows up as different bytes.
struct DequantCase {
  const char* what;
  Dequantization how;
  Shape source, scale;
  DType scale_dtype;
  std::optional<Shape> global;
  d9d::numerics::DequantLayout layout;
};

std::vector<DequantCase> dequant_cases() {
  using F = QuantFormat;
  auto how = [](F f, int64_t br = 128, int64_t bc = 128, std::optional<GlobalScaleMode> m = {}) {
    Dequantization h;
    h.format = f;
    h.block_rows = br;
    h.block_cols = bc;
    h.global_scale_mode = m;
    return h;
  };
  // layout: rows, cols, matrix_rows, block_rows, block_cols, scale_rows, scale_cols, global_rows
  return {
      {"fp8_block ragged",
       how(F::kFp8Block, 64, 32),
       {3, 130, 70},
       {3, 3, 3},
       DType::BF16,
       {},
       {390, 70, 130, 64, 32, 3, 3, 0}},
      {"fp8_block whole blocks",
       how(F::kFp8Block),
       {256, 128},
       {2, 1},
       DType::F32,
       {},
       {256, 128, 256, 128, 128, 2, 1, 0}},
      {"fp8_channel",
       how(F::kFp8Channel),
       {33, 64},
       {33, 1},
       DType::F16,
       {},
       {33, 64, 1, 1, 64, 1, 1, 0}},
      {"fp8_channel per tensor",
       how(F::kFp8Channel),
       {70, 9},
       {},
       DType::F32,
       {},
       {70, 9, 70, 70, 9, 1, 1, 0}},
      {"mxfp4 gpt-oss blocks",
       how(F::kMxfp4),
       {4, 9, 2, 16},
       {4, 9, 2},
       DType::U8,
       {},
       {36, 64, 1, 1, 32, 1, 2, 0}},
      {"mxfp4 packed, ragged",
       how(F::kMxfp4),
       {5, 7},
       {5, 1},
       DType::F8_E8M0,
       {},
       {5, 14, 1, 1, 32, 1, 1, 0}},
      {"nvfp4 per-matrix global, divide",
       how(F::kNvfp4, 128, 128, GlobalScaleMode::kDivide),
       {2, 3, 9},
       {2, 3, 2},
       DType::F8_E4M3,
       Shape{2},
       {6, 18, 1, 1, 16, 1, 2, 3}},
      {"nvfp4 global, multiply",
       how(F::kNvfp4, 128, 128, GlobalScaleMode::kMultiply),
       {64, 8},
       {64, 1},
       DType::F8_E4M3,
       Shape{},
       {64, 16, 1, 1, 16, 1, 1, 64}},
      {"nvfp4 no global",
       how(F::kNvfp4),
       {64, 8},
       {64, 1},
       DType::F8_E4M3,
       {},
       {64, 16, 1, 1, 16, 1, 1, 0}},
  };
}

}  // namespace

TEST_CASE("the dequantize kernel gives the CPU's bytes for every format, vectorized or not") {
  for (const DequantCase& c : dequant_cases()) {
    const bool fp8 =
        c.how.format == QuantFormat::kFp8Block || c.how.format == QuantFormat::kFp8Channel;
    const DType source_dtype = fp8 ? DType::F8_E4M3 : DType::U8;
    for (DType out_dtype : {DType::BF16, DType::F16, DType::F32}) {
      for (int64_t skip : {int64_t{0}, int64_t{1}}) {
        CAPTURE(c.what);
        CAPTURE(out_dtype);
        CAPTURE(skip);
        Dequantization how = c.how;
        how.dtype = out_dtype;
        const int64_t n = numel_of(c.source);
        const Tensor source =
            test::random_tensor({n + skip}, source_dtype).narrow(0, skip, n).view(c.source);
        const Tensor scale = test::random_tensor(c.scale, c.scale_dtype);
        const Tensor global = c.global ? test::random_tensor(*c.global, DType::F32) : Tensor();
        const Tensor want = dequantize(source, scale, how, global);
        REQUIRE(want.numel() == c.layout.rows * c.layout.cols);
        Tensor got = poisoned({want.numel() + kGuard}, out_dtype).narrow(0, 0, want.numel());
        const Tensor scale_arg = fp8 ? scale.to(DType::F32) : scale;
        const DequantArgs args =
            dequant_args(how.format, c.layout, static_cast<const std::byte*>(source.data_ptr()),
                         static_cast<const std::byte*>(scale_arg.data_ptr()),
                         c.global ? static_cast<const float*>(global.data_ptr()) : nullptr,
                         how.global_scale_mode.value_or(GlobalScaleMode::kMultiply),
                         static_cast<std::byte*>(got.mutable_data_ptr()), out_dtype);
        CHECK(args.vector == (skip == 0 && c.layout.cols % kDequantItem == 0));
        for (int64_t i = 0; i < args.items; ++i) dequantize_item_any(args, i);
        check_bytes(got, want.reshape({want.numel()}));
        CHECK(guard_intact(got, kGuard));
      }
    }
  }
}
