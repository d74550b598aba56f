// Test helpers shared by the tests of model_state and dist: read and write options for tests.
#pragma once

#include <d9d/model_state/reader.hpp>
#include <d9d/model_state/writer.hpp>

namespace d9d::test {

// No progress bar and no fsync: output a test reads back at once, in a scratch directory.
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

}  // namespace d9d::test
