// SafetensorsIndex and Checkpoint: the index rules, untrusted file names, shard verification.
#include "helpers.hpp"

namespace d9d::io::test {
namespace {

std::string index_rejection(std::string_view json) {
  try {
    SafetensorsIndex::parse(json, "i.json");
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

#define CHECK_INDEX_REJECTED(json, ...)                                                   \
  do {                                                                                    \
    const std::string msg_ = index_rejection(json);                                       \
    INFO("message: ", msg_);                                                              \
    REQUIRE_FALSE(msg_.empty());                                                          \
    CHECK(msg_.rfind("i.json: ", 0) == 0);                                                \
    for (const char* part_ : {__VA_ARGS__}) CHECK(msg_.find(part_) != std::string::npos); \
  } while (0)

TEST_CASE("shard file names follow transformers' pattern") {
  CHECK(shard_file_name(0, 3) == "model-00001-of-00003.safetensors");
  CHECK(shard_file_name(11, 12) == "model-00012-of-00012.safetensors");
  CHECK_THROWS_AS(shard_file_name(3, 3), ValueError);
}

TEST_CASE("an index parses, keeps its metadata and writes back as transformers does") {
  const std::string json = R"({"metadata": {"total_parameters": 12, "total_size": 48},
    "weight_map": {"b": "model-00002-of-00002.safetensors", "a": "model-00001-of-00002.safetensors"}})";
  const SafetensorsIndex index = SafetensorsIndex::parse(json, "i.json");
  CHECK(index.total_size == 48);
  CHECK(index.extra_metadata == std::map<std::string, std::string>{{"total_parameters", "12"}});
  CHECK(index.weight_map.size() == 2);
  CHECK(index.files() == std::vector<std::string>{"model-00001-of-00002.safetensors",
                                                  "model-00002-of-00002.safetensors"});
  CHECK(index.to_json() ==
        "{\n  \"metadata\": {\n    \"total_parameters\": 12,\n    \"total_size\": 48\n  },\n"
        "  \"weight_map\": {\n    \"a\": \"model-00001-of-00002.safetensors\",\n"
        "    \"b\": \"model-00002-of-00002.safetensors\"\n  }\n}\n");
  CHECK(SafetensorsIndex::parse(index.to_json(), "again").weight_map == index.weight_map);
  // Without metadata, and with unknown top-level keys.
  const auto bare = SafetensorsIndex::parse(R"({"weight_map":{},"x":[1,{"y":null}]})", "i.json");
  CHECK_FALSE(bare.total_size.has_value());
  CHECK(bare.weight_map.empty());
}

TEST_CASE("index rule 1: one UTF-8 JSON object, no duplicate keys anywhere") {
  CHECK_INDEX_REJECTED("", "index rule 1");
  CHECK_INDEX_REJECTED("[]", "index rule 1");
  CHECK_INDEX_REJECTED(R"({"weight_map":{}} x)", "index rule 1", "trailing");
  CHECK_INDEX_REJECTED("{\"weight_map\":{\"\xFF\":\"f\"}}", "index rule 1", "invalid UTF-8");
  CHECK_INDEX_REJECTED(R"({"weight_map":{},"weight_map":{}})", "index rule 1", "duplicate key");
  CHECK_INDEX_REJECTED(R"({"weight_map":{"a":"f","a":"f"}})", "index rule 1", "weight_map[\"a\"]",
                       "appears twice");
  CHECK_INDEX_REJECTED(R"({"metadata":{"total_size":1,"total_size":1},"weight_map":{}})",
                       "duplicate key \"total_size\"");
  CHECK_INDEX_REJECTED(R"({"weight_map":{},"x":{"k":1,"k":2}})", "duplicate key \"k\"");
  CHECK_INDEX_REJECTED(
      R"({"weight_map":{},"x":)" + std::string(100, '[') + std::string(100, ']') + "}",
      "nested deeper");
}

TEST_CASE("index rule 2: weight_map is an object of strings") {
  CHECK_INDEX_REJECTED(R"({"metadata":{}})", "index rule 2", "weight_map", "missing");
  CHECK_INDEX_REJECTED(R"({"weight_map":[]})", "index rule 2");
  CHECK_INDEX_REJECTED(R"({"weight_map":{"a":1}})", "index rule 2", "weight_map[\"a\"]");
}

TEST_CASE("index rule 3: file names are plain names in the checkpoint directory") {
  for (const char* bad : {"../model.safetensors", "/etc/passwd", "sub/model.safetensors", "..", ".",
                          "", "a\\\\b", "x\\u0000y", "..\\/x"}) {
    CAPTURE(bad);
    CHECK_INDEX_REJECTED(std::string(R"({"weight_map":{"w":")") + bad + "\"}}", "index rule 3",
                         "weight_map[\"w\"]", "not a plain name");
  }
  CHECK(is_plain_file_name("model-00001-of-00002.safetensors"));
  CHECK(is_plain_file_name("..hidden"));
  CHECK_FALSE(is_plain_file_name("a/b"));
}

TEST_CASE("index rule 4: metadata is an object with an integer total_size") {
  CHECK_INDEX_REJECTED(R"({"metadata":[],"weight_map":{}})", "index rule 4");
  CHECK_INDEX_REJECTED(R"({"metadata":{"total_size":"12"},"weight_map":{}})", "index rule 4",
                       "metadata.total_size");
  CHECK_INDEX_REJECTED(R"({"metadata":{"total_size":-1},"weight_map":{}})", "index rule 4");
  CHECK_INDEX_REJECTED(R"({"metadata":{"total_size":1.5},"weight_map":{}})", "index rule 4");
}

// A two-shard checkpoint written with d9d's own writer and index.
struct Sharded {
  TempDir dir;
  std::map<std::string, Tensor> tensors = {{"a", patterned({4, 4}, DType::F32, 1)},
                                           {"b", patterned({8}, DType::BF16, 2)},
                                           {"c", patterned({3}, DType::I64, 3)}};
  Sharded() {
    const std::string s1 = shard_file_name(0, 2), s2 = shard_file_name(1, 2);
    save_safetensors(dir / s1, {{"a", tensors.at("a")}, {"b", tensors.at("b")}});
    save_safetensors(dir / s2, {{"c", tensors.at("c")}});
    SafetensorsIndex index;
    index.total_size = 64 + 16 + 24;
    index.weight_map = {{"a", s1}, {"b", s1}, {"c", s2}};
    index.write(dir / kIndexFileName);
  }
};

TEST_CASE("a sharded checkpoint opens, lists its tensors and loads them") {
  Sharded s;
  const Checkpoint ckpt = Checkpoint::open(s.dir.path());
  CHECK(ckpt.index().has_value());
  CHECK(ckpt.keys() == std::vector<std::string>{"a", "b", "c"});
  CHECK(ckpt.files() == std::vector<std::string>{"model-00001-of-00002.safetensors",
                                                 "model-00002-of-00002.safetensors"});
  CHECK(*ckpt.entry("c").file == "model-00002-of-00002.safetensors");
  CHECK(ckpt.info("a") == ckpt.file("model-00001-of-00002.safetensors").info("a"));
  CHECK(ckpt.total_bytes() == 104);
  for (const auto& [name, t] : s.tensors) {
    CHECK(equal(ckpt.tensor(name), t));
    CHECK(equal(ckpt.load(name), t));
  }
  const auto all = ckpt.load_all();
  CHECK(all.size() == 3);
  for (const auto& [name, t] : s.tensors) CHECK(equal(all.at(name), t));
  CHECK(ckpt.load(std::vector<std::string>{"c", "c"}).size() == 1);
  // Into buffers the caller owns: contiguous ones in one plan, a strided one through the copy.
  Tensor wide = Tensor::zeros({4, 4}, DType::F32);
  const std::map<std::string, Tensor> targets = {{"a", wide.transpose(0, 1)},
                                                 {"b", Tensor::zeros({8}, DType::BF16)},
                                                 {"c", Tensor::zeros({3}, DType::I64)}};
  ckpt.read_into(targets);
  CHECK(equal(targets.at("a"), s.tensors.at("a")));
  CHECK(equal(targets.at("b"), s.tensors.at("b")));
  CHECK(equal(targets.at("c"), s.tensors.at("c")));
  CHECK_THROWS_WITH_AS(ckpt.read_into({{"c", Tensor::zeros({4}, DType::I64)}}),
                       doctest::Contains("holds shape [3]"), ValueError);
  CHECK_THROWS_WITH_AS(ckpt.load("zz"), doctest::Contains("no tensor named \"zz\""), ValueError);
  // The index file itself, or one shard, opens too.
  CHECK(Checkpoint::open(s.dir / kIndexFileName).keys().size() == 3);
  CHECK(Checkpoint::open(s.dir / "model-00002-of-00002.safetensors").keys() ==
        std::vector<std::string>{"c"});
}

TEST_CASE("a single-file checkpoint opens from its directory") {
  TempDir dir;
  save_safetensors(dir / kSingleFileName, {{"x", patterned({2}, DType::U8)}});
  const Checkpoint ckpt = Checkpoint::open(dir.path());
  CHECK_FALSE(ckpt.index().has_value());
  CHECK(ckpt.keys() == std::vector<std::string>{"x"});
  CHECK(ckpt.files() == std::vector<std::string>{"model.safetensors"});
}

TEST_CASE("an indexed tensor missing from its shard is an error naming both") {
  Sharded s;
  SafetensorsIndex index = SafetensorsIndex::read(s.dir / kIndexFileName);
  index.weight_map["c"] = shard_file_name(0, 2);  // c is really in shard 2
  index.write(s.dir / kIndexFileName);
  CHECK_THROWS_WITH_AS(
      Checkpoint::open(s.dir.path()),
      doctest::Contains("weight_map[\"c\"]: the index puts it in "
                        "\"model-00001-of-00002.safetensors\", which has no such tensor"),
      FormatError);
}

TEST_CASE("a tensor in two shards is an error naming both files") {
  Sharded s;
  // Shard 2 holds "a" too; the index still says shard 1.
  save_safetensors(s.dir / shard_file_name(1, 2),
                   {{"a", s.tensors.at("a")}, {"c", s.tensors.at("c")}});
  CHECK_THROWS_WITH_AS(Checkpoint::open(s.dir.path()),
                       doctest::Contains("tensor \"a\" is in two shards, "
                                         "\"model-00001-of-00002.safetensors\" and "
                                         "\"model-00002-of-00002.safetensors\""),
                       FormatError);
}

TEST_CASE("a tensor a shard holds but the index does not list is left out and named") {
  Sharded s;
  SafetensorsIndex index = SafetensorsIndex::read(s.dir / kIndexFileName);
  index.weight_map.erase("b");
  index.write(s.dir / kIndexFileName);
  const Checkpoint ckpt = Checkpoint::open(s.dir.path());
  CHECK(ckpt.keys() == std::vector<std::string>{"a", "c"});
  CHECK_FALSE(ckpt.contains("b"));
  CHECK(ckpt.unlisted_tensors() ==
        std::map<std::string, std::string>{{"b", "model-00001-of-00002.safetensors"}});
  CHECK(Checkpoint::open(s.dir / shard_file_name(0, 2)).unlisted_tensors().empty());  // no index
}

TEST_CASE("a FIFO in place of the index or of a shard is refused at once") {
  {
    Sharded s;
    std::filesystem::remove(s.dir / kIndexFileName);
    REQUIRE(::mkfifo((s.dir / kIndexFileName).c_str(), 0600) == 0);
    CHECK(refused_at_once(s.dir / kIndexFileName, [&] { Checkpoint::open(s.dir.path()); }));
  }
  {
    Sharded s;
    std::filesystem::remove(s.dir / shard_file_name(1, 2));
    REQUIRE(::mkfifo((s.dir / shard_file_name(1, 2)).c_str(), 0600) == 0);
    CHECK(refused_at_once(s.dir / shard_file_name(1, 2), [&] { Checkpoint::open(s.dir.path()); }));
  }
}

TEST_CASE("an index naming a path outside the directory is rejected before any file is opened") {
  Sharded s;
  write_file(s.dir / kIndexFileName, R"({"weight_map":{"a":"../../etc/passwd"}})");
  CHECK_THROWS_WITH_AS(Checkpoint::open(s.dir.path()), doctest::Contains("index rule 3"),
                       FormatError);
}

TEST_CASE("a missing shard, a broken shard, an empty directory and an ambiguous one are errors") {
  {
    Sharded s;
    std::filesystem::remove(s.dir / shard_file_name(1, 2));
    CHECK_THROWS_WITH_AS(Checkpoint::open(s.dir.path()), doctest::Contains("model-00002-of-00002"),
                         IoError);
  }
  {
    Sharded s;
    write_file(s.dir / shard_file_name(1, 2), "junk");
    CHECK_THROWS_WITH_AS(Checkpoint::open(s.dir.path()), doctest::Contains("rule 1"), FormatError);
  }
  {
    TempDir empty;
    CHECK_THROWS_WITH_AS(Checkpoint::open(empty.path()),
                         doctest::Contains("neither model.safetensors.index.json nor"), IoError);
  }
  {
    Sharded s;
    save_safetensors(s.dir / kSingleFileName, {{"x", patterned({2}, DType::U8)}});
    CHECK_THROWS_WITH_AS(Checkpoint::open(s.dir.path()), doctest::Contains("ambiguous"),
                         FormatError);
  }
}

TEST_CASE("an index built from streamed shards' layouts opens as a checkpoint") {
  TempDir dir;
  const std::vector<std::vector<TensorDecl>> shards = {
      {{"a", DType::F32, {2, 3}}, {"b", DType::U8, {5}}}, {{"c", DType::BF16, {4}}}};
  SafetensorsIndex index;
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string name = shard_file_name(static_cast<int>(s), 2);
    SafetensorsWriter w(dir / name, shards[s]);
    for (const TensorDecl& d : shards[s]) w.write(d.name, patterned(d.shape, d.dtype));
    w.commit();
    index.add_shard(name, w.layout().header);
  }
  CHECK(index.total_size == 24 + 5 + 8);
  CHECK_THROWS_WITH_AS(
      index.add_shard(
          "x.safetensors",
          validate_safetensors(
              as_bytes(image(R"({"c":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 1)), "x")),
      doctest::Contains("\"c\" of shard \"x.safetensors\" is already in shard"), ValueError);
  CHECK_THROWS_AS(index.add_shard("../x", SafetensorsHeader{}), ValueError);
  CHECK(index.weight_map.size() == 3);  // the failed adds changed nothing
  CHECK(index.weight_map.at("c") == shard_file_name(1, 2));
  CHECK(index.total_size == 37);
  index.write(dir / kIndexFileName);
  const Checkpoint ckpt = Checkpoint::open(dir.path());
  CHECK(ckpt.keys() == std::vector<std::string>{"a", "b", "c"});
  CHECK(ckpt.index()->total_size == 37);
}

TEST_CASE("SafetensorsIndex::write is atomic and refuses unsafe names") {
  TempDir dir;
  SafetensorsIndex index;
  index.weight_map = {{"a", "../x.safetensors"}};
  CHECK_THROWS_WITH_AS(index.write(dir / kIndexFileName),
                       doctest::Contains("not a plain file name"), ValueError);
  CHECK(dir.list().empty());
}

}  // namespace
}  // namespace d9d::io::test
