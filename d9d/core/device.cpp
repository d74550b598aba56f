#include <d9d/device.hpp>

#include <charconv>
#include <ostream>

#include <d9d/error.hpp>

namespace d9d {

Device Device::cuda(int index) {
  D9D_CHECK(index >= 0, "Device::cuda: index must be non-negative, got ", index);
  return Device(DeviceType::kCuda, index);
}

Device Device::parse(std::string_view text) {
  if (text == "cpu") return cpu();
  if (text == "cuda") return cuda(0);
  constexpr std::string_view kPrefix = "cuda:";
  if (text.size() > kPrefix.size() && text.substr(0, kPrefix.size()) == kPrefix) {
    const std::string_view digits = text.substr(kPrefix.size());
    int index = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
    if (ec == std::errc() && end == digits.data() + digits.size() && digits[0] != '+' &&
        index >= 0) {
      return cuda(index);
    }
  }
  detail::throw_error<ValueError>("invalid device \"", text,
                                  "\": expected \"cpu\", \"cuda\" or \"cuda:N\"");
}

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index_);
}

std::ostream& operator<<(std::ostream& out, Device device) { return out << device.str(); }

}  // namespace d9d
