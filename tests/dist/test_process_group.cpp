// ProcessGroup's collectives, agreement, and DeviceMesh.
#include <numeric>

#include "helpers.hpp"

namespace d9d::dist::test {
namespace {

// Rank r's tensor for the uneven tests: r + 1 rows (rank 0 one row), values that name the rank.
Tensor rows_of(int rank, int64_t cols, DType dtype = DType::I32) {
  std::vector<int32_t> values(static_cast<size_t>((rank + 1) * cols));
  std::iota(values.begin(), values.end(), rank * 1000);
  return Tensor::from_vector(values, {rank + 1, cols}).to(dtype);
}

TEST_CASE("all_gather returns every rank's tensor in rank order, uneven shapes included") {
  ProcessGroup& g = world();
  const std::vector<Tensor> all = g.all_gather(rows_of(g.rank(), 3));
  REQUIRE(static_cast<int>(all.size()) == g.size());
  for (int r = 0; r < g.size(); ++r) CHECK(equal(all[static_cast<size_t>(r)], rows_of(r, 3)));
  // A strided input is sent packed.
  const Tensor t = rows_of(g.rank(), 4).transpose(0, 1);
  const std::vector<Tensor> strided = g.all_gather(t);
  for (int r = 0; r < g.size(); ++r) {
    CHECK(equal(strided[static_cast<size_t>(r)], rows_of(r, 4).transpose(0, 1).contiguous()));
  }
  // Scalars and empty tensors.
  const std::vector<Tensor> scalars =
      g.all_gather(Tensor::full<double>({}, g.rank() + 0.5, DType::F64));
  for (int r = 0; r < g.size(); ++r)
    CHECK(scalars[static_cast<size_t>(r)].item<double>() == r + 0.5);
  for (const Tensor& e : g.all_gather(Tensor::zeros({0, 5}, DType::BF16))) {
    CHECK(e.shape() == Shape{0, 5});
  }
}

TEST_CASE("all_gather into preallocated outputs: direct when back to back, staged otherwise") {
  ProcessGroup& g = world();
  // Back to back in one buffer: received in place.
  int64_t total_rows = 0;
  for (int r = 0; r < g.size(); ++r) total_rows += r + 1;
  const Tensor whole = Tensor::zeros({total_rows, 2}, DType::I32);
  std::vector<Tensor> views;
  int64_t row = 0;
  for (int r = 0; r < g.size(); ++r) {
    views.push_back(whole.narrow(0, row, r + 1));
    row += r + 1;
  }
  g.all_gather(views, rows_of(g.rank(), 2));
  std::vector<Tensor> expected;
  for (int r = 0; r < g.size(); ++r) expected.push_back(rows_of(r, 2));
  CHECK(equal(whole, cat(expected, 0)));
  // Separate, strided outputs.
  std::vector<Tensor> outputs;
  for (int r = 0; r < g.size(); ++r) {
    outputs.push_back(Tensor::zeros({2, r + 1}, DType::I32).transpose(0, 1));
  }
  g.all_gather(outputs, rows_of(g.rank(), 2));
  for (int r = 0; r < g.size(); ++r) CHECK(equal(outputs[static_cast<size_t>(r)], rows_of(r, 2)));
  // This rank's output must match its input.
  std::vector<Tensor> wrong = outputs;
  wrong[static_cast<size_t>(g.rank())] = Tensor::zeros({9, 9}, DType::I32);
  CHECK_THROWS_AS(g.all_gather(wrong, rows_of(g.rank(), 2)), ValueError);
}

TEST_CASE("all_gather_into_tensor concatenates along dim 0, with or without uneven sizes") {
  ProcessGroup& g = world();
  const Tensor even = Tensor::empty({2 * g.size(), 3}, DType::F32);
  g.all_gather_into_tensor(even,
                           Tensor::full<float>({2, 3}, static_cast<float>(g.rank()), DType::F32));
  for (int r = 0; r < g.size(); ++r) {
    CHECK(equal(even.narrow(0, 2 * r, 2),
                Tensor::full<float>({2, 3}, static_cast<float>(r), DType::F32)));
  }
  std::vector<int64_t> sizes;
  std::vector<Tensor> expected;
  for (int r = 0; r < g.size(); ++r) {
    sizes.push_back(r + 1);
    expected.push_back(rows_of(r, 3));
  }
  const Tensor uneven =
      Tensor::empty({std::accumulate(sizes.begin(), sizes.end(), int64_t{0}), 3}, DType::I32);
  g.all_gather_into_tensor(uneven, rows_of(g.rank(), 3), sizes);
  CHECK(equal(uneven, cat(expected, 0)));
  const Tensor too_long = Tensor::empty({uneven.size(0) + 1, 3}, DType::I32);
  CHECK_THROWS_AS(g.all_gather_into_tensor(too_long, rows_of(g.rank(), 3), sizes), ValueError);
}

TEST_CASE("broadcast and broadcast_object take the root's value; all_gather_object every rank's") {
  ProcessGroup& g = world();
  for (int root = 0; root < g.size(); ++root) {
    const Tensor t = Tensor::full<int64_t>({3, 1000}, g.rank() * 7, DType::I64);
    g.broadcast(t, root);
    CHECK(equal(t, Tensor::full<int64_t>({3, 1000}, root * 7, DType::I64)));
    const std::string s =
        g.broadcast_object(std::string(static_cast<size_t>(g.rank()) * 3, 'x') + "!", root);
    CHECK(s == std::string(static_cast<size_t>(root) * 3, 'x') + "!");
  }
  // Objects of any bytes and sizes, empty ones too.
  const std::string mine = g.rank() % 2 ? "" : std::string("\0rank ", 6) + std::to_string(g.rank());
  const std::vector<std::string> all = g.all_gather_object(mine);
  for (int r = 0; r < g.size(); ++r) {
    CHECK(all[static_cast<size_t>(r)] ==
          (r % 2 ? "" : std::string("\0rank ", 6) + std::to_string(r)));
  }
  CHECK_THROWS_AS(g.broadcast(Tensor::zeros({2, 2}, DType::F32).transpose(0, 1), 0), ValueError);
  g.barrier();
}

TEST_CASE("split groups ranks by color and orders them by key") {
  ProcessGroup& g = world();
  // Odd and even ranks, each group in reverse order.
  const ProcessGroupPtr half = g.split(g.rank() % 2, -g.rank());
  REQUIRE(half != nullptr);
  const int members = (g.size() + 1 - g.rank() % 2) / 2;
  CHECK(half->size() == members);
  const std::vector<std::string> names = half->all_gather_object(std::to_string(g.rank()));
  for (size_t i = 1; i < names.size(); ++i) CHECK(std::stoi(names[i - 1]) > std::stoi(names[i]));
  CHECK(half->timeout() == g.timeout());
  // A negative color joins nothing.
  const ProcessGroupPtr none = g.split(g.rank() == 0 ? -1 : 0, g.rank());
  CHECK((none == nullptr) == (g.rank() == 0));
}

TEST_CASE("agree_on_error gives every rank the first failure, or nothing") {
  ProcessGroup& g = world();
  CHECK(agree_on_error(g, "").empty());
  const std::string last = agree_on_error(g, g.rank() == g.size() - 1 ? "disk full" : "");
  CHECK(last == "rank " + std::to_string(g.size() - 1) + ": disk full");
  const std::string all = agree_on_error(g, "bad " + std::to_string(g.rank()));
  if (g.size() == 1) {
    CHECK(all == "rank 0: bad 0");
  } else {
    CHECK(all.rfind("rank 0: bad 0 (and ", 0) == 0);
  }
}

TEST_CASE("tensors must live where the backend moves them") {
  ProcessGroup& g = world();
  CHECK(g.device() == Device::cpu());
  CHECK_THROWS_AS(g.all_gather(Tensor()), ValueError);
  if (cuda_device_count() > 0) {
    CHECK_THROWS_AS(g.all_gather(Tensor::zeros({2}, DType::F32, Device::cuda(0))), DeviceError);
  }
}

TEST_CASE("init returns the one world; launched() says whether mpirun started the process") {
  CHECK(dist::init().get() == &world());
  CHECK(dist::world().get() == &world());
  CHECK(dist::is_initialized());
  CHECK(launched() == (world().backend() == Backend::kMpi));
  if (world().size() > 1) CHECK_THROWS_AS(dist::init(Backend::kLocal), ValueError);
  CHECK(backend_name(world().backend()) == (launched() ? "mpi" : "local"));
  CHECK(local_rank() >= 0);
}

// ---- DeviceMesh ---------------------------------------------------------------------------------

TEST_CASE("a device mesh lays the ranks out row-major; sub-meshes share the dim groups") {
  ProcessGroup& g = world();
  const ProcessGroupPtr w = dist::world();
  const int64_t n = g.size();
  const int64_t a = n % 2 == 0 ? n / 2 : n;
  const int64_t b = n / a;
  const DeviceMesh mesh(w, {a, b}, {"pp", "dp"});
  CHECK(mesh.ndim() == 2);
  CHECK(mesh.size() == n);
  CHECK(mesh.shape() == std::vector<int64_t>{a, b});
  CHECK(mesh.get_rank() == g.rank());
  CHECK(mesh.get_coordinate() == std::vector<int64_t>{g.rank() / b, g.rank() % b});
  CHECK(mesh.get_local_rank("pp") == g.rank() / b);
  CHECK(mesh.get_local_rank(1) == g.rank() % b);
  CHECK(mesh.get_group("pp")->size() == a);
  CHECK(mesh.get_group("pp")->rank() == g.rank() / b);
  CHECK(mesh.get_group(1)->size() == b);
  // The ranks along "pp" with this rank's dp, and along "dp" with its pp.
  const DeviceMesh pp = mesh["pp"];
  std::vector<int> along_pp;
  for (int64_t i = 0; i < a; ++i) along_pp.push_back(static_cast<int>(i * b + g.rank() % b));
  CHECK(pp.ranks() == along_pp);
  CHECK(pp.get_local_rank() == g.rank() / b);
  CHECK(pp.get_group().get() == mesh.get_group("pp").get());
  CHECK(pp.get_rank() == g.rank());
  CHECK(mesh[std::vector<std::string>{"pp", "dp"}] == mesh);
  CHECK(mesh["dp"] == mesh["dp"]);
  CHECK_FALSE(mesh["dp"] == mesh["pp"]);
  // The dp group really holds the ranks mesh["dp"] lists.
  std::vector<std::string> members =
      mesh.get_group("dp")->all_gather_object(std::to_string(g.rank()));
  const DeviceMesh dp = mesh["dp"];
  for (size_t i = 0; i < members.size(); ++i) CHECK(std::stoi(members[i]) == dp.ranks()[i]);
  // Mistakes.
  CHECK_THROWS_WITH_AS(mesh["tp"], doctest::Contains("no dim is named 'tp'"), ValueError);
  const std::vector<std::string> reversed{"dp", "pp"};
  CHECK_THROWS_AS(mesh[reversed], ValueError);    // out of the mesh's order
  CHECK_THROWS_AS(mesh.get_group(), ValueError);  // 2-D
  CHECK_THROWS_AS(DeviceMesh(w, {n + 1}), ValueError);
  CHECK_THROWS_AS(DeviceMesh(w, {n}, {"a", "b"}), ValueError);
  CHECK(DeviceMesh(w, {n}).mesh_dim_names().empty());
}

TEST_CASE("a 3-D mesh: coordinates, slices of two dims, and one group per dim") {
  ProcessGroup& g = world();
  if (g.size() != 8) return;
  const DeviceMesh mesh(dist::world(), {2, 2, 2}, {"pp", "ep", "dp"});
  const std::vector<int64_t> c = mesh.get_coordinate();
  CHECK(c == std::vector<int64_t>{g.rank() / 4, g.rank() / 2 % 2, g.rank() % 2});
  const DeviceMesh pd = mesh[std::vector<std::string>{"pp", "dp"}];
  std::vector<int> expected;
  for (int p = 0; p < 2; ++p) {
    for (int d = 0; d < 2; ++d) expected.push_back(p * 4 + static_cast<int>(c[1]) * 2 + d);
  }
  CHECK(pd.ranks() == expected);
  CHECK(pd.get_coordinate() == std::vector<int64_t>{c[0], c[2]});
  for (int64_t d = 0; d < 3; ++d) CHECK(mesh.get_group(d)->size() == 2);
  CHECK(mesh.str() == "DeviceMesh((pp=2, ep=2, dp=2), ranks=[0, 1, 2, 3, 4, 5, 6, 7])");
}

}  // namespace
}  // namespace d9d::dist::test
