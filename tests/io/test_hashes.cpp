// Hash lists (Note [hash lists] in io/hashes.cpp): d9d-hashes.json written and parsed strictly,
// a hub snapshot's blob names read as digests, and verify_hashes naming the file that differs.
#include <filesystem>
#include <string>

#include <doctest/doctest.h>

#include <d9d/io/hashes.hpp>
#include <d9d/io/sha256.hpp>

#include "helpers.hpp"

namespace d9d::io::test {
namespace {

namespace fs = std::filesystem;

// sha256sum of "hello\n" and of "world\n".
const std::string kHello = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
const std::string kWorld = "e258d248fda94c63753607f7c4494ee0fcbe92f1a76bfdac795c9d84101eb317";

TEST_CASE("d9d-hashes.json round-trips and is parsed strictly") {
  const std::map<std::string, std::string> sums{{"b.safetensors", kWorld},
                                                {"a.safetensors", kHello}};
  const std::string text = hashes_json(sums);
  CHECK(text == "{\n  \"algorithm\": \"sha256\",\n  \"files\": {\n    \"a.safetensors\": \"" +
                    kHello + "\",\n    \"b.safetensors\": \"" + kWorld + "\"\n  }\n}\n");
  CHECK(parse_hashes_json(text, "h.json") == sums);
  CHECK(parse_hashes_json(hashes_json({}), "h.json").empty());
  CHECK(parse_hashes_json(R"({"files": {}, "later": [1, {"x": 2}]})", "h.json").empty());
  const auto rejects = [](const std::string& json, const char* what) {
    CAPTURE(json);
    CHECK_THROWS_WITH_AS(parse_hashes_json(json, "h.json"), doctest::Contains(what), FormatError);
  };
  rejects(R"({"algorithm": "md5", "files": {}})", "\"md5\" is not one d9d checks");
  rejects(R"({"algorithm": "sha256"})", "h.json: files: missing");
  rejects(R"({"files": {"a": "ABC"}})", "files[\"a\"]: \"ABC\" is not a SHA-256 digest");
  rejects(R"({"files": {"a": ")" + kHello.substr(0, 63) + "A\"}}", "is not a SHA-256 digest");
  rejects(R"({"files": {"../a": ")" + kHello + "\"}}", "not a plain file name");
  rejects(R"({"files": {"a": ")" + kHello + R"(", "a": ")" + kHello + "\"}}",
          "the file appears twice");
  rejects(R"({"files": {}, "files": {}})", "duplicate key");
  rejects(R"({"files": {}} x)", "text after the object");
  rejects(R"({"files": [)", "h.json: files: expected an object");
  rejects("[", "h.json: byte 0");
}

TEST_CASE("verify_hashes checks files against d9d-hashes.json and hub blob names") {
  TempDir dir;
  write_file(dir / "a.safetensors", "hello\n");
  write_file(dir / "b.safetensors", "world\n");
  CHECK(sha256_of_file(dir / "a.safetensors") == kHello);
  write_file(dir / "empty", "");
  CHECK(sha256_of_file(dir / "empty") ==
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

  // No list: every file is named as having no hash.
  CHECK_THROWS_WITH_AS(verify_hashes(dir.path(), {"a.safetensors", "b.safetensors"}),
                       doctest::Contains("no SHA-256 to check a.safetensors, b.safetensors"),
                       IntegrityError);
  write_file(dir / std::string(kHashesFileName),
             hashes_json({{"a.safetensors", kHello}, {"b.safetensors", kWorld}}));
  CHECK(verify_hashes(dir.path(), {"a.safetensors", "b.safetensors"}) == 12);
  // One byte changed: the file is named, with both digests and where the expected one is from.
  write_file(dir / "b.safetensors", "wOrld\n");
  const std::string b = (dir / "b.safetensors").string();
  CHECK_THROWS_WITH_AS(verify_hashes(dir.path(), {"a.safetensors", "b.safetensors"}, 2),
                       doctest::Contains((b + " has SHA-256 ").c_str()), IntegrityError);
  CHECK_THROWS_WITH_AS(
      verify_hashes(dir.path(), {"b.safetensors"}),
      doctest::Contains(("expected " + kWorld + " (from d9d-hashes.json)").c_str()),
      IntegrityError);

  // A hub snapshot: the shard is a link to a blob named by its digest.
  TempDir hub;
  fs::create_directories(hub / "blobs");
  fs::create_directories(hub / "snapshots" / "rev");
  write_file(hub / "blobs" / kHello, "hello\n");
  write_file(hub / "blobs" / kWorld, "hello\n");  // a corrupted blob
  fs::create_symlink(fs::path("../../blobs") / kHello, hub / "snapshots" / "rev" / "a.safetensors");
  fs::create_symlink(fs::path("../../blobs") / kWorld, hub / "snapshots" / "rev" / "b.safetensors");
  const fs::path snapshot = hub / "snapshots" / "rev";
  const auto expected = expected_hashes(snapshot, {"a.safetensors", "b.safetensors"});
  CHECK(expected.at("a.safetensors").source == "the hub's blob name");
  CHECK(verify_hashes(snapshot, {"a.safetensors"}) == 6);
  CHECK_THROWS_WITH_AS(verify_hashes(snapshot, {"b.safetensors"}),
                       doctest::Contains("(from the hub's blob name)"), IntegrityError);
}

}  // namespace
}  // namespace d9d::io::test
