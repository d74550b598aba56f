// Test helpers for dist: the world and a directory every rank shares (files, random tensors and
// options from common/).
// Every test case is collective: each rank runs the same cases in the same order (doctest's), and
// a case that needs a certain number of ranks returns early on every rank otherwise.
#pragma once

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <string>

#include <doctest/doctest.h>

#include <d9d/d9d.hpp>

#include "common/files.hpp"
#include "common/helpers.hpp"
#include "common/model_state.hpp"

namespace d9d::dist::test {

namespace fs = std::filesystem;
using ::d9d::test::files_in;
using ::d9d::test::quiet_read;
using ::d9d::test::quiet_write;
using ::d9d::test::random_tensor;  // the seeded form: the same bytes on every rank
using ::d9d::test::read_file;

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

}  // namespace d9d::dist::test
