// The dist tests run as one process (a world of one) and under `mpirun -np N`: every rank runs
// every case; ranks other than 0 report failures only.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <d9d/dist/process_group.hpp>

int main(int argc, char** argv) {
  const d9d::dist::ProcessGroupPtr world = d9d::dist::init();
  doctest::Context context(argc, argv);
  if (world->rank() != 0) context.setOption("minimal", true);
  if (world->size() > 1) context.setOption("no-colors", true);  // mpirun gives a pseudo-terminal
  return context.run();
}
