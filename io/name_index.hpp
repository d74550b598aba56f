// NameIndex: name -> position for a fixed list of names, as one flat open-addressing table (private
// to io). 100,000 tensor names cost one allocation instead of one hash node each, which is a
// visible part of opening a large header.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string_view>
#include <vector>

namespace d9d::io::detail {

class NameIndex {
 public:
  NameIndex() = default;

  // Indexes names(0) .. names(count - 1), where names(i) returns a string_view that stays valid
  // as long as the index is used. Returns the position of the first name that repeats an earlier
  // one, or nullopt if all are distinct (the repeat is not indexed).
  template <class Names>
  std::optional<size_t> build(size_t count, Names names) {
    size_t capacity = 16;
    while (capacity < count * 2) capacity *= 2;
    slots_.assign(capacity, 0);
    names_ = [names](size_t i) { return std::string_view(names(i)); };
    for (size_t i = 0; i < count; ++i) {
      const std::string_view key = names(i);
      for (size_t slot = hash(key);; slot = (slot + 1) & (capacity - 1)) {
        if (slots_[slot] == 0) {
          slots_[slot] = static_cast<uint32_t>(i + 1);
          break;
        }
        if (names(slots_[slot] - 1) == key) return i;
      }
    }
    return std::nullopt;
  }

  // Points the index at another list holding the same names in the same order (the names were
  // moved); `names` as in build().
  template <class Names>
  void rebind(Names names) {
    names_ = [names](size_t i) { return std::string_view(names(i)); };
  }

  std::optional<size_t> find(std::string_view key) const {
    if (slots_.empty()) return std::nullopt;
    for (size_t slot = hash(key);; slot = (slot + 1) & (slots_.size() - 1)) {
      const uint32_t entry = slots_[slot];
      if (entry == 0) return std::nullopt;
      if (names_(entry - 1) == key) return entry - 1;
    }
  }

 private:
  size_t hash(std::string_view key) const {
    return std::hash<std::string_view>{}(key) & (slots_.size() - 1);
  }

  std::vector<uint32_t> slots_;  // position + 1; 0 is empty
  std::function<std::string_view(size_t)> names_;
};

}  // namespace d9d::io::detail
