// Distributed writing: many processes, one checkpoint.
//
//   write_model_state_distributed("out/", mapper, pairs, *world, wo);      // each rank its tensors
//   write_model_state_pipeline_parallel("out/", mapper, pairs, mesh, "pp", wo);  // one per stage
//   save_model_state_pipeline_parallel("out/", mapper, mesh, "pp", {stage_state}, wo);
//   convert_model_state_distributed("ckpt/", "out/", mapper, *world, ro, wo);  // mpirun d9d
//   convert
//
// Every rank of the group (or mesh) calls these, as in the reference.
//
// Note [distributed checkpoint]: as the reference does, every writing rank streams its outputs
// into shards of its own under temporary names (a ShardWriter tagged with its rank), and rank 0
// gathers every rank's LocalShards (all_gather_object), renames the shards to
// model-0000i-of-0000N.safetensors in rank order and writes one index (Destination::commit).
// Beyond the reference: the destination is locked and checked once, by the finalizing rank,
// before anyone writes, and stays locked until its commit (a Destination: Note [checkpoint
// commit] in writer.hpp); the ranks agree on success before the gather and again after the
// index is written (Note [agreement] in <d9d/dist/process_group.hpp>), so a failure on any rank
// makes every rank throw the same dist::CollectiveError, no index is written and every rank's
// temporary files are removed; and every rank returns only once the checkpoint is complete, so
// any of them may read it next.
#pragma once

#include <exception>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <d9d/dist/device_mesh.hpp>
#include <d9d/dist/process_group.hpp>
#include <d9d/model_state/reader.hpp>
#include <d9d/model_state/writer.hpp>

namespace d9d::model_state {

namespace detail {

// Who takes part in a distributed write, and how (Note [distributed checkpoint]).
struct Participation {
  // LocalShards are gathered over this group; its rank 0 (a writer) finalizes.
  dist::ProcessGroup* gather = nullptr;
  // Groups whose union is the whole job: errors are agreed over each in turn.
  std::vector<dist::ProcessGroup*> everyone;
  // False: this rank applies its groups (their collectives, gather_full_tensor, need every rank)
  // but writes nothing.
  bool writes = true;
  std::string tag;  // of the temporary shard names
  int rank = 0;     // in messages: "rank R: ..."
  int world_size = 1;
};

Participation participation(dist::ProcessGroup& group);
// The reference's rule: only the rank whose non-pipeline coordinates are all 0 writes, for its
// stage; stages gather over the pipeline dim's group.
Participation participation(const dist::DeviceMesh& mesh, std::string_view pipeline_dim_name);

// The engine of the distributed writers (one per rank; not thread-safe).
class DistributedWriter {
 public:
  // Collective: the finalizing rank prepares the destination; every rank learns how that went.
  DistributedWriter(std::filesystem::path dest_dir, MapperPtr mapper, WriteOptions options,
                    Participation who);
  DistributedWriter(const DistributedWriter&) = delete;
  DistributedWriter& operator=(const DistributedWriter&) = delete;
  ~DistributedWriter();

  void plan(std::span<const std::pair<std::string, TensorSpec>> source);
  void add(const std::string& name, const Tensor& tensor);
  // This rank failed while feeding the writer; finish() tells every rank.
  void fail(std::exception_ptr error);
  // Collective: agrees, gathers, finalizes, agrees; throws dist::CollectiveError on every rank
  // when any rank failed.
  void finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

template <class Source>
void write_distributed(const std::filesystem::path& dest_dir, MapperPtr mapper, Source&& source,
                       const WriteOptions& options, Participation who) {
  DistributedWriter writer(dest_dir, std::move(mapper), options, std::move(who));
  try {
    if constexpr (PlannedSource<std::remove_cvref_t<Source>>) {
      const std::optional<std::vector<std::pair<std::string, TensorSpec>>> specs =
          source.planned_specs();
      if (specs) writer.plan(*specs);
    } else if constexpr (std::ranges::forward_range<Source>) {
      const auto specs = specs_in_order(source);
      writer.plan(specs);
    }
    for (auto&& [name, tensor] : source) writer.add(name, tensor);
  } catch (...) {
    writer.fail(std::current_exception());
  }
  writer.finish();
}

}  // namespace detail

// The reference's write_model_state_distributed: every rank of `group` writes the mapper's outputs
// for its own tensors of `source`; one checkpoint comes out (Note [distributed checkpoint]).
template <class Source>
void write_model_state_distributed(const std::filesystem::path& dest_dir, MapperPtr mapper,
                                   Source&& source, dist::ProcessGroup& group,
                                   const WriteOptions& options = {}) {
  detail::write_distributed(dest_dir, std::move(mapper), std::forward<Source>(source), options,
                            detail::participation(group));
}

// The reference's write_model_state_pipeline_parallel: on an N-D mesh, only the rank whose
// coordinates off the pipeline dim are all 0 writes, for its stage (the other ranks of a stage
// hold the same tensors); their shards go in pipeline-rank order. The mesh needs dim names.
template <class Source>
void write_model_state_pipeline_parallel(const std::filesystem::path& dest_dir, MapperPtr mapper,
                                         Source&& source, const dist::DeviceMesh& mesh,
                                         std::string_view pipeline_dim_name,
                                         const WriteOptions& options = {}) {
  detail::write_distributed(dest_dir, std::move(mapper), std::forward<Source>(source), options,
                            detail::participation(mesh, pipeline_dim_name));
}

// The reference's save_model_state_pipeline_parallel: the states of the stages this rank holds
// (its modules' state_dict()s), DTensors gathered into whole tensors first (every rank takes part
// in that), written by write_model_state_pipeline_parallel. Only the mapper's inputs are saved.
void save_model_state_pipeline_parallel(const std::filesystem::path& dest_dir, MapperPtr mapper,
                                        const dist::DeviceMesh& mesh,
                                        std::string_view pipeline_dim_name,
                                        const std::vector<StateDict>& models,
                                        const WriteOptions& options = {});

// Note [distributed conversion]: `mpirun -np N d9d convert` converts one checkpoint into one
// checkpoint, byte for byte the one a single process writes, with no tensor data sent between
// ranks. The single-process layout (which output goes in which shard at which offset) follows from
// metadata alone (plan_read, assign_shards, plan_safetensors), so every rank plans it, and the
// ranks check that their plans agree. Rank 0 locks and prepares the destination (a Destination,
// held to the end: Note [checkpoint commit] in writer.hpp) and creates every shard under a
// temporary name with its header and its full size (io's Note [shared file]). The plan's groups,
// in stream order, are split into N contiguous runs of about equal bytes (inputs read plus
// outputs written, from the inferred specs, not the group count: the largest run is as small as
// it can be); each rank streams its run through the mapper and writes every output at its planned
// offset in the shared files, then makes its writes durable. The ranks agree on success; rank 0
// calls `before_finalize` (if set) and commits the shards and the index; the ranks agree once
// more. Any failure: every rank throws the same dist::CollectiveError, the temporary files are
// removed, no index is written. Reading is this rank's groups' inputs only; its progress bar is
// labelled "[rank]" and only rank 0 draws it.
//
// Returns the plan of the whole conversion (every group; plan.groups in stream order).
ReadPlan convert_model_state_distributed(const std::filesystem::path& src,
                                         const std::filesystem::path& dest_dir, MapperPtr mapper,
                                         dist::ProcessGroup& group,
                                         const ReadOptions& read_options = {},
                                         const WriteOptions& write_options = {},
                                         const std::function<void()>& before_finalize = {});

// The split of Note [distributed conversion]: for `costs` in order, the first index of each of
// `parts` contiguous runs (and costs.size() at the end: parts + 1 entries), minimizing the largest
// run's sum; later runs may be empty.
std::vector<size_t> balanced_runs(std::span<const int64_t> costs, int parts);

}  // namespace d9d::model_state
