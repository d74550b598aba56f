// Test helpers for dist: the world, a directory every rank shares, deterministic random tensors.
// Every test case is collective: each rank runs the same cases in the same order (doctest's), and
// a case that needs a certain number of ranks returns early on every rank otherwise.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>

#include <doctest/doctest.h>

#include <d9d/d9d.hpp>

namespace d9d::dist::test {

namespace fs = std::filesystem;

inline ProcessGroup& world() {
  return *dist::init();
}

// A fresh directory made by rank 0 and named to every rank; rank 0 removes it once every rank is
// done with it.
class SharedTempDir {
 public:
  SharedTempDir() {
    static std::atomic<int> counter{0};
    std::string name;
    if (world().rank() == 0) {
      path_ = fs::temp_directory_path() /
              ("d9d-dist-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
      fs::remove_all(path_);
      fs::create_directories(path_);
      name = path_.string();
    }
    path_ = world().broadcast_object(name, 0);
  }
  SharedTempDir(const SharedTempDir&) = delete;
  SharedTempDir& operator=(const SharedTempDir&) = delete;
  ~SharedTempDir() {
    world().barrier();
    if (world().rank() == 0) {
      std::error_code ignored;
      fs::remove_all(path_, ignored);
    }
  }
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

inline std::set<std::string> files_in(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

inline std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Random bytes: the same on every rank for the same seed.
inline Tensor random_tensor(const Shape& shape, DType dtype, uint64_t seed) {
  Tensor t = Tensor::empty(shape, dtype);
  std::mt19937_64 gen(seed);
  auto* p = static_cast<unsigned char*>(t.mutable_data_ptr());
  for (int64_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<unsigned char>(gen());
  return t;
}

inline model_state::WriteOptions quiet_write() {
  model_state::WriteOptions o;
  o.show_progress = false;
  o.fsync = false;
  return o;
}

inline model_state::ReadOptions quiet_read() {
  model_state::ReadOptions o;
  o.show_progress = false;
  return o;
}

}  // namespace d9d::dist::test
