#include <d9d/error.hpp>

#include <cstdio>
#include <cstdlib>
#include <ostream>

#include <d9d/dims.hpp>

namespace d9d {
namespace detail {

void assert_fail(const char* cond, const char* file, int line) {
  std::fprintf(stderr, "d9d internal error: assertion `%s` failed at %s:%d\n", cond, file, line);
  std::abort();
}

}  // namespace detail

std::ostream& operator<<(std::ostream& out, const Dims& dims) {
  out << '[';
  for (size_t i = 0; i < dims.size(); ++i) out << (i ? ", " : "") << dims[i];
  return out << ']';
}

}  // namespace d9d
