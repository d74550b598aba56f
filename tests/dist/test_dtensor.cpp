// Placement, distribute_tensor, full_tensor, DTensor in a StateDict and the dtensor mappers.
#include "helpers.hpp"

namespace d9d::dist::test {
namespace {

TEST_CASE("placements print and compare as PyTorch's") {
  CHECK(Placement(Shard{1}).str() == "Shard(dim=1)");
  CHECK(Placement(Replicate{}).str() == "Replicate()");
  CHECK(Placement() == Placement(Replicate{}));
  CHECK(Placement(Shard{0}) != Placement(Shard{1}));
  CHECK(Placement(Shard{0}).is_shard(0));
  CHECK_THROWS_AS(Placement(Replicate{}).dim(), ValueError);
  const std::vector<Placement> two = {Shard{0}, Replicate{}};
  CHECK(to_string(two) == "(Shard(dim=0), Replicate())");
  CHECK(to_string(std::vector<Placement>{Shard{-1}}) == "(Shard(dim=-1),)");
}

// Port of the reference's test_dtensor_mapper_logic: a 4x2 tensor, Shard(0) over the 2 ranks of
// the dp_replicate dim of a pp x dp_replicate mesh.
TEST_CASE(
    "distribute a 4x2 tensor with Shard(0) over 2 ranks, then gather it "
    "(test_dtensor_mapper_logic)") {
  ProcessGroup& g = world();
  if (g.size() % 2 != 0) return;
  const DeviceMesh mesh(dist::world(), {g.size() / 2, 2}, {"pp", "dp_replicate"});
  const DeviceMesh dp_mesh = mesh["dp_replicate"];
  const Tensor full_tensor = Tensor::arange(8, DType::F32).reshape({4, 2});
  mapper::MapperPtr mapper_dist = mapper::distribute("w", dp_mesh, {Shard{0}});
  const mapper::StateDict res = mapper_dist->apply({{"w", full_tensor}});
  const std::optional<DTensor> w = as_dtensor(res.at("w"));
  REQUIRE(w.has_value());
  CHECK(w->local().shape() == Shape{2, 2});
  CHECK(w->shape() == Shape{4, 2});
  CHECK(w->placements() == std::vector<Placement>{Shard{0}});
  CHECK(w->device_mesh() == dp_mesh);
  CHECK(equal(w->local(), full_tensor.narrow(0, 2 * dp_mesh.get_local_rank(), 2)));

  mapper::MapperPtr mapper_gather = mapper::gather_full_tensor("w");
  const mapper::StateDict back = mapper_gather->apply({{"w", res.at("w")}});
  CHECK_FALSE(is_dtensor(back.at("w")));
  CHECK(equal(back.at("w"), full_tensor));
}

TEST_CASE("uneven shards follow torch.chunk: size 5 over 4 ranks is 2, 2, 1, 0") {
  ProcessGroup& g = world();
  const DeviceMesh mesh(dist::world(), {g.size()});
  for (int64_t size = 0; size <= 2 * g.size() + 1; ++size) {
    const Tensor x = Tensor::arange(size * 3, DType::I64).reshape({size, 3});
    const DTensor d = distribute_tensor(x, mesh, {Shard{0}});
    const std::vector<Tensor> pieces = chunk(x.numel() > 0 ? x : x, g.size(), 0);
    const auto r = static_cast<size_t>(g.rank());
    if (size > 0 && r < pieces.size()) {
      CHECK(equal(d.local(), pieces[r]));
    } else {
      CHECK(d.local().shape() == Shape{0, 3});
    }
    const LocalSlice slice = compute_local_shape_and_global_offset(x.shape(), mesh, {Shard{0}});
    CHECK(slice.shape == d.local().shape());
    CHECK(equal(d.full_tensor(), x));
  }
}

// Random shapes, dtypes and placements on every mesh the world can make: gathering a distributed
// tensor gives the tensor back, and each rank's local piece is what chunk gives it.
TEST_CASE("full_tensor(distribute_tensor(x)) == x for random shapes, uneven sizes and N-D meshes") {
  ProcessGroup& g = world();
  const ProcessGroupPtr w = dist::world();
  std::vector<DeviceMesh> meshes{DeviceMesh(w, {g.size()})};
  for (int64_t a = 2; a < g.size(); ++a) {
    if (g.size() % a == 0) meshes.emplace_back(w, std::vector<int64_t>{a, g.size() / a});
  }
  if (g.size() == 8) meshes.emplace_back(w, std::vector<int64_t>{2, 2, 2});
  std::mt19937_64 rng(1234);  // the same draws on every rank
  const DType dtypes[] = {DType::F32, DType::BF16, DType::U8, DType::I64, DType::F64};
  int cases = 0;
  for (const DeviceMesh& mesh : meshes) {
    for (int trial = 0; trial < 40; ++trial) {
      const int64_t ndim = static_cast<int64_t>(rng() % 4);
      Shape shape;
      for (int64_t d = 0; d < ndim; ++d) shape.push_back(static_cast<int64_t>(rng() % 7));
      std::vector<Placement> placements;
      const int64_t count =
          static_cast<int64_t>(rng() % (mesh.ndim() + 1));  // padded with Replicate
      for (int64_t i = 0; i < count; ++i) {
        if (ndim == 0 || rng() % 3 == 0) {
          placements.emplace_back(Replicate{});
        } else {
          const auto d = static_cast<int64_t>(rng() % static_cast<uint64_t>(ndim));
          placements.emplace_back(Shard{rng() % 2 ? d : d - ndim});  // negative dims too
        }
      }
      const Tensor x = random_tensor(shape, dtypes[rng() % 5], rng());
      const DTensor d = distribute_tensor(x, mesh, placements);
      CAPTURE(mesh.str());
      CAPTURE(to_string(placements));
      CAPTURE(x.str());
      // The local piece: chunk after chunk, mesh dim by mesh dim.
      Tensor expect = x;
      for (size_t i = 0; i < d.placements().size(); ++i) {
        if (!d.placements()[i].is_shard()) continue;
        const int64_t dim = d.placements()[i].dim();
        const int64_t n = mesh.size(static_cast<int64_t>(i));
        const int64_t at = mesh.get_local_rank(static_cast<int64_t>(i));
        const int64_t piece = (expect.size(dim) + n - 1) / n;
        const int64_t start = std::min(at * piece, expect.size(dim));
        expect = expect.narrow(dim, start, std::min(piece, expect.size(dim) - start));
      }
      CHECK(equal(d.local(), expect));
      CHECK(d.shape() == x.shape());
      const Tensor back = d.full_tensor();
      CHECK(equal(back, x));
      CHECK(back.is_contiguous());
      // from_local of the same piece is the same DTensor.
      const DTensor again = DTensor::from_local(d.local(), mesh, placements, x.shape());
      CHECK(equal(again.full_tensor(), x));
      ++cases;
    }
  }
  CHECK(cases > 0);
}

TEST_CASE("Shard on the same dim twice splits a rank's piece again, as PyTorch does") {
  ProcessGroup& g = world();
  if (g.size() != 4) return;
  const DeviceMesh mesh(dist::world(), {2, 2});
  const Tensor x = Tensor::arange(10, DType::I32);
  const DTensor d = distribute_tensor(x, mesh, {Shard{0}, Shard{0}});
  // [0..5) and [5..10), each split in [3, 2]: rank 0 [0,3), 1 [3,5), 2 [5,8), 3 [8,10).
  const int64_t starts[] = {0, 3, 5, 8};
  const int64_t lengths[] = {3, 2, 3, 2};
  CHECK(equal(d.local(), x.narrow(0, starts[g.rank()], lengths[g.rank()])));
  CHECK(equal(d.full_tensor(), x));
}

TEST_CASE("a DTensor travels through a StateDict as a Tensor carrying its spec") {
  ProcessGroup& g = world();
  const DeviceMesh mesh(dist::world(), {g.size()}, {"dp"});
  const Tensor x = Tensor::arange(3 * g.size() + 1, DType::F32).reshape({-1, 1});
  const DTensor d = distribute_tensor(x, mesh, {Shard{0}});
  const Tensor t = d.as_tensor();
  CHECK(is_dtensor(t));
  CHECK(t.shape() == d.local().shape());  // the bytes are the local ones
  CHECK(global_shape(t) == x.shape());
  CHECK(mapper::TensorSpec::of(t) == mapper::TensorSpec{DType::F32, x.shape()});
  CHECK_FALSE(is_dtensor(t.contiguous().transpose(0, 1)));  // a view is a plain tensor
  CHECK_FALSE(is_dtensor(d.local()));
  // distribute_tensor of a DTensor: the same one for the same layout, an error otherwise.
  CHECK(distribute_tensor(t, mesh, {Shard{0}}).local().data_ptr() == d.local().data_ptr());
  CHECK_THROWS_WITH_AS(distribute_tensor(t, mesh, {Replicate{}}),
                       doctest::Contains("redistributing is not supported"), ValueError);
  // from_local checks the piece's shape.
  CHECK_THROWS_AS(
      DTensor::from_local(Tensor::zeros({100, 1}, DType::F32), mesh, {Shard{0}}, x.shape()),
      ValueError);
  CHECK_THROWS_AS(distribute_tensor(x, mesh, {Shard{2}}), IndexError);
  CHECK_THROWS_AS(distribute_tensor(x, mesh, {Shard{0}, Shard{1}}), ValueError);  // 1-D mesh
  // dist::zeros: a target of the right local shape.
  const DTensor z = dist::zeros(x.shape(), DType::F32, mesh, {Shard{0}});
  CHECK(z.local().shape() == d.local().shape());
  CHECK(equal(z.full_tensor(), Tensor::zeros(x.shape(), DType::F32)));
}

TEST_CASE("save_model_state gathers DTensor states first, as the reference does") {
  ProcessGroup& g = world();
  SharedTempDir tmp;
  const DeviceMesh mesh(dist::world(), {g.size()});
  const Tensor x = random_tensor({7, 5}, DType::BF16, 7);
  const Tensor y = random_tensor({3}, DType::F32, 8);
  const mapper::StateDict state{{"x", distribute_tensor(x, mesh, {Shard{1}}).as_tensor()},
                                {"y", y}};
  // Every rank gathers; each writes its own copy here (the same bytes).
  const fs::path dest = tmp / ("rank" + std::to_string(g.rank()));
  model_state::save_model_state(dest, mapper::identity_mapper_from_state(state), state,
                                quiet_write());
  const io::Checkpoint back = io::Checkpoint::open(dest);
  CHECK(equal(back.load("x"), x));
  CHECK(equal(back.load("y"), y));
  // The writers refuse a DTensor that reaches them.
  CHECK_THROWS_WITH_AS(
      model_state::write_model_state_local(tmp / ("bad" + std::to_string(g.rank())),
                                           mapper::identity("x"), state, quiet_write()),
      doctest::Contains("gather it first"), ValueError);
}

}  // namespace
}  // namespace d9d::dist::test
