// Dims: a small vector of int64 used for shapes and strides, stored inline up to 8 entries
// (every real checkpoint tensor), on the heap beyond.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <span>
#include <vector>

namespace d9d {

class Dims {
 public:
  static constexpr size_t kInline = 8;

  Dims() = default;
  Dims(std::initializer_list<int64_t> values) { assign(values.begin(), values.size()); }
  Dims(std::span<const int64_t> values) { assign(values.data(), values.size()); }  // NOLINT
  Dims(const std::vector<int64_t>& values) { assign(values.data(), values.size()); }  // NOLINT
  Dims(size_t count, int64_t value) {
    resize(count);
    std::fill(begin(), end(), value);
  }
  Dims(const Dims& other) { assign(other.data(), other.size()); }
  Dims& operator=(const Dims& other) {
    if (this != &other) assign(other.data(), other.size());
    return *this;
  }
  Dims(Dims&& other) noexcept { *this = std::move(other); }
  Dims& operator=(Dims&& other) noexcept {
    if (this != &other) {
      size_ = other.size_;
      if (size_ > kInline) {
        heap_ = std::move(other.heap_);
      } else {
        std::copy(other.inline_, other.inline_ + size_, inline_);
      }
      other.size_ = 0;
      other.heap_.clear();
    }
    return *this;
  }

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  int64_t* data() { return size_ > kInline ? heap_.data() : inline_; }
  const int64_t* data() const { return size_ > kInline ? heap_.data() : inline_; }
  int64_t& operator[](size_t i) { return data()[i]; }
  int64_t operator[](size_t i) const { return data()[i]; }
  int64_t* begin() { return data(); }
  int64_t* end() { return data() + size_; }
  const int64_t* begin() const { return data(); }
  const int64_t* end() const { return data() + size_; }
  int64_t back() const { return data()[size_ - 1]; }
  std::vector<int64_t> vec() const { return {begin(), end()}; }
  operator std::span<const int64_t>() const { return {data(), size_}; }  // NOLINT

  void resize(size_t count) {
    if (count > kInline) {
      if (size_ <= kInline) heap_.assign(inline_, inline_ + size_);
      heap_.resize(count, 0);
    } else if (size_ > kInline) {
      std::copy(heap_.begin(), heap_.begin() + static_cast<std::ptrdiff_t>(count), inline_);
      heap_.clear();
    } else {
      std::fill(inline_ + size_, inline_ + std::max(size_, count), 0);
    }
    size_ = count;
  }
  void push_back(int64_t value) {
    resize(size_ + 1);
    data()[size_ - 1] = value;
  }
  void insert(size_t pos, int64_t value) {
    resize(size_ + 1);
    int64_t* p = data();
    std::copy_backward(p + pos, p + size_ - 1, p + size_);
    p[pos] = value;
  }
  void erase(size_t pos) {
    int64_t* p = data();
    std::copy(p + pos + 1, p + size_, p + pos);
    resize(size_ - 1);
  }

  friend bool operator==(const Dims& a, const Dims& b) {
    return std::equal(a.begin(), a.end(), b.begin(), b.end());
  }

 private:
  void assign(const int64_t* values, size_t count) {
    size_ = 0;
    heap_.clear();
    resize(count);
    std::copy(values, values + count, data());
  }

  int64_t inline_[kInline] = {};
  std::vector<int64_t> heap_;
  size_t size_ = 0;
};

using Shape = Dims;    // sizes of each dim
using Strides = Dims;  // steps of each dim, in elements

// Product of the sizes (1 for an empty shape).
inline int64_t numel_of(std::span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

// Row-major strides of `shape` (a size-0 dim counts as 1, as PyTorch's).
inline Strides contiguous_strides(const Shape& shape) {
  Strides strides(shape.size(), 1);
  int64_t step = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = step;
    step *= std::max<int64_t>(shape[i], 1);
  }
  return strides;
}

// Prints "[2, 3]".
std::ostream& operator<<(std::ostream& out, const Dims& dims);

}  // namespace d9d
