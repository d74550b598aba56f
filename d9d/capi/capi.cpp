// The C ABI (<d9d/d9d.h>) over the engine: handles, the error boundary, and the functions.
//
// Note [C ABI boundary]: every entry point runs its body in guarded(), which turns any exception
// into a D9D_E_* code and this thread's last-error message "function: what". The code comes from
// the exception's type (d9d's error hierarchy: FormatError, IoError, SpecError, DeviceError,
// CollectiveError, then any other d9d::Error as D9D_E_VALUE), or, where only the caller of an
// engine function knows what a ValueError means (a spec that does not fit the checkpoint; a
// callback's own code), from a CodedError thrown here. Handles own their engine objects; tensors
// go out as DLManagedTensorVersioned exports of d9d::Tensor, whose context holds the Tensor and so
// its Storage (the mapped file, or the bytes a mapper made) until the caller's deleter call.
#include <d9d/d9d.h>

#include <filesystem>
#include <memory>
#include <new>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <d9d/dist/process_group.hpp>
#include <d9d/dlpack.hpp>
#include <d9d/error.hpp>
#include <d9d/io/checkpoint.hpp>
#include <d9d/mapper/mapper.hpp>
#include <d9d/mapper/spec.hpp>
#include <d9d/model_state/conversion.hpp>
#include <d9d/model_state/reader.hpp>
#include <d9d/version.hpp>

#include "options.hpp"


struct d9d_checkpoint {
  d9d::io::Checkpoint checkpoint;
};

struct d9d_stream {
  explicit d9d_stream(d9d::model_state::ModelStateStream s) : stream(std::move(s)) {}
  d9d::model_state::ModelStateStream stream;
  std::optional<d9d::model_state::ModelStateStream::iterator> it;  // set by the first next
  std::string name;                                                // of the tensor last handed out
  bool ended = false;
  int failed = D9D_OK;  // the code of the failure that ended the stream, and its message
  std::string failure;
};

namespace d9d::capi {
namespace {

using d9d::detail::str_cat;

thread_local std::string t_last_error;

// An error whose C ABI code is decided where it is thrown.
class CodedError : public Error {
 public:
  CodedError(int code, const std::string& message) : Error(message), code_(code) {}
  int code() const { return code_; }

 private:
  int code_;
};

int fail_verbatim(int code, std::string_view message) noexcept {
  try {
    t_last_error.assign(message);
  } catch (...) {  // no memory for the message: the code still says it
  }
  return code;
}

int fail(int code, const char* function, std::string_view message) noexcept {
  try {
    t_last_error.assign(function).append(": ").append(message);
  } catch (...) {
  }
  return code;
}

// Runs `body` (which returns a status), turning every exception into its code (Note [C ABI
// boundary]).
template <class Body>
int guarded(const char* function, Body&& body) noexcept {
  try {
    return body();
  } catch (const CodedError& e) {
    return fail(e.code(), function, e.what());
  } catch (const io::FormatError& e) {
    return fail(D9D_E_FORMAT, function, e.what());
  } catch (const io::IoError& e) {
    return fail(D9D_E_IO, function, e.what());
  } catch (const mapper::SpecError& e) {
    return fail(D9D_E_SPEC, function, e.what());
  } catch (const DeviceError& e) {
    return fail(D9D_E_DEVICE, function, e.what());
  } catch (const dist::CollectiveError& e) {
    return fail(D9D_E_DIST, function, e.what());
  } catch (const Error& e) {
    return fail(D9D_E_VALUE, function, e.what());
  } catch (const std::bad_alloc&) {
    return fail(D9D_E_NOMEM, function, "out of memory");
  } catch (const std::filesystem::filesystem_error& e) {
    return fail(D9D_E_IO, function, e.what());
  } catch (const std::exception& e) {
    return fail(D9D_E_INTERNAL, function, e.what());
  } catch (...) {
    return fail(D9D_E_INTERNAL, function, "an exception of unknown type");
  }
}

template <class Pointer>
void require(Pointer pointer, const char* argument) {
  if (pointer == nullptr) throw CodedError(D9D_E_VALUE, str_cat(argument, " is NULL"));
}

// The spec of a NULL spec_json: no rules, and keys no rule consumes are kept as they are.
constexpr std::string_view kIdentitySpec = R"({"d9d_mapper_spec": 1, "rules": []})";

// The conversion of `checkpoint` through `spec_json`, its params from options' "params", then the
// checkpoint's config.json; any spec failure is D9D_E_SPEC (a spec that does not fit the keys, or
// whose params have no value, is a ValueError in the engine).
model_state::Conversion conversion_of(const io::Checkpoint& checkpoint, const char* spec_json,
                                      const Options& options) {
  try {
    if (spec_json == nullptr) {
      return model_state::forward_conversion(checkpoint, std::string(kIdentitySpec),
                                             "identity spec (spec_json NULL)", options.params);
    }
    return model_state::forward_conversion(checkpoint, spec_json, "spec_json", options.params);
  } catch (const ValueError& e) {
    throw CodedError(D9D_E_SPEC, e.what());
  }
}

// The groups of `inner` that produce an output in `kept`, producing only those: what d9d_load_into
// reads when the callback skips outputs (a group with no kept output is not read at all).
class KeptOutputs final : public mapper::ModelStateMapper {
 public:
  KeptOutputs(mapper::MapperPtr inner, std::set<std::string> kept)
      : inner_(std::move(inner)), kept_(std::move(kept)) {
    for (const mapper::StateGroup& g : inner_->state_dependency_groups()) {
      mapper::StateGroup mine{g.inputs, {}};
      for (const std::string& out : g.outputs) {
        if (kept_.contains(out)) mine.outputs.insert(out);
      }
      if (!mine.outputs.empty()) groups_.insert(std::move(mine));
    }
  }
  mapper::StateDict apply(mapper::StateDict group) const override {
    return kept_only(inner_->apply(std::move(group)));
  }
  mapper::SpecDict infer(const mapper::SpecDict& group) const override {
    return kept_only(inner_->infer(group));
  }
  std::string describe() const override { return "kept outputs of " + inner_->describe(); }

 private:
  template <class Dict>
  Dict kept_only(Dict dict) const {
    std::erase_if(dict, [this](const auto& entry) { return !kept_.contains(entry.first); });
    return dict;
  }

  mapper::MapperPtr inner_;
  std::set<std::string> kept_;
};

// What d9d_load_into's callback sees of an output: `dl` viewing `shape` and row-major `strides`.
struct SpecTensor {
  Shape shape;
  Strides strides;
  DLTensor dl{};

  SpecTensor(const SpecTensor&) = delete;  // dl points into this object
  SpecTensor& operator=(const SpecTensor&) = delete;
  SpecTensor(const mapper::TensorSpec& spec, Device device)
      : shape(spec.shape), strides(contiguous_strides(spec.shape)) {
    const DTypeInfo& info = dtype_info(spec.dtype);
    dl.device.device_type = device.is_cuda() ? kDLCUDA : kDLCPU;
    dl.device.device_id = device.index();
    dl.ndim = static_cast<int32_t>(shape.size());
    dl.dtype.code = info.dlpack_code;
    dl.dtype.bits = static_cast<uint8_t>(info.bits);
    dl.dtype.lanes = 1;
    dl.shape = shape.data();
    dl.strides = strides.data();
  }
};

// The engine's buffer for output `name`, checked against the callback contract in <d9d/d9d.h>:
// a Tensor viewing `into` (not owning it).
Tensor target_tensor(const std::string& name, const SpecTensor& spec, const DLTensor& into) {
  auto mismatch = [&name](const auto&... what) {
    throw CodedError(D9D_E_VALUE, str_cat("the target of ", name, " ", what...));
  };
  auto dtype_str = [](DLDataType t) {
    return str_cat("(code ", int{t.code}, ", bits ", int{t.bits}, ", lanes ", t.lanes, ")");
  };
  const DLTensor& want = spec.dl;
  if (into.dtype.code != want.dtype.code || into.dtype.bits != want.dtype.bits ||
      into.dtype.lanes != 1) {
    mismatch("has DLPack dtype ", dtype_str(into.dtype), ", expected ", dtype_str(want.dtype));
  }
  if (into.ndim != want.ndim) mismatch("has ", into.ndim, " dims, expected ", want.ndim);
  if (into.ndim > 0 && into.shape == nullptr) mismatch("has a NULL shape");
  for (int32_t i = 0; i < into.ndim; ++i) {
    if (into.shape[i] != spec.shape[i]) {
      mismatch("has shape ", Shape(std::span<const int64_t>(into.shape, into.ndim)), ", expected ",
               spec.shape);
    }
  }
  if (into.strides != nullptr) {
    for (int32_t i = 0; i < into.ndim; ++i) {
      if (spec.shape[i] != 1 && into.strides[i] != spec.strides[i]) {
        mismatch("has strides ", Strides(std::span<const int64_t>(into.strides, into.ndim)),
                 ", expected row-major ", spec.strides);
      }
    }
  }
  const bool host = into.device.device_type == kDLCPU || into.device.device_type == kDLCUDAHost;
  const bool same_device =
      want.device.device_type == kDLCPU
          ? host
          : into.device.device_type == kDLCUDA && into.device.device_id == want.device.device_id;
  if (!same_device) {
    mismatch("is on DLPack device (type ", static_cast<int>(into.device.device_type), ", id ",
             into.device.device_id, "), expected (type ", static_cast<int>(want.device.device_type),
             ", id ", want.device.device_id, ")");
  }
  if (into.data == nullptr && numel_of(spec.shape) > 0) mismatch("has NULL data");
  // from_dlpack_versioned does the import (and its checks); it owns a copy of the description,
  // which it deletes when the last view of the buffer goes. The buffer itself is the engine's.
  auto* view = new DLManagedTensorVersioned{};
  view->version = {DLPACK_MAJOR_VERSION, DLPACK_MINOR_VERSION};
  view->dl_tensor = into;
  view->deleter = [](DLManagedTensorVersioned* self) { delete self; };
  try {
    return from_dlpack_versioned(view);
  } catch (const ValueError& e) {
    throw CodedError(D9D_E_VALUE, str_cat("the target of ", name, ": ", e.what()));
  }
}

}  // namespace
}  // namespace d9d::capi

using d9d::capi::CodedError;
using d9d::capi::guarded;
using d9d::capi::require;

extern "C" {

int d9d_abi_version(void) noexcept {
  return D9D_ABI_VERSION;
}

const char* d9d_version(void) noexcept {
  return D9D_VERSION_STRING;
}

const char* d9d_last_error(void) noexcept {
  return d9d::capi::t_last_error.c_str();
}

int d9d_open(const char* path, d9d_checkpoint** out) noexcept {
  return guarded("d9d_open", [&] {
    require(out, "out");
    *out = nullptr;
    require(path, "path");
    *out = new d9d_checkpoint{d9d::io::Checkpoint::open(path)};
    return D9D_OK;
  });
}

void d9d_close(d9d_checkpoint* checkpoint) noexcept {
  delete checkpoint;
}

int64_t d9d_num_tensors(const d9d_checkpoint* checkpoint) noexcept {
  if (checkpoint == nullptr) {
    return d9d::capi::fail(D9D_E_VALUE, "d9d_num_tensors", "checkpoint is NULL");
  }
  return static_cast<int64_t>(checkpoint->checkpoint.keys().size());
}

const char* d9d_tensor_name(const d9d_checkpoint* checkpoint, int64_t index) noexcept {
  const char* name = nullptr;
  guarded("d9d_tensor_name", [&] {
    require(checkpoint, "checkpoint");
    const std::vector<std::string>& keys = checkpoint->checkpoint.keys();
    if (index < 0 || index >= static_cast<int64_t>(keys.size())) {
      throw CodedError(D9D_E_VALUE, d9d::detail::str_cat("index ", index, " is out of range: ",
                                                         checkpoint->checkpoint.dir().string(),
                                                         " has ", keys.size(), " tensors"));
    }
    name = keys[static_cast<size_t>(index)].c_str();
    return D9D_OK;
  });
  return name;
}

int d9d_get_tensor(d9d_checkpoint* checkpoint, const char* name,
                   DLManagedTensorVersioned** out) noexcept {
  return guarded("d9d_get_tensor", [&] {
    require(out, "out");
    *out = nullptr;
    require(checkpoint, "checkpoint");
    require(name, "name");
    *out = d9d::to_dlpack_versioned(checkpoint->checkpoint.tensor(name));
    return D9D_OK;
  });
}

int d9d_to_legacy_dlpack(DLManagedTensorVersioned* tensor, DLManagedTensor** out) noexcept {
  return guarded("d9d_to_legacy_dlpack", [&] {
    require(out, "out");
    *out = nullptr;
    require(tensor, "tensor");
    auto* legacy = new DLManagedTensor{};
    legacy->dl_tensor = tensor->dl_tensor;
    legacy->manager_ctx = tensor;
    legacy->deleter = [](DLManagedTensor* self) {
      auto* versioned = static_cast<DLManagedTensorVersioned*>(self->manager_ctx);
      if (versioned->deleter != nullptr) versioned->deleter(versioned);
      delete self;
    };
    *out = legacy;
    return D9D_OK;
  });
}

int d9d_stream_open(const char* ckpt_path, const char* spec_json, const char* options_json,
                    d9d_stream** out) noexcept {
  return guarded("d9d_stream_open", [&] {
    require(out, "out");
    *out = nullptr;
    require(ckpt_path, "ckpt_path");
    const d9d::capi::Options o =
        d9d::capi::parse_options(options_json, d9d::capi::OptionsFor::kRead);
    const d9d::model_state::Conversion c =
        d9d::capi::conversion_of(d9d::io::Checkpoint::open(ckpt_path), spec_json, o);
    *out = new d9d_stream(d9d::model_state::read_model_state(ckpt_path, c.mapper, o.read));
    return D9D_OK;
  });
}

int d9d_stream_next(d9d_stream* stream, const char** name,
                    DLManagedTensorVersioned** out) noexcept {
  if (name != nullptr) *name = nullptr;
  if (out != nullptr) *out = nullptr;
  bool arguments_ok = false;
  const int status = guarded("d9d_stream_next", [&] {
    require(stream, "stream");
    require(name, "name");
    require(out, "out");
    arguments_ok = true;
    if (stream->failed != D9D_OK) throw CodedError(stream->failed, "");  // replayed below
    if (stream->ended) return 0;
    if (!stream->it) {
      stream->it.emplace(stream->stream.begin());
    } else {
      ++*stream->it;
    }
    if (*stream->it == std::default_sentinel) {
      stream->ended = true;
      return 0;
    }
    stream->name = (*stream->it)->first;
    *out = d9d::to_dlpack_versioned((*stream->it)->second);
    *name = stream->name.c_str();
    return 1;
  });
  if (status < 0 && arguments_ok) {
    // A failure ends the stream: later calls give the same code and message.
    if (stream->failed != D9D_OK) return d9d::capi::fail_verbatim(stream->failed, stream->failure);
    stream->failed = status;
    try {
      stream->failure = d9d::capi::t_last_error;
    } catch (...) {
    }
  }
  return status;
}

void d9d_stream_close(d9d_stream* stream) noexcept {
  delete stream;
}

int d9d_load_into(const char* ckpt_path, const char* spec_json, const char* options_json,
                  d9d_target_fn target, void* user) noexcept {
  using namespace d9d;
  return guarded("d9d_load_into", [&] {
    require(ckpt_path, "ckpt_path");
    require(target, "target");
    const capi::Options o = capi::parse_options(options_json, capi::OptionsFor::kRead);
    const io::Checkpoint checkpoint = io::Checkpoint::open(ckpt_path);
    const model_state::Conversion c = capi::conversion_of(checkpoint, spec_json, o);
    const model_state::ReadPlan plan = model_state::plan_read(checkpoint, *c.mapper);
    const auto outputs = plan.outputs();
    D9D_CHECK(outputs.has_value(), "the spec's outputs cannot be inferred");
    // Every callback before any byte is read: a callback's error leaves the buffers untouched.
    mapper::StateDict targets;
    for (const auto& [name, spec] : *outputs) {
      const capi::SpecTensor wanted(spec, o.read.device);
      DLTensor into = wanted.dl;
      const int answer = target(user, name.c_str(), &wanted.dl, &into);
      if (answer == 1) continue;
      if (answer < 0) {
        throw CodedError(answer,
                         detail::str_cat("the target callback returned ", answer, " for ", name));
      }
      if (answer != 0) {
        throw CodedError(D9D_E_VALUE,
                         detail::str_cat("the target callback returned ", answer, " for ", name,
                                         " (0: fill, 1: skip, negative: an error)"));
      }
      targets.emplace(name, capi::target_tensor(name, wanted, into));
    }
    if (targets.empty()) return D9D_OK;
    mapper::MapperPtr m = c.mapper;
    if (targets.size() < outputs->size()) {
      std::set<std::string> kept;
      for (const auto& entry : targets) kept.insert(entry.first);
      m = std::make_shared<capi::KeptOutputs>(std::move(m), std::move(kept));
    }
    model_state::load_model_state(ckpt_path, std::move(m), o.read.device, targets, o.read);
    return D9D_OK;
  });
}

int d9d_builtin_spec(const char* name, const char* ckpt_path, const char** spec_json) noexcept {
  return guarded("d9d_builtin_spec", [&] {
    require(spec_json, "spec_json");
    *spec_json = nullptr;
    require(name, "name");
    const d9d::mapper::BuiltinSpec* s = nullptr;
    if (std::string_view(name) == "auto") {
      require(ckpt_path, "ckpt_path");
      const std::filesystem::path dir = d9d::model_state::checkpoint_dir(ckpt_path);
      if (!d9d::model_state::read_config_json(dir)) {
        throw CodedError(D9D_E_VALUE, d9d::detail::str_cat(dir.string(), " has no config.json, ",
                                                           "which names the architecture"));
      }
      try {
        s = &d9d::model_state::builtin_spec_for(ckpt_path);
      } catch (const d9d::ValueError& e) {
        throw CodedError(D9D_E_SPEC, e.what());
      }
    } else {
      s = d9d::mapper::find_builtin_spec(name);
      if (s == nullptr) {
        throw CodedError(D9D_E_SPEC, d9d::detail::str_cat("no built-in spec \"", name,
                                                          "\"; there are ",
                                                          d9d::mapper::builtin_specs_list()));
      }
    }
    *spec_json = s->text.data();  // a literal with its terminating NUL (embed_specs.py)
    return D9D_OK;
  });
}

int d9d_convert(const char* ckpt_path, const char* out_dir, const char* spec_json,
                const char* options_json) noexcept {
  using namespace d9d;
  return guarded("d9d_convert", [&] {
    require(ckpt_path, "ckpt_path");
    require(out_dir, "out_dir");
    capi::Options o = capi::parse_options(options_json, capi::OptionsFor::kConvert);
    o.read.label = "Converting";
    const model_state::Conversion c =
        capi::conversion_of(io::Checkpoint::open(ckpt_path), spec_json, o);
    try {
      model_state::convert_model_state_local(ckpt_path, out_dir, c, o.read, o.write);
    } catch (const model_state::CheckpointExistsError& e) {  // said in this ABI's words
      throw io::IoError(detail::str_cat(e.dir().string(), " already holds a checkpoint (",
                                        e.file(), "); write elsewhere, or replace it with the "
                                        "option \"overwrite\": true"));
    }
    return D9D_OK;
  });
}

}  // extern "C"
