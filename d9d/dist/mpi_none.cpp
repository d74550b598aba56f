// Without MPI: no launcher support; the world of one still works.
#include "backends.hpp"

namespace d9d::dist::detail {

bool mpi_compiled() {
  return false;
}
bool mpi_running() {
  return false;
}
bool mpi_thread_multiple() {
  return false;
}
ProcessGroupPtr mpi_init_world() {
  throw Error("dist: this build of d9d has no MPI backend");
}
int mpi_local_rank() {
  return -1;
}
void mpi_abort(int) {}
int64_t max_message_bytes() {
  return int64_t{1} << 30;
}

}  // namespace d9d::dist::detail
