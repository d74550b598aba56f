// cast_tool SRC_DTYPE DST_DTYPE IN OUT: converts the raw elements in file IN (packed SRC_DTYPE)
// with Tensor::to and writes the raw result to OUT.
// cast_tool --traits: prints the dtype table's value traits, one dtype a line, doubles as C
// hexfloats: NAME IS_SIGNED PRECISION MAX_FINITE MIN_POSITIVE HAS_ZERO HAS_NEG_ZERO HAS_INF
// HAS_NAN. Both are used by cast_oracle.py.
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <d9d/core.hpp>

namespace {

void print_traits() {
  for (int i = 0; i < d9d::kNumDTypes; ++i) {
    const d9d::DTypeInfo& t = d9d::all_dtypes()[i];
    std::printf("%s %d %d %a %a %d %d %d %d\n", std::string(t.name).c_str(), t.is_signed,
                t.precision, t.max_finite, t.min_positive, t.has_zero, t.has_neg_zero, t.has_inf,
                t.has_nan);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "--traits") {
    print_traits();
    return 0;
  }
  if (argc != 5) {
    std::fprintf(stderr, "usage: cast_tool SRC_DTYPE DST_DTYPE IN OUT | cast_tool --traits\n");
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
