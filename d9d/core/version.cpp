#include <d9d/version.hpp>

namespace d9d {

const char* version() noexcept {
  return D9D_VERSION_STRING;
}

}  // namespace d9d
