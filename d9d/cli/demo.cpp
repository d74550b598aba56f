// d9d demo: the README's main job, end to end, in well under a minute.
//
//   1. write a Llama-shaped checkpoint (HF transformers names, random weights, several shards),
//   2. convert it to fused QKV + gate_up with the built-in spec llama (specs/llama.json),
//   3. verify the fused checkpoint against the original read through the same spec,
//   4. convert the fused checkpoint back with --reverse (the inverse from the conversion record),
//   5. verify the round trip bit-exact against the original.
// Exits 0 only if every comparison matched.
#include <stdlib.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <iterator>
#include <memory>
#include <optional>

#include <CLI/CLI.hpp>

#include <d9d/mapper/adapters.hpp>
#include <d9d/mapper/builtin_specs.hpp>
#include <d9d/model_state/writer.hpp>

#include "cli.hpp"

namespace d9d::cli {

namespace {

using Specs = std::vector<std::pair<std::string, mapper::TensorSpec>>;

// More layers make more tensors than a safetensors header can list (100 MB, ~100 bytes each).
constexpr int64_t kMaxDemoLayers = 100'000;

// The tensors of a Llama-family model as transformers names them.
Specs llama_specs(const DemoOptions& o, DType dtype) {
  const int64_t head_dim = o.hidden / o.heads;
  Specs s;
  auto add = [&](std::string name, Shape shape) {
    s.emplace_back(std::move(name), mapper::TensorSpec{dtype, std::move(shape)});
  };
  add("model.embed_tokens.weight", {o.vocab, o.hidden});
  for (int64_t l = 0; l < o.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {o.hidden});
    add(p + "self_attn.q_proj.weight", {o.heads * head_dim, o.hidden});
    add(p + "self_attn.k_proj.weight", {o.kv_heads * head_dim, o.hidden});
    add(p + "self_attn.v_proj.weight", {o.kv_heads * head_dim, o.hidden});
    add(p + "self_attn.o_proj.weight", {o.hidden, o.heads * head_dim});
    add(p + "post_attention_layernorm.weight", {o.hidden});
    add(p + "mlp.gate_proj.weight", {o.intermediate, o.hidden});
    add(p + "mlp.up_proj.weight", {o.intermediate, o.hidden});
    add(p + "mlp.down_proj.weight", {o.hidden, o.intermediate});
  }
  add("model.norm.weight", {o.hidden});
  add("lm_head.weight", {o.vocab, o.hidden});
  return s;
}

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Random weights of magnitude in [1/16, 1), either sign: random sign and mantissa bits, and one
// of four exponents (no zeros, infinities or NaNs, so every value prints as a number).
Tensor random_tensor(const mapper::TensorSpec& spec, uint64_t seed) {
  Tensor t = Tensor::empty(spec.shape, spec.dtype);
  uint64_t state = seed;
  const int64_t n = t.numel();
  auto fill = [&](auto* p, int mantissa_bits, int bias) {
    using U = std::remove_pointer_t<decltype(p)>;
    const int total_bits = static_cast<int>(sizeof(U) * 8);
    const uint64_t mantissa_mask = (uint64_t{1} << mantissa_bits) - 1;
    uint64_t bits = 0;
    int left = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (left < total_bits) {
        bits = splitmix64(state);
        left = 64;
      }
      const uint64_t r = bits;
      bits >>= total_bits;
      left -= total_bits;
      const uint64_t sign = (r >> (total_bits - 1)) & 1;
      const uint64_t exponent = static_cast<uint64_t>(bias - 4) + ((r >> mantissa_bits) & 3);
      p[i] = static_cast<U>((sign << (total_bits - 1)) | (exponent << mantissa_bits) |
                            (r & mantissa_mask));
    }
  };
  switch (spec.dtype) {
    case DType::BF16:
      fill(static_cast<uint16_t*>(t.mutable_data_ptr()), 7, 127);
      break;
    case DType::F16:
      fill(static_cast<uint16_t*>(t.mutable_data_ptr()), 10, 15);
      break;
    case DType::F32:
      fill(static_cast<uint32_t*>(t.mutable_data_ptr()), 23, 127);
      break;
    default:
      D9D_CHECK(false, "demo: --dtype must be BF16, F16 or F32, got ", spec.dtype);
  }
  return t;
}

// A source for write_model_state_local that makes each tensor when the writer asks for it, so
// the demo's checkpoint is never whole in memory, whatever its size. It says what it will yield
// (planned_specs), so the writer lays out the shards first.
class RandomSource {
 public:
  using value_type = std::pair<std::string, Tensor>;

  RandomSource(Specs specs, uint64_t seed) : specs_(std::move(specs)), seed_(seed) {}
  // (An optional because write_model_state_local's `if (auto specs = ...)` takes only that.)
  std::optional<Specs> planned_specs() const { return specs_; }
  size_t size() const { return specs_.size(); }

  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = RandomSource::value_type;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(RandomSource* source) : source_(source) { load(); }
    value_type& operator*() const { return current_; }
    iterator& operator++() {
      ++index_;
      load();
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& it, std::default_sentinel_t) {
      return it.index_ >= it.source_->size();
    }

   private:
    void load() {
      if (index_ >= source_->specs_.size()) {
        current_ = {};
        return;
      }
      const auto& [name, spec] = source_->specs_[index_];
      current_ = {name, random_tensor(spec, source_->seed_ * 1000003 + index_)};
    }
    RandomSource* source_ = nullptr;
    size_t index_ = 0;
    mutable value_type current_;  // handed out by reference, as ModelStateStream does
  };

  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() const { return {}; }

 private:
  Specs specs_;
  uint64_t seed_;
};

// What the demo makes, from the options alone.
struct DemoModel {
  Specs specs;
  int64_t total = 0;       // bytes
  int64_t shard_size = 0;  // of every checkpoint
};

// Why the options make no model ("" when they make one): a usage error.
std::string model_problem(const DemoOptions& o) {
  using d9d::detail::str_cat;
  if (o.hidden <= 0 || o.layers < 0 || o.heads <= 0 || o.kv_heads <= 0 || o.intermediate <= 0 ||
      o.vocab <= 0) {
    return "--hidden, --heads, --kv-heads, --intermediate and --vocab must be positive, --layers "
           "not negative";
  }
  if (o.layers > kMaxDemoLayers) {
    return str_cat("--layers ", o.layers, " is more than ", kMaxDemoLayers,
                   " (more tensors than a checkpoint's header can list)");
  }
  if (o.hidden % o.heads != 0) {
    return str_cat("--hidden (", o.hidden, ") must be a multiple of --heads (", o.heads, ")");
  }
  if (o.heads % o.kv_heads != 0) {
    return str_cat("--heads (", o.heads, ") must be a multiple of --kv-heads (", o.kv_heads, ")");
  }
  // Every tensor's bytes, the fused ones and the total must fit in 63 bits (4 bytes an element
  // at most).
  bool overflow = false;
  auto mul = [&](int64_t a, int64_t b) {
    int64_t r = 0;
    overflow = overflow || __builtin_mul_overflow(a, b, &r);
    return r;
  };
  auto add = [&](int64_t a, int64_t b) {
    int64_t r = 0;
    overflow = overflow || __builtin_add_overflow(a, b, &r);
    return r;
  };
  const int64_t attention =
      mul(add(mul(2, o.heads), mul(2, o.kv_heads)), mul(o.hidden / o.heads, o.hidden));
  const int64_t layer =
      add(add(attention, mul(3, mul(o.intermediate, o.hidden))), mul(2, o.hidden));
  const int64_t elements = add(mul(o.layers, layer), add(mul(2, mul(o.vocab, o.hidden)), o.hidden));
  const bool fits = mul(elements, 4) >= 0 && !overflow;
  if (!fits) return "the model these sizes describe is more than 2^63 - 1 bytes";
  return "";
}

DemoModel demo_model(const DemoOptions& o) {
  const DType dtype = parse_dtype(o.dtype);
  DemoModel model;
  model.specs = llama_specs(o, dtype);
  int64_t largest = 0;
  for (const auto& [name, spec] : model.specs) {
    model.total += spec.nbytes();
    largest = std::max(largest, spec.nbytes());
  }
  // Several shards by default, each big enough for the largest tensor, fused ones included.
  const int64_t bits = dtype_bits(dtype);
  const int64_t qkv_bytes = (o.heads + 2 * o.kv_heads) * (o.hidden / o.heads) * o.hidden * bits / 8;
  const int64_t gate_up_bytes = 2 * o.intermediate * o.hidden * bits / 8;
  model.shard_size = o.shard_size > 0
                         ? o.shard_size
                         : std::max({largest, qkv_bytes, gate_up_bytes, (model.total + 3) / 4});
  return model;
}

// The work directory: --dir, or a fresh one under $TMPDIR that goes away at the end (unless
// --keep).
class WorkDir {
 public:
  explicit WorkDir(const DemoOptions& o) {
    if (o.dir) {
      dir_ = *o.dir;
      fs::create_directories(dir_);
      return;
    }
    std::string pattern = (fs::temp_directory_path() / "d9d-demo-XXXXXX").string();
    D9D_CHECK_AS(io::IoError, ::mkdtemp(pattern.data()) != nullptr,
                 "demo: cannot create a directory under ", fs::temp_directory_path().string(), ": ",
                 std::strerror(errno));
    dir_ = pattern;
    removed_ = !o.keep;
  }
  WorkDir(const WorkDir&) = delete;
  WorkDir& operator=(const WorkDir&) = delete;
  ~WorkDir() {
    std::error_code ec;
    if (removed_) fs::remove_all(dir_, ec);
  }
  const fs::path& path() const { return dir_; }
  bool removed() const { return removed_; }  // at the end

 private:
  fs::path dir_;
  bool removed_ = false;
};

// One step of the demo, done: what it was, a line of detail, and its throughput.
struct Step {
  std::string what;
  std::string detail;
  double seconds = 0;
  int64_t bytes = 0;
  bool ok = true;  // false: a comparison found differences
};

std::string shards_text(int64_t n) {
  return count_of(n, "shard");
}

// 1. The original checkpoint, made tensor by tensor.
Step write_original(const DemoOptions& o, const DemoModel& model, const fs::path& original) {
  model_state::WriteOptions wo;
  wo.shard_size = model.shard_size;
  wo.show_progress = o.show_progress;
  wo.overwrite = true;
  const Stopwatch clock;
  std::vector<std::string> names;
  for (const auto& [name, spec] : model.specs) names.push_back(name);
  RandomSource source(model.specs, o.seed);
  model_state::write_model_state_local(original, mapper::identity_mapper_from_names(names), source,
                                       wo);
  const auto index = io::SafetensorsIndex::read(original / io::kIndexFileName);
  return {"write random weights -> llama-hf/",
          std::to_string(model.specs.size()) + " tensors, " + format_bytes(model.total) + " in " +
              shards_text(static_cast<int64_t>(index.files().size())),
          clock.seconds(), model.total};
}

// 2. Forward conversion with the built-in llama spec (`co` says how).
Step convert_forward(const ConvertOptions& co) {
  const ConvertResult r = run_convert(co);
  return {"convert llama-hf/ -> fused/",
          co.spec_origin + ": " + std::to_string(r.input_count) +
              " tensors -> " + std::to_string(r.output_count) +
              " (qkv = cat(q, k, v), "
              "gate_up = cat(gate, up), renames) in " +
              shards_text(r.shard_count),
          r.seconds, r.output_bytes};
}

// 4. Back, with the inverse the conversion record makes possible.
Step convert_back(const ConvertOptions& ro) {
  const ConvertResult r = run_convert(ro);
  return {"convert fused/ -> llama-hf-back/ --reverse",
          "inverse from fused/" + std::string(kSidecarFileName) + ": " +
              std::to_string(r.input_count) + " tensors -> " + std::to_string(r.output_count) +
              " (split qkv by the recorded sizes, "
              "chunk gate_up) in " +
              shards_text(r.shard_count),
          r.seconds, r.output_bytes};
}

// 3. and 5.: a comparison.
Step verify(std::string what, const VerifyOptions& vo) {
  const VerifyResult r = run_verify(vo);
  return {std::move(what),
          r.equal() ? std::to_string(r.compared) + " tensors bit-exact" : "MISMATCH (see above)",
          r.seconds, r.bytes, r.equal()};
}

void print_header(const DemoOptions& o, const DemoModel& model, const WorkDir& work) {
  std::printf(
      "d9d demo: a Llama-shaped checkpoint to fused QKV + gate_up and back, checked bit for bit\n"
      "  model: hidden %lld, %lld layers, %lld heads (%lld KV heads, head_dim %lld), "
      "intermediate %lld, vocab %lld, %s: %zu tensors, %s; shards of at most %s\n"
      "  in %s%s\n\n",
      static_cast<long long>(o.hidden), static_cast<long long>(o.layers),
      static_cast<long long>(o.heads), static_cast<long long>(o.kv_heads),
      static_cast<long long>(o.hidden / o.heads), static_cast<long long>(o.intermediate),
      static_cast<long long>(o.vocab), o.dtype.c_str(), model.specs.size(),
      format_bytes(model.total).c_str(), format_bytes(model.shard_size).c_str(),
      work.path().string().c_str(),
      work.removed() ? " (removed at the end; --dir or --keep keeps it)" : "");
  std::fflush(stdout);
}

void print_step(int number, const Step& step) {
  std::printf("%d. %-44s %9s  %s\n", number, step.what.c_str(),
              format_seconds(step.seconds).c_str(), format_rate(step.bytes, step.seconds).c_str());
  if (!step.detail.empty()) std::printf("   %s\n", step.detail.c_str());
  std::fflush(stdout);
}

void print_footer(bool ok, const WorkDir& work, const fs::path& fused) {
  std::printf("\nd9d demo: %s\n",
              ok ? "OK: the round trip is bit-exact" : "FAILED: the checkpoints differ");
  if (!work.removed()) {
    std::printf("  the checkpoints are in %s (try: d9d inspect %s)\n", work.path().string().c_str(),
                fused.string().c_str());
  }
}

}  // namespace

int run_demo(const DemoOptions& o) {
  if (const std::string problem = model_problem(o); !problem.empty()) {
    return usage_error("demo", problem);
  }
  const DemoModel model = demo_model(o);
  const WorkDir work(o);
  const fs::path original = work.path() / "llama-hf";
  const fs::path fused = work.path() / "fused";
  const fs::path back = work.path() / "llama-hf-back";
  print_header(o, model, work);

  ConvertOptions co;
  co.source = original;
  co.dest = fused;
  co.spec_text = std::string(mapper::find_builtin_spec("llama")->text);
  co.spec_origin = "specs/llama.json (built-in)";
  co.shard_size = model.shard_size;
  co.threads = o.threads;
  co.overwrite = true;
  co.show_progress = o.show_progress;
  co.quiet = true;
  // The fused checkpoint equals the original read through the spec.
  VerifyOptions vo;
  vo.a = original;
  vo.b = fused;
  vo.spec_text = co.spec_text;
  vo.spec_origin = co.spec_origin;
  vo.threads = o.threads;
  vo.show_progress = o.show_progress;
  vo.quiet = true;
  ConvertOptions ro = co;
  ro.source = fused;
  ro.dest = back;
  ro.spec_text.reset();
  ro.spec_origin.clear();
  ro.reverse = true;
  // The round trip is the identity, bit for bit.
  VerifyOptions bo;
  bo.a = back;
  bo.b = original;
  bo.threads = o.threads;
  bo.show_progress = o.show_progress;
  bo.quiet = true;

  print_step(1, write_original(o, model, original));
  print_step(2, convert_forward(co));
  const Step fused_check = verify("verify fused/ == llama-hf/ through the spec", vo);
  print_step(3, fused_check);
  print_step(4, convert_back(ro));
  const Step round_trip = verify("verify llama-hf-back/ == llama-hf/", bo);
  print_step(5, round_trip);

  const bool ok = fused_check.ok && round_trip.ok;
  print_footer(ok, work, fused);
  return ok ? kExitOk : kExitFailure;
}

Command add_demo(CLI::App& app) {
  auto options = std::make_shared<DemoOptions>();
  CLI::App* command = app.add_subcommand(
      "demo",
      "Make a Llama-shaped checkpoint, convert it to fused QKV + gate_up and back, verify it is "
      "bit-exact, and print the throughput");
  command->add_option("--hidden", options->hidden, "Hidden size")->capture_default_str();
  command
      ->add_option("--layers", options->layers,
                   "Decoder layers (at most " + std::to_string(kMaxDemoLayers) + ")")
      ->capture_default_str();
  command->add_option("--heads", options->heads, "Attention heads")->capture_default_str();
  command->add_option("--kv-heads", options->kv_heads, "Key/value heads (GQA)")
      ->capture_default_str();
  command->add_option("--intermediate", options->intermediate, "MLP intermediate size")
      ->capture_default_str();
  command->add_option("--vocab", options->vocab, "Vocabulary size")->capture_default_str();
  command->add_option("--dtype", options->dtype, "BF16, F16 or F32")
      ->check(CLI::IsMember({"BF16", "F16", "F32"}))
      ->capture_default_str();
  // A size, or "auto" (DemoOptions::shard_size 0).
  const CLI::Validator size_or_auto(
      [](std::string& text) -> std::string {
        if (text == "auto") return {};
        try {
          if (parse_size(text) <= 0) return "the size must be positive";
          return {};
        } catch (const Error& e) {
          return e.what();
        }
      },
      "SIZE");
  command
      ->add_option_function<std::string>(
          "--shard-size",
          [options](const std::string& text) {
            options->shard_size = text == "auto" ? 0 : parse_size(text);
          },
          "Shard size of every checkpoint (auto: a quarter of the model, at least its largest "
          "tensor)")
      ->check(size_or_auto)
      ->default_str("auto");
  command->add_option("--seed", options->seed, "Seed of the random weights")
      ->check(CLI::NonNegativeNumber)  // CLI11 would wrap "-1" into an unsigned seed
      ->capture_default_str();
  add_threads_option(*command, options->threads);
  command->add_option("--dir", options->dir,
                      "Work here and keep the checkpoints (default: a temporary directory)");
  command->add_flag("--keep", options->keep, "Keep the temporary directory");
  add_progress_flag(*command, options->show_progress);
  return {command, [options] { return run_demo(*options); }};
}

}  // namespace d9d::cli
