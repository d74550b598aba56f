// cast_tool SRC_DTYPE DST_DTYPE IN OUT: converts the raw elements in file IN (packed SRC_DTYPE)
// with Tensor::to and writes the raw result to OUT. Used by cast_oracle.py.
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <d9d/core.hpp>

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: cast_tool SRC_DTYPE DST_DTYPE IN OUT\n");
    return 2;
  }
  try {
    const d9d::DType src = d9d::parse_dtype(argv[1]);
    const d9d::DType dst = d9d::parse_dtype(argv[2]);
    std::ifstream in(argv[3], std::ios::binary);
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), {});
    const int64_t count = static_cast<int64_t>(bytes.size()) / d9d::element_size(src);
    d9d::Tensor t = d9d::Tensor::empty({count}, src);
    if (!bytes.empty()) std::memcpy(t.mutable_data_ptr(), bytes.data(), bytes.size());
    const d9d::Tensor out = t.to(dst);
    std::ofstream(argv[4], std::ios::binary)
        .write(static_cast<const char*>(out.data_ptr()), static_cast<std::streamsize>(out.nbytes()));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cast_tool: %s\n", e.what());
    return 1;
  }
}
