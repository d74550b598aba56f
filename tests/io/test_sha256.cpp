// Sha256: the published FIPS / NIST example digests, messages fed in pieces, the SHA-NI and
// portable compression functions against each other, hex formatting.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <doctest/doctest.h>

#include <d9d/io/sha256.hpp>

namespace d9d::io::test {
namespace {

std::span<const std::byte> bytes_of(std::string_view s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

// Forces the portable compression function (or not) for one scope, and always restores the choice
// made at run time: a failing REQUIRE must not leave the next test on the portable one.
class ForcePortable {
 public:
  explicit ForcePortable(bool force) { detail::sha256_force_portable(force); }
  ~ForcePortable() { detail::sha256_force_portable(false); }
  ForcePortable(const ForcePortable&) = delete;
  ForcePortable& operator=(const ForcePortable&) = delete;
};

bool has_sha_ni() {
  return std::string_view(Sha256::implementation()) == "sha-ni";
}

// The values of "force the portable function" worth testing here: false (the function chosen at
// run time) and, when that is SHA-NI, true.
std::vector<bool> force_portable_settings() {
  if (has_sha_ni()) return {false, true};
  return {false};
}

// `n` bytes of a fixed pseudo-random sequence (splitmix64), the same on every run and machine.
std::vector<std::byte> pseudo_random(size_t n) {
  std::vector<std::byte> out(n);
  uint64_t x = 0x9e3779b97f4a7c15;
  for (size_t i = 0; i < n; ++i) {
    x += 0x9e3779b97f4a7c15;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
    z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
    out[i] = static_cast<std::byte>((z ^ (z >> 31)) >> 56);
  }
  return out;
}

// The digest of `bytes` fed to update() in pieces of the sizes in `pieces`, cycled, with an empty
// update between pieces (it must change nothing).
std::string hex_in_pieces(std::span<const std::byte> bytes, std::span<const size_t> pieces) {
  Sha256 h;
  size_t i = 0;
  while (!bytes.empty()) {
    const size_t n = std::min(pieces[i++ % pieces.size()], bytes.size());
    h.update(bytes.first(n));
    h.update({});
    bytes = bytes.subspan(n);
  }
  return Sha256::hex(h.finish());
}

// Piece sizes around the block size (64) and the 56 bytes the padding needs in the last block.
constexpr size_t kPieces[][6] = {
    {1, 1, 1, 1, 1, 1},       {3, 3, 3, 3, 3, 3},       {63, 1, 63, 1, 63, 1},
    {64, 64, 64, 64, 64, 64}, {65, 65, 65, 65, 65, 65}, {1, 3, 63, 64, 65, 7},
    {55, 1, 8, 56, 9, 127},   {128, 2, 200, 5, 64, 31},
};

TEST_CASE("the FIPS 180-2 example messages hash to their published digests") {
  struct Example {
    std::string message;
    const char* digest;
  };
  const Example examples[] = {
      {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
      {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
      // 448 bits: the padding's 1 bit and length need a second block.
      {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
      // 896 bits.
      {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmn"
       "opq"
       "rsmnopqrstnopqrstu",
       "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
      {std::string(1000000, 'a'),
       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"},
  };
  for (const bool portable : force_portable_settings()) {
    const ForcePortable force(portable);
    INFO("implementation: ", std::string(Sha256::implementation()));
    for (const Example& e : examples) {
      INFO("message length: ", e.message.size());
      CHECK(sha256_hex(bytes_of(e.message)) == e.digest);
      const size_t thousand[] = {1000};
      CHECK(hex_in_pieces(bytes_of(e.message), thousand) == e.digest);
    }
  }
}

TEST_CASE("messages of 'a's at the padding boundaries hash as hashlib says") {
  // Computed with Python's hashlib.sha256(b"a" * n): lengths at which the padding's 1 bit and
  // 64-bit length just fit in the last block (55), just do not (56), and whole blocks.
  struct Known {
    size_t n;
    const char* digest;
  };
  const Known known[] = {
      {55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
      {56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
      {63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"},
      {64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
      {65, "635361c48bb9eab14198e76ea8ab7f1a41685d6ad62aa9146d301d4f17eb0ae0"},
      {119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb"},
      {120, "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c"},
      {128, "6836cf13bac400e9105071cd6af47084dfacad4e5e302c94bfed24e013afb73e"},
  };
  for (const bool portable : force_portable_settings()) {
    const ForcePortable force(portable);
    INFO("implementation: ", std::string(Sha256::implementation()));
    for (const Known& k : known) {
      INFO("n = ", k.n);
      CHECK(sha256_hex(bytes_of(std::string(k.n, 'a'))) == k.digest);
    }
  }
}

TEST_CASE("a message fed in pieces hashes as in one piece") {
  const std::vector<std::byte> data = pseudo_random(300);
  for (const bool portable : force_portable_settings()) {
    const ForcePortable force(portable);
    INFO("implementation: ", std::string(Sha256::implementation()));
    for (size_t n = 0; n <= data.size(); ++n) {
      const auto message = std::span(data).first(n);
      const std::string whole = sha256_hex(message);
      for (const auto& pieces : kPieces) {
        INFO("length ", n, ", pieces from ", pieces[0], ", ", pieces[1], ", ", pieces[2]);
        CHECK(hex_in_pieces(message, pieces) == whole);
      }
    }
  }
}

TEST_CASE("SHA-NI and the portable compression function give the same digests") {
  if (!has_sha_ni()) {
    MESSAGE("this CPU has no SHA-NI (implementation: ", std::string(Sha256::implementation()),
            "): only the portable compression function is tested");
    return;
  }
  // Up to 300 bytes (every padding case, one to six blocks), then a few large messages that run
  // many blocks through one call.
  const std::vector<std::byte> data = pseudo_random((size_t{1} << 20) + 17);
  std::vector<size_t> lengths;
  for (size_t n = 0; n <= 300; ++n) lengths.push_back(n);
  for (const size_t n : {4095, 4096, 4097, 65536 + 55, 1 << 20, (1 << 20) + 17}) {
    lengths.push_back(n);
  }
  for (const size_t n : lengths) {
    const auto message = std::span(data).first(n);
    INFO("length ", n);
    std::string with[2];       // [portable]
    std::string pieces[2][2];  // [portable][split]
    for (const bool portable : {false, true}) {
      const ForcePortable force(portable);
      with[portable] = sha256_hex(message);
      pieces[portable][0] = hex_in_pieces(message, kPieces[5]);
      pieces[portable][1] = hex_in_pieces(message, kPieces[7]);
    }
    CHECK(with[0] == with[1]);
    CHECK(pieces[0][0] == with[1]);
    CHECK(pieces[0][1] == with[1]);
    CHECK(pieces[1][0] == with[1]);
    CHECK(pieces[1][1] == with[1]);
  }
}

TEST_CASE("a hash switched between the compression functions mid-message is unchanged") {
  // The state has one form for both: sha256_force_portable may be called between updates.
  const std::vector<std::byte> data = pseudo_random(1000);
  Sha256 h;
  {
    const ForcePortable force(true);
    h.update(std::span(data).first(333));
  }
  h.update(std::span(data).subspan(333, 400));
  {
    const ForcePortable force(true);
    h.update(std::span(data).subspan(733));
  }
  CHECK(Sha256::hex(h.finish()) == sha256_hex(data));
}

TEST_CASE("implementation() names the compression function in use") {
  const std::string_view chosen = Sha256::implementation();
  CHECK((chosen == "sha-ni" || chosen == "portable"));
  MESSAGE("SHA-256 compression function on this CPU: ", std::string(chosen));
  {
    const ForcePortable force(true);
    CHECK(std::string_view(Sha256::implementation()) == "portable");
  }
  CHECK(Sha256::implementation() == chosen);
}

TEST_CASE("reset() starts a new message") {
  Sha256 h;
  h.update(bytes_of("something else"));
  (void)h.finish();
  h.reset();
  h.update(bytes_of("abc"));
  CHECK(Sha256::hex(h.finish()) ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  h.reset();
  CHECK(Sha256::hex(h.finish()) ==
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST_CASE("hex() writes two lowercase digits per byte, first byte first") {
  Sha256::Digest d{};
  CHECK(Sha256::hex(d) == std::string(64, '0'));
  for (size_t i = 0; i < d.size(); ++i) d[i] = static_cast<uint8_t>(i * 8 + 7);
  d[0] = 0x00;
  d[1] = 0x0f;
  d[2] = 0xf0;
  d[3] = 0xab;
  d[31] = 0xff;
  const std::string s = Sha256::hex(d);
  REQUIRE(s.size() == 64);
  CHECK(s.substr(0, 8) == "000ff0ab");
  CHECK(s.substr(8, 2) == "27");  // 4 * 8 + 7 = 0x27
  CHECK(s.substr(62) == "ff");
  CHECK(s.find_first_not_of("0123456789abcdef") == std::string::npos);
}

}  // namespace
}  // namespace d9d::io::test
