// Host memory for tensors (private to core).
//
// Note [host block cache]: a fresh anonymous mapping costs a page fault per 4 KiB on first write,
// which cuts a copy into new memory to about a quarter of memcpy speed on the machines we
// measured. Streamed conversion allocates and frees outputs of similar sizes over and over, so
// large blocks (>= 1 MiB) come from mmap and go back to a bounded cache when freed; the next
// allocation of a similar size reuses one that is already faulted in. Small blocks use
// aligned_alloc. (Transparent huge pages were tried: faster when the kernel has free 2 MiB pages,
// but a fault that must compact memory stalls for tens of milliseconds.)
#pragma once

#include <cstddef>

namespace d9d::detail {

struct HostBlock {
  void* data = nullptr;
  size_t capacity = 0;  // bytes actually reserved; pass back to host_free
};

// At least nbytes of 64-byte aligned (4096 for 1 MiB and more) host memory; throws on exhaustion.
HostBlock host_alloc(size_t nbytes);
void host_free(HostBlock block) noexcept;

}  // namespace d9d::detail
