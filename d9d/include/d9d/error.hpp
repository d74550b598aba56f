// Errors and checks.
//
// Every error d9d throws derives from d9d::Error (a std::runtime_error). Its message names the
// operation, the tensors (their shapes and dtypes) or the file and key involved, and the value that
// broke the rule. D9D_CHECK* report caller errors; D9D_ASSERT guards d9d's own invariants and
// aborts, because a broken invariant is a bug in d9d, not something a caller can handle.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace d9d {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A bad argument value: a dim out of range, mismatched shapes, an impossible view.
class ValueError : public Error {
 public:
  using Error::Error;
};

// A dtype the operation does not support (sub-byte dtypes in element-wise ops, mismatched dtypes).
class TypeError : public Error {
 public:
  using Error::Error;
};

// A dim or index outside its range.
class IndexError : public Error {
 public:
  using Error::Error;
};

// A device the operation cannot use, or a failure reported by a device runtime.
class DeviceError : public Error {
 public:
  using Error::Error;
};

namespace detail {

template <class... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}

template <class E, class... Args>
[[noreturn]] void throw_error(const Args&... args) {
  throw E(str_cat(args...));
}

[[noreturn]] void assert_fail(const char* cond, const char* file, int line);

}  // namespace detail
}  // namespace d9d

// D9D_CHECK(cond, "op: what was expected", values...) throws d9d::ValueError with the streamed
// message when cond is false. The typed variants throw the named subclass.
#define D9D_CHECK_AS(ErrorType, cond, ...)                          \
  do {                                                              \
    if (!(cond)) [[unlikely]] {                                     \
      ::d9d::detail::throw_error<ErrorType>(__VA_ARGS__);           \
    }                                                               \
  } while (0)
#define D9D_CHECK(cond, ...) D9D_CHECK_AS(::d9d::ValueError, cond, __VA_ARGS__)
#define D9D_CHECK_TYPE(cond, ...) D9D_CHECK_AS(::d9d::TypeError, cond, __VA_ARGS__)
#define D9D_CHECK_INDEX(cond, ...) D9D_CHECK_AS(::d9d::IndexError, cond, __VA_ARGS__)

// An internal invariant; failing it is a d9d bug. Always on, in every build type.
#define D9D_ASSERT(cond)                                          \
  do {                                                            \
    if (!(cond)) [[unlikely]] {                                   \
      ::d9d::detail::assert_fail(#cond, __FILE__, __LINE__);      \
    }                                                             \
  } while (0)
