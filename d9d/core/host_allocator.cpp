#include "host_allocator.hpp"

#include <sys/mman.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <list>
#include <map>
#include <mutex>

#include <d9d/error.hpp>
#include <d9d/storage.hpp>

namespace d9d {
namespace detail {
namespace {

constexpr size_t kLargeMin = size_t{1} << 20;  // from here on: mmap + cache
constexpr size_t kGranule = size_t{64} << 10;  // large capacities are multiples of this

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

size_t default_limit() {
  if (const char* env = std::getenv("D9D_HOST_CACHE_BYTES")) {
    char* end = nullptr;
    const unsigned long long v = std::strtoull(env, &end, 10);
    if (end != env && *end == '\0') return static_cast<size_t>(v);
  }
  return size_t{1} << 30;
}

void* map_block(size_t capacity) {
  void* p = mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

class BlockCache {
 public:
  HostBlock take(size_t capacity) {
    std::lock_guard lock(mu_);
    auto it = by_size_.lower_bound(capacity);
    if (it == by_size_.end() || it->first > 2 * capacity) return {};
    HostBlock block{it->second->data, it->first};
    order_.erase(it->second);
    by_size_.erase(it);
    cached_ -= block.capacity;
    return block;
  }

  // Keeps the block if it fits under the limit, evicting the oldest blocks as needed.
  bool give(HostBlock block) {
    std::lock_guard lock(mu_);
    if (block.capacity > limit_) return false;
    order_.push_back(block);
    by_size_.emplace(block.capacity, std::prev(order_.end()));
    cached_ += block.capacity;
    trim_locked();
    return true;
  }

  void set_limit(size_t limit) {
    std::lock_guard lock(mu_);
    limit_ = limit;
    trim_locked();
  }

  size_t cached() {
    std::lock_guard lock(mu_);
    return cached_;
  }

 private:
  void trim_locked() {
    while (cached_ > limit_ && !order_.empty()) {
      const HostBlock oldest = order_.front();
      auto range = by_size_.equal_range(oldest.capacity);
      for (auto it = range.first; it != range.second; ++it) {
        if (it->second == order_.begin()) {
          by_size_.erase(it);
          break;
        }
      }
      order_.pop_front();
      cached_ -= oldest.capacity;
      munmap(oldest.data, oldest.capacity);
    }
  }

  std::mutex mu_;
  std::list<HostBlock> order_;  // oldest first
  std::multimap<size_t, std::list<HostBlock>::iterator> by_size_;
  size_t cached_ = 0;
  size_t limit_ = default_limit();
};

BlockCache& cache() {
  static BlockCache* c = new BlockCache();  // never destroyed: blocks may be freed at exit
  return *c;
}

}  // namespace

HostBlock host_alloc(size_t nbytes) {
  if (nbytes < kLargeMin) {
    const size_t capacity = round_up(std::max<size_t>(nbytes, 1), 64);
    void* p = std::aligned_alloc(64, capacity);
    if (p == nullptr) throw_error<Error>("out of host memory allocating ", nbytes, " bytes");
    return {p, capacity};
  }
  const size_t capacity = round_up(nbytes, kGranule);
  if (HostBlock reused = cache().take(capacity); reused.data != nullptr) return reused;
  void* p = map_block(capacity);
  if (p == nullptr) {
    const int err = errno;
    throw_error<Error>("out of host memory allocating ", nbytes, " bytes (mmap: ",
                       std::strerror(err), ")");
  }
  return {p, capacity};
}

void host_free(HostBlock block) noexcept {
  if (block.data == nullptr) return;
  if (block.capacity < kLargeMin) {
    std::free(block.data);
    return;
  }
  if (!cache().give(block)) munmap(block.data, block.capacity);
}

}  // namespace detail

void set_host_cache_limit(size_t bytes) { detail::cache().set_limit(bytes); }
size_t host_cache_bytes() { return detail::cache().cached(); }

}  // namespace d9d
