// main() of the doctest programs that need a CUDA device (see cuda_main.hpp).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include <d9d/storage.hpp>

#include "cuda_main.hpp"

int main(int argc, char** argv) {
  const int devices = d9d::cuda_device_count();
  if (devices == 0) {
    std::printf("no CUDA device visible: skipped\n");
    return 77;
  }
  doctest::Context context(argc, argv);
  if (devices < 2) {
    std::printf("one CUDA device: the cases of test suite \"%s\" are skipped\n",
                d9d::test::kTwoCudaDevices);
    context.addFilter("test-suite-exclude", d9d::test::kTwoCudaDevices);
  }
  return context.run();
}
