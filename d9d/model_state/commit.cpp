// The destination of a checkpoint write: its lock, the commit and the recovery of an interrupted
// one (Note [checkpoint commit] in writer.hpp).
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <d9d/error.hpp>
#include <d9d/io/file.hpp>
#include <d9d/io/hashes.hpp>
#include <d9d/io/sha256.hpp>
#include <d9d/model_state/writer.hpp>

namespace d9d::model_state {
namespace fs = std::filesystem;
using d9d::detail::str_cat;

namespace {

constexpr std::string_view kLockName = ".d9d-lock";
constexpr std::string_view kJournalName = ".d9d-commit.json";
constexpr std::string_view kNewPrefix = ".d9d-new-";      // staged: a new file before the commit
constexpr std::string_view kOldPrefix = ".d9d-old-";      // set aside: an old file until the commit
constexpr std::string_view kShardPrefix = ".d9d-shard-";  // detail::temp_shard_name

std::string staged(std::string_view name) {
  return str_cat(kNewPrefix, name);
}
std::string aside(std::string_view name) {
  return str_cat(kOldPrefix, name);
}
bool starts_with(std::string_view s, std::string_view prefix) {
  return s.rfind(prefix, 0) == 0;
}
// A name from a file, for a message: at most 100 bytes of it.
std::string bounded(std::string_view name) {
  return name.size() <= 100 ? std::string(name) : str_cat(name.substr(0, 100), "...");
}

// ---- the test hook ------------------------------------------------------------------------------

// D9D_TEST_COMMIT_FAULT=kill:K or error:K (Note [checkpoint commit]); {0, false} without it.
struct Fault {
  long at = 0;
  bool kill = false;
};

Fault fault_from_environment() {
  const char* env = std::getenv("D9D_TEST_COMMIT_FAULT");
  if (env == nullptr) return {};
  const std::string_view text(env);
  const bool kill = starts_with(text, "kill:");
  if (!kill && !starts_with(text, "error:")) return {};
  return {std::strtol(env + (kill ? 5 : 6), nullptr, 10), kill};
}

// ---- file operations ----------------------------------------------------------------------------

// The operations of a commit in one directory, each a step() of the test hook. Removing a file
// that is not there is not an error: every undo and redo may be repeated.
struct Ops {
  fs::path dir;
  bool sync = true;
  Fault fault;
  mutable long steps = 0;

  // Called before every file operation.
  void step(const fs::path& path) const {
    if (fault.at <= 0 || ++steps != fault.at) return;
    if (fault.kill) ::kill(::getpid(), SIGKILL);
    d9d::detail::throw_error<io::IoError>("D9D_TEST_COMMIT_FAULT: step ", fault.at, " (",
                                          path.string(), ")");
  }

  fs::path at(std::string_view name) const { return dir / name; }
  bool exists(std::string_view name) const {
    struct stat st {};
    return ::lstat(at(name).c_str(), &st) == 0;
  }
  // Two names of one file (a link).
  bool same_file(std::string_view a, std::string_view b) const {
    struct stat sa {};
    struct stat sb {};
    return ::lstat(at(a).c_str(), &sa) == 0 && ::lstat(at(b).c_str(), &sb) == 0 &&
           sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
  }
  void write(std::string_view name, std::string_view text) const {
    step(at(name));
    io::AtomicFile file(at(name), static_cast<int64_t>(text.size()));
    file.write_at(0, reinterpret_cast<const std::byte*>(text.data()), text.size());
    file.commit(sync);
  }
  // A file no reader looks at before the journal names it (step 1): written in place and
  // fsynced; the journal's own write makes its name durable.
  void stage(std::string_view name, std::string_view text) const {
    step(at(name));
    const io::FileDescriptor fd = io::FileDescriptor::open(at(name), O_WRONLY | O_CREAT | O_TRUNC);
    io::pwrite_all(fd.get(), 0, reinterpret_cast<const std::byte*>(text.data()), text.size(),
                   at(name));
    if (sync && ::fsync(fd.get()) != 0) io::throw_errno("fsync", at(name), errno);
  }
  void rename(std::string_view from, std::string_view to) const {
    step(at(to));
    if (::rename(at(from).c_str(), at(to).c_str()) != 0) {
      d9d::detail::throw_error<io::IoError>("rename ", at(from).string(), " to ", to, ": ",
                                            std::strerror(errno));
    }
  }
  // A second name for the file `from`; a copy on a file system without hard links.
  void link(std::string_view from, std::string_view to) const {
    step(at(to));
    if (::link(at(from).c_str(), at(to).c_str()) == 0) return;
    const int err = errno;
    if (err != EPERM && err != EOPNOTSUPP && err != EMLINK) io::throw_errno("link", at(to), err);
    std::error_code ec;
    fs::copy_file(at(from), at(to), fs::copy_options::overwrite_existing, ec);
    D9D_CHECK_AS(io::IoError, !ec, "copy ", at(from).string(), " to ", to, ": ", ec.message());
    if (sync) {
      const io::FileDescriptor fd = io::FileDescriptor::open(at(to), O_RDONLY);
      if (::fsync(fd.get()) != 0) io::throw_errno("fsync", at(to), errno);
    }
  }
  void remove(std::string_view name) const {
    step(at(name));
    if (::unlink(at(name).c_str()) != 0 && errno != ENOENT) {
      io::throw_errno("remove", at(name), errno);
    }
  }
  void sync_dir() const {
    if (sync) io::fsync_parent_dir(at(kJournalName));
  }
};

// ---- the journal --------------------------------------------------------------------------------

// What a commit will do, written before it touches a name the old checkpoint uses (step 2).
struct Journal {
  // The rename that is the commit point: the staged index over the index, or (a checkpoint of one
  // file) the shard's temporary file over model.safetensors.
  std::pair<std::string, std::string> point;
  std::vector<std::pair<std::string, std::string>> shards;      // temporary -> final name
  std::vector<std::pair<std::string, std::string>> companions;  // staged -> final name
  // Set aside by a link, named by an interim index until the commit point: old files whose
  // names new shards take, and a model.safetensors (removed once the interim index is in place).
  std::vector<std::string> linked;
  bool index_linked = false;         // the old index set aside too (else the interim index is new)
  std::vector<std::string> moved;    // set aside by a rename: old companions
  std::vector<std::string> removed;  // old files the new checkpoint does not have (an index first)

  std::string to_json() const {
    return nlohmann::json{{"d9d_commit", 2},  {"point", point},
                          {"shards", shards}, {"companions", companions},
                          {"linked", linked}, {"index_linked", index_linked},
                          {"moved", moved},   {"removed", removed}}
        .dump(1);
  }

  static Journal read(const fs::path& path) {
    const std::string text = [&] {
      const io::MappedFile file = io::MappedFile::open(path);
      return std::string(reinterpret_cast<const char*>(file.data()), file.size());
    }();
    Journal j;
    try {
      // Nothing in a journal nests deeper than 3: refuse anything else before it can recurse.
      const auto shallow = [](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
        if (depth > 3) throw std::runtime_error("nested too deeply");
        return true;
      };
      const nlohmann::json json = nlohmann::json::parse(text, shallow);
      const int version = json.at("d9d_commit").get<int>();
      if (version == 1) {  // d9d before model.safetensors commits: the staged index was the point
        j.point = {json.at("index").get<std::string>(), std::string(io::kIndexFileName)};
      } else if (version == 2) {
        j.point = json.at("point").get<decltype(j.point)>();
      } else {
        throw std::runtime_error("unknown version");
      }
      j.shards = json.at("shards").get<decltype(j.shards)>();
      j.companions = json.at("companions").get<decltype(j.companions)>();
      j.linked = json.at("linked").get<decltype(j.linked)>();
      j.index_linked = json.at("index_linked").get<bool>();
      j.moved = json.at("moved").get<decltype(j.moved)>();
      j.removed = json.at("removed").get<decltype(j.removed)>();
    } catch (const std::exception& e) {
      d9d::detail::throw_error<io::IoError>(path.string(),
                                            ": not a journal of an interrupted d9d commit (",
                                            e.what(), "); if no d9d process wrote it, remove it");
    }
    // Every name stays in the directory, whoever wrote the file.
    std::vector<std::string_view> names{j.point.first, j.point.second};
    for (const auto& [a, b] : j.shards) names.insert(names.end(), {a, b});
    for (const auto& [a, b] : j.companions) names.insert(names.end(), {a, b});
    for (const auto* list : {&j.linked, &j.moved, &j.removed}) {
      names.insert(names.end(), list->begin(), list->end());
    }
    for (const std::string_view name : names) {
      D9D_CHECK_AS(io::IoError, io::is_plain_file_name(name), path.string(), ": \"", bounded(name),
                   "\" is not a plain file name");
    }
    return j;
  }
};

// Step 6, and the recovery of a commit killed after its commit point.
void finish(const Ops& ops, const Journal& j) {
  for (const auto& [from, to] : j.companions) {
    if (ops.exists(from)) ops.rename(from, to);
  }
  for (const std::string& name : j.linked) ops.remove(aside(name));
  if (j.index_linked) ops.remove(aside(io::kIndexFileName));
  for (const std::string& name : j.moved) ops.remove(aside(name));
  for (const std::string& name : j.removed) ops.remove(name);
  ops.sync_dir();
  ops.remove(kJournalName);  // if that is lost, the next writer finishes again: no harm
}

// Undoes steps 4 to 1 (the recovery of a commit killed before its commit point).
void undo(const Ops& ops, const Journal& j) {
  for (const auto& [temp, name] : j.shards) {
    if (ops.exists(temp)) {
      ops.remove(temp);
      continue;
    }
    // Renamed in at step 4 (no index names it), unless it is the old file again: never
    // replaced, or put back by an undo that was itself interrupted.
    const bool old_name = std::find(j.linked.begin(), j.linked.end(), name) != j.linked.end();
    if (!old_name || (ops.exists(aside(name)) && !ops.same_file(name, aside(name)))) {
      ops.remove(name);
    }
  }
  for (const std::string& name : j.linked) {
    if (ops.exists(aside(name)) && !ops.exists(name)) ops.link(aside(name), name);
  }
  ops.sync_dir();
  if (j.index_linked && ops.exists(aside(io::kIndexFileName))) {
    // The original index back. (When the index still is that file, rename does nothing.)
    ops.rename(aside(io::kIndexFileName), io::kIndexFileName);
    ops.remove(aside(io::kIndexFileName));
  } else if (!j.linked.empty() && !j.index_linked) {
    ops.remove(io::kIndexFileName);  // the interim index: there was none
  }
  for (const std::string& name : j.linked) ops.remove(aside(name));
  for (const std::string& name : j.moved) {
    if (ops.exists(aside(name))) ops.rename(aside(name), name);
  }
  ops.sync_dir();
  ops.remove(kJournalName);  // before the commit point's file: see recover()
  ops.sync_dir();
  ops.remove(j.point.first);
  for (const auto& [from, to] : j.companions) ops.remove(from);
}

// A commit that a killed process left: finished when the file its commit point renames is gone
// (the commit point passed), undone otherwise.
void recover(const Ops& ops) {
  if (!ops.exists(kJournalName)) return;
  const Journal j = Journal::read(ops.at(kJournalName));
  if (ops.exists(j.point.first)) {
    undo(ops, j);
  } else {
    finish(ops, j);
  }
}

// ---- the directory ------------------------------------------------------------------------------

// The pid in a temporary name of ours or of io's atomic writer, if the name is one.
std::optional<long> temp_file_pid(const std::string& name) {
  std::string_view rest;
  if (starts_with(name, kShardPrefix)) {
    rest = std::string_view(name).substr(kShardPrefix.size());
  } else if (auto at = name.find(".d9d-tmp-"); starts_with(name, ".") && at != std::string::npos) {
    rest = std::string_view(name).substr(at + 9);
  } else {
    return std::nullopt;
  }
  long pid = 0;
  size_t digits = 0;
  while (digits < rest.size() && rest[digits] >= '0' && rest[digits] <= '9') {
    pid = pid * 10 + (rest[digits] - '0');
    if (++digits > 9) return std::nullopt;
  }
  if (digits == 0 || digits >= rest.size() || rest[digits] != '-') return std::nullopt;
  return pid;
}

bool process_alive(long pid) {
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

// Temporary files of dead processes, and staged files without a journal (an undo killed after
// removing the journal).
void remove_leftovers(const Ops& ops) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(ops.dir)) {
    std::string name = entry.path().filename().string();
    const std::optional<long> pid = temp_file_pid(name);
    if ((pid && !process_alive(*pid)) || starts_with(name, kNewPrefix)) {
      names.push_back(std::move(name));
    }
  }
  std::error_code ec;
  for (const std::string& name : names) fs::remove(ops.at(name), ec);
}

// The checkpoint in the directory (Note [checkpoint commit]).
struct OldCheckpoint {
  // Its index; for a lone model.safetensors, one that names it for every tensor.
  std::optional<io::SafetensorsIndex> index;
  std::set<std::string> files;  // the .safetensors files its index names, and a model.safetensors
};

OldCheckpoint old_checkpoint(const Ops& ops) {
  OldCheckpoint old;
  auto unreadable = [&](std::string_view what, const Error& e) {
    d9d::detail::throw_error<io::IoError>(
        "write_model_state: cannot replace the checkpoint in ", ops.dir.string(), ": its ", what,
        " cannot be read, so which files belong to it is unknown (", e.what(),
        "); d9d replaces only the files it knows to be the checkpoint's: remove it by hand");
  };
  if (ops.exists(io::kIndexFileName)) {
    try {
      old.index = io::SafetensorsIndex::read(ops.at(io::kIndexFileName));
    } catch (const Error& e) {
      unreadable("index", e);
    }
    for (std::string& name : old.index->files()) {
      if (name.ends_with(".safetensors") && !starts_with(name, ".d9d-")) {
        old.files.insert(std::move(name));
      }
    }
  }
  if (ops.exists(io::kSingleFileName)) {
    old.files.emplace(io::kSingleFileName);
    if (!old.index) {
      try {
        const io::SafetensorsFile file = io::SafetensorsFile::open(ops.at(io::kSingleFileName));
        old.index.emplace();
        old.index->total_size = 0;
        for (const std::string& tensor : file.keys()) {
          old.index->weight_map.emplace(tensor, io::kSingleFileName);
          *old.index->total_size += file.info(tensor).nbytes();
        }
      } catch (const Error& e) {
        unreadable(io::kSingleFileName, e);
      }
    }
  }
  return old;
}

std::string holder_of(const fs::path& lock) {
  std::string note = io::LockFile::note_of(lock);
  while (!note.empty() && (note.back() == '\n' || note.back() == ' ')) note.pop_back();
  if (note.empty()) return "";
  const size_t space = note.find(' ');
  const std::string pid = note.substr(0, space);
  const std::string host = space == std::string::npos ? "" : note.substr(space + 1);
  char here[256] = {};
  ::gethostname(here, sizeof here - 1);
  return str_cat(" (pid ", pid, host.empty() || host == here ? "" : " on " + host, ")");
}

}  // namespace

void refuse_existing_checkpoint(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (starts_with(name, ".")) continue;
    const bool is_checkpoint =
        name == io::kIndexFileName || (name.size() > 12 && name.ends_with(".safetensors"));
    if (is_checkpoint) throw CheckpointExistsError(dir, name);
  }
}

std::string shard_name(size_t index, size_t count, bool single_file_if_one_shard) {
  if (count == 1 && single_file_if_one_shard) return std::string(io::kSingleFileName);
  return io::shard_file_name(static_cast<int>(index), static_cast<int>(count));
}

// ---- Destination --------------------------------------------------------------------------------

struct Destination::Impl {
  Ops ops;
  WriteOptions options;
  io::LockFile lock;
  bool committed = false;

  // What a commit of `parts` writes and does (Note [checkpoint commit]), before it does it.
  struct Plan {
    Journal journal;
    std::optional<std::string> index;   // the new index's JSON; none for a model.safetensors
    std::string interim;                // the interim index's, when the journal sets files aside
    std::optional<std::string> hashes;  // d9d-hashes.json's text (WriteOptions::write_hashes)
  };
  Plan plan(std::span<const LocalShards> parts) const;
  void commit(std::span<const LocalShards> parts);
};

Destination::Destination(fs::path dir, const WriteOptions& options)
    : impl_(std::make_unique<Impl>()) {
  Impl& d = *impl_;
  d.ops.dir = std::move(dir);
  d.ops.sync = options.fsync;
  d.ops.fault = fault_from_environment();
  d.options = options;
  const fs::path& path = d.ops.dir;
  std::error_code ec;
  fs::create_directories(path, ec);
  D9D_CHECK_AS(io::IoError, !ec, "write_model_state: cannot create ", path.string(), ": ",
               ec.message());
  D9D_CHECK_AS(io::IoError, ::access(path.c_str(), W_OK) == 0, "write_model_state: ", path.string(),
               " is not writable");
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  std::optional<io::LockFile> lock =
      io::LockFile::try_lock(d.ops.at(kLockName), str_cat(::getpid(), " ", host, "\n"));
  D9D_CHECK_AS(io::IoError, lock.has_value(), "write_model_state: ", path.string(),
               " is being written by another d9d process", holder_of(d.ops.at(kLockName)),
               "; wait for it to finish, or write elsewhere");
  d.lock = std::move(*lock);
  recover(d.ops);
  remove_leftovers(d.ops);
  if (options.overwrite) {
    old_checkpoint(d.ops);  // a checkpoint that cannot be read is an error now, not at the end
  } else {
    refuse_existing_checkpoint(path);
  }
}

Destination::Destination(Destination&&) noexcept = default;
Destination& Destination::operator=(Destination&&) noexcept = default;
Destination::~Destination() = default;

const fs::path& Destination::dir() const {
  return impl_->ops.dir;
}

Destination::Impl::Plan Destination::Impl::plan(std::span<const LocalShards> parts) const {
  Plan plan;
  Journal& j = plan.journal;
  size_t count = 0;
  for (const LocalShards& p : parts) count += p.files.size();
  check_shard_count(count, options.shard_size);
  const bool single = count == 1 && options.single_file_if_one_shard;
  std::map<std::string, std::string> final_name;  // temporary -> final
  io::SafetensorsIndex index;
  index.total_size = 0;
  for (const LocalShards& p : parts) {
    *index.total_size += p.total_size;
    for (const auto& [tensor, file] : p.weight_map) {
      auto [it, fresh] = final_name.emplace(file, "");
      if (fresh) {
        it->second = shard_name(final_name.size() - 1, count, single);
        if (!single) j.shards.emplace_back(file, it->second);
      }
      D9D_CHECK(index.weight_map.emplace(tensor, it->second).second, "write_model_state: ", tensor,
                " was written by two processes");
    }
  }
  D9D_CHECK(final_name.size() == count, "write_model_state: ", count - final_name.size(),
            " shard file(s) hold no tensor");
  if (single) {
    j.point = {final_name.begin()->first, std::string(io::kSingleFileName)};  // its one file
  } else {
    plan.index = index.to_json();
    j.point = {staged(io::kIndexFileName), std::string(io::kIndexFileName)};
  }
  // The old checkpoint: which of its files are set aside, which go after the commit point.
  if (!options.overwrite) refuse_existing_checkpoint(ops.dir);
  OldCheckpoint old = options.overwrite ? old_checkpoint(ops) : OldCheckpoint{};
  std::set<std::string> fresh;
  if (single) {
    // The commit point replaces a model.safetensors in one rename; an old index goes first after
    // it (until then d9d's reader refuses the directory, transformers reads the new file).
    fresh.emplace(io::kSingleFileName);
    if (ops.exists(io::kIndexFileName)) j.removed.emplace_back(io::kIndexFileName);
  }
  for (const auto& [temp, name] : j.shards) {
    fresh.insert(name);
    if (!ops.exists(name)) continue;
    D9D_CHECK_AS(io::IoError, old.files.contains(name),
                 "write_model_state: ", ops.at(name).string(),
                 " is not part of the checkpoint there (no index names it) and the new "
                 "checkpoint needs its name; d9d replaces only the old checkpoint's files: move "
                 "it away");
    j.linked.push_back(name);
  }
  if (!single && old.files.contains(std::string(io::kSingleFileName))) {
    j.linked.emplace_back(io::kSingleFileName);  // read first by transformers: gone before step 5
  }
  for (const std::string& name : old.files) {
    if (!fresh.contains(name)) j.removed.push_back(name);
  }
  if (!j.linked.empty()) {
    j.index_linked = ops.exists(io::kIndexFileName);
    for (auto& [tensor, file] : old.index->weight_map) {
      if (std::find(j.linked.begin(), j.linked.end(), file) != j.linked.end()) file = aside(file);
    }
    plan.interim = old.index->to_json();
  }
  for (const auto& [name, text] : options.companion_files) {
    D9D_CHECK(io::is_plain_file_name(name) && !starts_with(name, ".d9d-") &&
                  name != io::kIndexFileName && name != io::kHashesFileName &&
                  !name.ends_with(".safetensors"),
              "write_model_state: \"", bounded(name), "\" cannot name a companion file");
    if (text) j.companions.emplace_back(staged(name), name);
    if (ops.exists(name)) j.moved.push_back(name);
  }
  // A hash list describes the checkpoint beside it: an old one goes with the old checkpoint.
  if (ops.exists(io::kHashesFileName)) j.moved.emplace_back(io::kHashesFileName);
  if (options.write_hashes) {
    // Digests computed as the shards were written (Note [hashing as written] in io's writer.cpp);
    // a shard without one is hashed here.
    std::map<std::string, std::string> sums;
    std::vector<fs::path> unhashed;
    std::vector<std::string> unhashed_names;
    for (const auto& [temp, name] : final_name) {
      const std::string* digest = nullptr;
      for (const LocalShards& p : parts) {
        if (const auto it = p.sha256.find(temp); it != p.sha256.end()) digest = &it->second;
      }
      if (digest != nullptr) {
        sums[name] = *digest;
      } else {
        unhashed.push_back(ops.at(temp));
        unhashed_names.push_back(name);
      }
    }
    const std::vector<std::string> digests = io::sha256_of_files(unhashed);
    for (size_t k = 0; k < digests.size(); ++k) sums[unhashed_names[k]] = digests[k];
    if (plan.index) {
      sums[std::string(io::kIndexFileName)] = io::sha256_hex(std::as_bytes(std::span(*plan.index)));
    }
    plan.hashes = io::hashes_json(sums);
    j.companions.emplace_back(staged(io::kHashesFileName), std::string(io::kHashesFileName));
  }
  return plan;
}

void Destination::Impl::commit(std::span<const LocalShards> parts) {
  const Plan plan = this->plan(parts);
  const Journal& j = plan.journal;
  // 1-2: staged files and the journal; an error here only has them to remove (the journal
  // first: without it, a staged index that is gone would read as a commit point passed).
  try {
    if (plan.index) ops.stage(j.point.first, *plan.index);
    for (const auto& [name, text] : options.companion_files) {
      if (text) ops.stage(staged(name), *text);
    }
    if (plan.hashes) ops.stage(staged(io::kHashesFileName), *plan.hashes);
    ops.write(kJournalName, j.to_json());
  } catch (...) {
    std::error_code ec;
    if (!fs::remove(ops.at(kJournalName), ec) && ec) throw;  // the next writer undoes it all
    if (plan.index) fs::remove(ops.at(j.point.first), ec);
    for (const auto& [from, to] : j.companions) fs::remove(ops.at(from), ec);
    throw;
  }
  // 3-5: an error here is undone from the journal.
  try {
    if (!j.linked.empty()) {
      for (const std::string& name : j.linked) ops.link(name, aside(name));
      if (j.index_linked) ops.link(io::kIndexFileName, aside(io::kIndexFileName));
      ops.write(io::kIndexFileName, plan.interim);
      for (const std::string& name : j.linked) {
        if (std::none_of(j.shards.begin(), j.shards.end(),
                         [&](const auto& shard) { return shard.second == name; })) {
          ops.remove(name);  // a model.safetensors: its link holds it now
        }
      }
    }
    for (const std::string& name : j.moved) ops.rename(name, aside(name));
    // (The links are durable: the interim index's write synced the directory.)
    for (const auto& [temp, name] : j.shards) ops.rename(temp, name);
    ops.sync_dir();
    ops.rename(j.point.first, j.point.second);  // the commit point
  } catch (const std::exception& e) {
    if (ops.exists(j.point.first)) {  // else the rename happened after all: the commit point passed
      try {
        undo(ops, j);
      } catch (const std::exception& undo_error) {
        d9d::detail::throw_error<io::IoError>(
            e.what(), " (undoing the commit failed too: ", undo_error.what(),
            "; the next write into ", ops.dir.string(), " finishes the undo)");
      }
      throw;
    }
  }
  // 6: the new checkpoint is in place; nothing is undone from here on.
  ops.sync_dir();
  try {
    finish(ops, j);
  } catch (const std::exception& e) {
    std::fprintf(stderr,
                 "d9d: warning: write_model_state: the new checkpoint in %s is in place, but "
                 "finishing its commit failed (%s); the next write into the directory finishes "
                 "it\n",
                 ops.dir.c_str(), e.what());
  }
}

void Destination::commit(std::span<const LocalShards> parts) {
  Impl& d = *impl_;
  D9D_CHECK(!d.committed, "write_model_state: a destination is committed once");
  d.committed = true;
  try {
    d.commit(parts);
  } catch (...) {
    // The shards' temporary files are ours: none outlives a failed commit, unless a journal
    // still names them (the next writer's recovery decides by them).
    if (d.ops.exists(kJournalName)) throw;
    std::error_code ec;
    for (const LocalShards& p : parts) {
      for (const std::string& file : p.files) fs::remove(d.ops.at(file), ec);
    }
    throw;
  }
}

}  // namespace d9d::model_state
