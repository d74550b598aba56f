// Where a tensor's bytes live: "cpu" or "cuda:N".
#pragma once

#include <iosfwd>
#include <string>
#include <string_view>

namespace d9d {

enum class DeviceType : uint8_t { kCpu, kCuda };

class Device {
 public:
  constexpr Device() = default;
  static constexpr Device cpu() { return Device(); }
  // Throws ValueError for a negative index.
  static Device cuda(int index = 0);
  // "cpu", "cuda" (= cuda:0) or "cuda:N"; anything else throws ValueError naming the string.
  static Device parse(std::string_view text);

  constexpr DeviceType type() const { return type_; }
  constexpr int index() const { return index_; }  // 0 for cpu
  constexpr bool is_cpu() const { return type_ == DeviceType::kCpu; }
  constexpr bool is_cuda() const { return type_ == DeviceType::kCuda; }
  std::string str() const;  // "cpu" or "cuda:N"

  friend constexpr bool operator==(Device a, Device b) = default;

 private:
  constexpr Device(DeviceType type, int index) : type_(type), index_(index) {}
  DeviceType type_ = DeviceType::kCpu;
  int index_ = 0;
};

std::ostream& operator<<(std::ostream& out, Device device);

}  // namespace d9d
