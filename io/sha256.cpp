// SHA-256 (FIPS 180-4, section 6.2): a portable compression function, one on the x86 SHA
// extensions, and the choice between them made once per process.
#include <d9d/io/sha256.hpp>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace d9d::io {
namespace {

// FIPS 180-4 4.2.2: the first 32 bits of the fractional parts of the cube roots of the first 64
// primes.
alignas(64) constexpr uint32_t kK[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

// FIPS 180-4 5.3.3: the first 32 bits of the fractional parts of the square roots of the first 8
// primes.
constexpr std::array<uint32_t, 8> kInitialState = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

// A compression function: hashes `nblocks` 64-byte blocks at `blocks` into `state`. Both keep
// `state` as H0..H7 of FIPS 180-4, so either may continue what the other began.
using CompressFn = void (*)(uint32_t* state, const uint8_t* blocks, size_t nblocks);

// SHA-256 reads the message as big-endian 32-bit words (FIPS 180-4 3.1).
inline uint32_t load_be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

inline void store_be32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}

// FIPS 180-4 6.2.2, step by step (the functions of 4.1.2 written out).
void compress_portable(uint32_t* state, const uint8_t* blocks, size_t nblocks) {
  for (; nblocks > 0; --nblocks, blocks += 64) {
    // Step 1: the message schedule.
    uint32_t w[64];
    for (int t = 0; t < 16; ++t) w[t] = load_be32(blocks + 4 * t);
    for (int t = 16; t < 64; ++t) {
      const uint32_t s0 = std::rotr(w[t - 15], 7) ^ std::rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
      const uint32_t s1 = std::rotr(w[t - 2], 17) ^ std::rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
      w[t] = s1 + w[t - 7] + s0 + w[t - 16];
    }
    // Steps 2 and 3: the working variables, through 64 rounds.
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
    for (int t = 0; t < 64; ++t) {
      const uint32_t big_s1 = std::rotr(e, 6) ^ std::rotr(e, 11) ^ std::rotr(e, 25);
      // Ch(e, f, g) = (e & f) ^ (~e & g) and Maj(a, b, c) = (a & b) ^ (a & c) ^ (b & c), in
      // equal forms of fewer operations (bit by bit: e picks f or g; the majority of a, b, c).
      const uint32_t ch = g ^ (e & (f ^ g));
      const uint32_t t1 = h + big_s1 + ch + kK[t] + w[t];
      const uint32_t big_s0 = std::rotr(a, 2) ^ std::rotr(a, 13) ^ std::rotr(a, 22);
      const uint32_t maj = (a & b) | (c & (a | b));
      const uint32_t t2 = big_s0 + maj;
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    // Step 4: the intermediate hash value.
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
    state[4] += e;
    state[5] += f;
    state[6] += g;
    state[7] += h;
  }
}

#if defined(__x86_64__)

// The same rounds on the SHA extensions. SHA256RNDS2 does two rounds on the state split as
// {A, B, E, F} and {C, D, G, H} (A and C in the top lane), taking W[t] + K[t] for its two rounds
// in the low two lanes of its third operand; SHA256MSG1 and SHA256MSG2 compute four words of the
// message schedule (W[t-16] + sigma0(W[t-15]), then the sigma1 terms).
__attribute__((target("sha,sse4.1,ssse3"))) void compress_sha_ni(uint32_t* state,
                                                                 const uint8_t* blocks,
                                                                 size_t nblocks) {
  // Reverses the bytes of each 32-bit lane: the message words are big-endian.
  const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0b, 0x0405060700010203);

  // state[0..7] = A..H into {A, B, E, F} and {C, D, G, H}, high lane first.
  const __m128i dcba = _mm_loadu_si128(reinterpret_cast<const __m128i*>(state));
  const __m128i hgfe = _mm_loadu_si128(reinterpret_cast<const __m128i*>(state + 4));
  const __m128i cdab = _mm_shuffle_epi32(dcba, 0xb1);  // lanes 0..3: B, A, D, C
  const __m128i efgh = _mm_shuffle_epi32(hgfe, 0x1b);  // lanes 0..3: H, G, F, E
  __m128i abef = _mm_alignr_epi8(cdab, efgh, 8);       // lanes 0..3: F, E, B, A
  __m128i cdgh = _mm_blend_epi16(efgh, cdab, 0xf0);    // lanes 0..3: H, G, D, C

  for (; nblocks > 0; --nblocks, blocks += 64) {
    const __m128i abef_in = abef;
    const __m128i cdgh_in = cdgh;
    // The last 16 words of the schedule, four to a register: w[g % 4] holds W[4g .. 4g+3].
    __m128i w[4];
#pragma GCC unroll 16
    for (int g = 0; g < 16; ++g) {
      __m128i m;
      if (g < 4) {
        m = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blocks + 16 * g)),
                             bswap);
      } else {
        // W[t..t+3] for t = 4g: W[t-16] + sigma0(W[t-15]) (MSG1), plus W[t-7..t-4] (the lanes
        // straddling the two previous groups), plus sigma1(W[t-2]) (MSG2, which also chains the
        // sigma1 of the two words it makes into the other two).
        const __m128i w_minus7 = _mm_alignr_epi8(w[(g + 3) % 4], w[(g + 2) % 4], 4);
        m = _mm_sha256msg1_epu32(w[g % 4], w[(g + 1) % 4]);
        m = _mm_sha256msg2_epu32(_mm_add_epi32(m, w_minus7), w[(g + 3) % 4]);
      }
      w[g % 4] = m;
      __m128i wk = _mm_add_epi32(m, _mm_loadu_si128(reinterpret_cast<const __m128i*>(kK + 4 * g)));
      // Two rounds make the new {A, B, E, F}; the old one is the new {C, D, G, H}.
      __m128i next = _mm_sha256rnds2_epu32(cdgh, abef, wk);
      cdgh = abef;
      abef = next;
      wk = _mm_shuffle_epi32(wk, 0x0e);  // W + K of rounds 4g+2 and 4g+3 into the low lanes
      next = _mm_sha256rnds2_epu32(cdgh, abef, wk);
      cdgh = abef;
      abef = next;
    }
    abef = _mm_add_epi32(abef, abef_in);
    cdgh = _mm_add_epi32(cdgh, cdgh_in);
  }

  // Back to A..H.
  const __m128i feba = _mm_shuffle_epi32(abef, 0x1b);  // lanes 0..3: A, B, E, F
  const __m128i dchg = _mm_shuffle_epi32(cdgh, 0xb1);  // lanes 0..3: G, H, C, D
  _mm_storeu_si128(reinterpret_cast<__m128i*>(state), _mm_blend_epi16(feba, dchg, 0xf0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(state + 4), _mm_alignr_epi8(dchg, feba, 8));
}

bool cpu_has_sha_ni() {
#if defined(__clang__)
  // clang before 16 does not know "sha" in __builtin_cpu_supports (the fuzz build uses clang 14):
  // ask cpuid (leaf 1 for SSSE3 and SSE4.1, leaf 7 for SHA).
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0) return false;
  const bool sse = (ecx & bit_SSSE3) != 0 && (ecx & bit_SSE4_1) != 0;
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return false;
  return sse && (ebx & bit_SHA) != 0;
#else
  // The first call may come from a static initializer, before libgcc has filled in the CPU model.
  __builtin_cpu_init();
  return __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1") &&
         __builtin_cpu_supports("ssse3");
#endif
}

CompressFn detect() {
  return cpu_has_sha_ni() ? compress_sha_ni : compress_portable;
}

#else

CompressFn detect() {
  return compress_portable;
}

#endif

std::atomic<bool> force_portable{false};

// The compression function to use now: chosen once, unless a test forces the portable one.
CompressFn compress_fn() {
  static const CompressFn detected = detect();
  return force_portable.load(std::memory_order_relaxed) ? compress_portable : detected;
}

}  // namespace

void Sha256::reset() noexcept {
  state_ = kInitialState;
  buffered_ = 0;
  total_ = 0;
}

void Sha256::update(std::span<const std::byte> bytes) noexcept {
  if (bytes.empty()) return;  // data() may be null, which memcpy must not see
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  size_t n = bytes.size();
  total_ += n;
  const CompressFn compress = compress_fn();
  if (buffered_ > 0) {
    const size_t take = std::min(n, buffer_.size() - buffered_);
    std::memcpy(buffer_.data() + buffered_, p, take);
    buffered_ += take;
    p += take;
    n -= take;
    if (buffered_ < buffer_.size()) return;
    compress(state_.data(), buffer_.data(), 1);
    buffered_ = 0;
  }
  // Whole blocks straight from the caller's buffer: for a large update, no copy at all.
  if (const size_t whole = n / 64; whole > 0) {
    compress(state_.data(), p, whole);
    p += whole * 64;
    n -= whole * 64;
  }
  if (n > 0) {
    std::memcpy(buffer_.data(), p, n);
    buffered_ = n;
  }
}

Sha256::Digest Sha256::finish() noexcept {
  // FIPS 180-4 5.1.1: the message, a 1 bit, zeros up to 448 mod 512 bits, then its length in bits
  // as a 64-bit big-endian number. That is one more block, or two when fewer than 9 bytes are free.
  uint8_t tail[128] = {};
  std::memcpy(tail, buffer_.data(), buffered_);
  tail[buffered_] = 0x80;
  const size_t tail_size = buffered_ < 56 ? 64 : 128;
  const uint64_t bits = total_ * 8;
  store_be32(tail + tail_size - 8, static_cast<uint32_t>(bits >> 32));
  store_be32(tail + tail_size - 4, static_cast<uint32_t>(bits));
  compress_fn()(state_.data(), tail, tail_size / 64);
  Digest digest;
  for (size_t i = 0; i < state_.size(); ++i) store_be32(digest.data() + 4 * i, state_[i]);
  return digest;
}

std::string Sha256::hex(const Digest& d) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s(2 * d.size(), '0');
  for (size_t i = 0; i < d.size(); ++i) {
    s[2 * i] = kDigits[d[i] >> 4];
    s[2 * i + 1] = kDigits[d[i] & 0xf];
  }
  return s;
}

const char* Sha256::implementation() noexcept {
  return compress_fn() == compress_portable ? "portable" : "sha-ni";
}

std::string sha256_hex(std::span<const std::byte> bytes) {
  Sha256 h;
  h.update(bytes);
  return Sha256::hex(h.finish());
}

namespace detail {
void sha256_force_portable(bool force) noexcept {
  force_portable.store(force, std::memory_order_relaxed);
}
}  // namespace detail

}  // namespace d9d::io
