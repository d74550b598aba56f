/* d9d's C ABI: open safetensors checkpoints, stream tensors through a spec, fill an engine's own
 * buffers, convert checkpoints; from C11 (or anything with a C FFI: Rust, Go, Zig, Python's
 * ctypes), without a C++ toolchain. Link libd9d (pkg-config d9d); tensors travel as DLPack 1.x
 * (<dlpack/dlpack.h>, installed beside this header).
 *
 *   d9d_checkpoint* ck;
 *   if (d9d_open("ckpt/", &ck) != D9D_OK) { fprintf(stderr, "%s\n", d9d_last_error()); ... }
 *   for (int64_t i = 0; i < d9d_num_tensors(ck); ++i) puts(d9d_tensor_name(ck, i));
 *   d9d_close(ck);
 *
 * ERRORS. Every function that can fail returns int: D9D_OK (0) or a negative D9D_E_* code, and
 * then d9d_last_error() says what failed, naming the file, the tensor or key, and the rule or
 * value (d9d_stream_next returns 1 or 0 on success, d9d_num_tensors a count, d9d_tensor_name a
 * string or NULL). A NULL argument where a pointer is required is D9D_E_VALUE naming the
 * argument. No C++ exception leaves this ABI: every function is noexcept at the boundary.
 *
 * HANDLES are opaque and freed by their own function (d9d_close, d9d_stream_close; NULL is
 * ignored there); their layout may change between versions without breaking callers. A handle
 * may be used from any thread, by one thread at a time. A DLManagedTensorVersioned this ABI hands
 * out is the caller's: call its deleter once when done (any thread). It keeps what it views (the
 * mapped file, the tensor's memory) alive on its own, after the checkpoint or stream it came from
 * is closed. Tensors that view a mapped file have DLPACK_FLAG_BITMASK_READ_ONLY set in flags: do
 * not write through them.
 *
 * OPTIONS (options_json; NULL: every default): a JSON object with these fields, any other field is
 * D9D_E_VALUE naming it:
 *   "device":        "cpu" (default) or "cuda:N": where streamed tensors are made, and where
 *                    d9d_load_into's targets must be (a CUDA device needs a CUDA build of d9d)
 *   "memory_budget": bytes read ahead (an integer, or a string with a unit: "512MiB", "1.5GB";
 *                    KB MB GB TB are powers of 1000, KiB MiB GiB TiB powers of 1024; a
 *                    fraction is rounded down to a whole byte)
 *   "threads":       d9d's worker threads, which every copy, cast and read is split across
 *                    (process-wide, as the CLI's --threads; 0, the default: leave as it is,
 *                    initially one per core or $D9D_NUM_THREADS)
 *   "reader_threads": groups read and applied at once, each by a thread of its own (0, the
 *                    default: as many as d9d's worker threads)
 *   "show_progress": a progress bar on standard error (default false)
 *   "params":        values for the spec's params, {"tp": 4, "tied": true} (integers; true and
 *                    false are 1 and 0), as `--set tp=4` on the command line: they win over the
 *                    checkpoint's config.json and the spec's defaults; a name the spec does not
 *                    declare is D9D_E_SPEC
 * and for d9d_convert only:
 *   "shard_size":    most bytes of tensor data per output shard (default 4 GiB, as `d9d convert`)
 *   "overwrite":     replace a checkpoint already in out_dir (default false)
 *   "fsync":         make every file durable before it gets its final name (default true)
 *   "write_hashes":  publish d9d-hashes.json (every shard's SHA-256) with the checkpoint (default
 *                    true, as `d9d convert`; `d9d verify OUT --sha256` checks it)
 * and for every function that reads:
 *   "io":            how the files are read: "auto" (the default: per file, pread from the page
 *                    cache or a network file system, O_DIRECT through io_uring from a cold disk),
 *                    "mmap", "pread", "direct" (O_DIRECT) or "uring", as `d9d load --io`
 *
 * SPECS (spec_json): the JSON text of a d9d mapper spec (the format is in the d9d repository's
 * d9d/mapper/include/d9d/mapper/spec.hpp; d9d_builtin_spec gives the built-in library's, one per
 * architecture, specs/README.md their engine layout; examples/specs/ has more), expanded against the
 * checkpoint's tensor names; NULL: every tensor as it is. A spec's params take their values from
 * the "params" option, the config.json beside the checkpoint, or the spec's defaults. A malformed spec, or one that does not
 * fit the checkpoint, is D9D_E_SPEC naming the JSON path ("$.rules[2].dim").
 *
 * CHECKPOINTS (path, ckpt_path): a directory with model.safetensors.index.json and its shards, a
 * directory with one model.safetensors, an index file, or a .safetensors file. Every header is
 * validated when it is opened (D9D_E_FORMAT names the file, key and rule).
 */
#ifndef D9D_D9D_H_
#define D9D_D9D_H_

#include <stdint.h>

#include <dlpack/dlpack.h>

#ifdef __cplusplus
#define D9D_NOEXCEPT noexcept
extern "C" {
#else
#define D9D_NOEXCEPT
#endif

/* The ABI this header describes; d9d_abi_version() is the one the library was built with. A
 * change that breaks callers (a removed or changed function) increments it. */
#define D9D_ABI_VERSION 1

#define D9D_OK 0
#define D9D_E_VALUE (-1)    /* a bad argument or option, a missing tensor, a shape or dtype mismatch */
#define D9D_E_FORMAT (-2)   /* a malformed safetensors file or index */
#define D9D_E_IO (-3)       /* a file that cannot be opened, read, written or renamed */
#define D9D_E_SPEC (-4)     /* a malformed spec, or one that does not fit the checkpoint */
#define D9D_E_DEVICE (-5)   /* a device d9d cannot use, or a failure its runtime reported */
#define D9D_E_DIST (-6)     /* a failure agreed on by the processes of a distributed job */
#define D9D_E_NOMEM (-7)    /* out of memory */
#define D9D_E_INTERNAL (-8) /* a failure d9d did not classify (a bug: please report it) */

typedef struct d9d_checkpoint d9d_checkpoint;
typedef struct d9d_stream d9d_stream;

int d9d_abi_version(void) D9D_NOEXCEPT;
/* d9d's version, "0.1.0"; a static string. */
const char* d9d_version(void) D9D_NOEXCEPT;
/* The message of this thread's last failure ("" if none yet): which function, and what failed.
 * Valid until this thread's next failing call. Success does not clear it. */
const char* d9d_last_error(void) D9D_NOEXCEPT;

/* ---- a checkpoint, tensor by tensor (zero-copy) ---------------------------------------------- */

/* Opens and validates the checkpoint at `path` (every header; no tensor byte is read). */
int d9d_open(const char* path, d9d_checkpoint** out) D9D_NOEXCEPT;
void d9d_close(d9d_checkpoint* checkpoint) D9D_NOEXCEPT;
/* The number of tensors, or D9D_E_VALUE for a NULL checkpoint. */
int64_t d9d_num_tensors(const d9d_checkpoint* checkpoint) D9D_NOEXCEPT;
/* The name of tensor `index` (0 <= index < d9d_num_tensors) in sorted order; owned by the
 * checkpoint, valid until d9d_close. NULL (and d9d_last_error set) for a bad index. */
const char* d9d_tensor_name(const d9d_checkpoint* checkpoint, int64_t index) D9D_NOEXCEPT;
/* The tensor `name`, a read-only view of the mapped file (no copy): *out is the caller's (see
 * HANDLES). D9D_E_VALUE for a name the checkpoint does not have. */
int d9d_get_tensor(d9d_checkpoint* checkpoint, const char* name,
                   DLManagedTensorVersioned** out) D9D_NOEXCEPT;

/* For consumers of the legacy DLPack ABI (before 1.0, such as numpy 1.x): takes over `tensor`
 * and sets *out to a DLManagedTensor viewing the same bytes, whose deleter releases `tensor`.
 * Legacy DLPack cannot say that a tensor is read-only: the caller must remember. On failure
 * `tensor` stays the caller's. */
int d9d_to_legacy_dlpack(DLManagedTensorVersioned* tensor, DLManagedTensor** out) D9D_NOEXCEPT;

/* ---- through a spec ---------------------------------------------------------------------------
 * The outputs of the spec come in the order d9d reads them: groups in the order their first input
 * sits in the files (each file read front to back), a group's outputs by name. Reader threads run
 * ahead of the caller within "memory_budget". */

/* Plans reading `ckpt_path` through `spec_json` from the headers alone (every missing input, a
 * spec that does not fit, fails here) and starts nothing yet. */
int d9d_stream_open(const char* ckpt_path, const char* spec_json, const char* options_json,
                    d9d_stream** out) D9D_NOEXCEPT;
/* The next output: returns 1 with *name and *out set, 0 at the end (*name and *out NULL), or a
 * negative code. *out is the caller's (see HANDLES); outputs the spec passes through unchanged
 * are read-only views of the mapped file, the others new memory. *name is owned by the stream and
 * valid until the next call on it or d9d_stream_close. After a failure, every later call returns
 * the same code and message. */
int d9d_stream_next(d9d_stream* stream, const char** name,
                    DLManagedTensorVersioned** out) D9D_NOEXCEPT;
/* Stops the reader threads and frees the stream; tensors it handed out stay valid. */
void d9d_stream_close(d9d_stream* stream) D9D_NOEXCEPT;

/* The callback of d9d_load_into, called once for every output of the spec, in stream order,
 * before any tensor byte is read:
 *   user    the pointer given to d9d_load_into;
 *   name    the output's name (valid during the call);
 *   spec    what d9d will write: dtype, ndim, shape, row-major strides, device (the "device"
 *           option), data NULL (valid during the call);
 *   into    a copy of *spec for the callback to fill in: set into->data to the engine's buffer
 *           (into->byte_offset, and shape / strides pointing at the engine's own arrays, may be
 *           set too; they are read when the callback returns).
 * It returns 0 to have the output written into *into, 1 to skip the output (a group whose outputs
 * are all skipped is not read), or a negative value to stop: d9d_load_into then reads nothing
 * and returns that value (D9D_E_* codes or the engine's own), d9d_last_error() naming the output.
 * Any other value is D9D_E_VALUE. *into must match *spec: the same dtype (lanes 1), ndim and
 * shape; strides NULL or row-major (strides of size-1 dims are free); device kDLCPU or
 * kDLCUDAHost for "cpu", kDLCUDA with the same device_id for "cuda:N"; data non-NULL unless the
 * tensor is empty. A mismatch is D9D_E_VALUE naming the output. The buffers must stay valid until
 * d9d_load_into returns; d9d writes nothing else. */
typedef int (*d9d_target_fn)(void* user, const char* name, const DLTensor* spec, DLTensor* into);

/* Reads `ckpt_path` through `spec_json` into the buffers `target` names (an inference engine's
 * weights, host or device memory). Outputs the spec transforms are made in d9d's memory first
 * (within "memory_budget") and copied in; the others are copied from the mapped files straight
 * into the buffers. On a failure after the callbacks, some buffers may have been written. */
int d9d_load_into(const char* ckpt_path, const char* spec_json, const char* options_json,
                  d9d_target_fn target, void* user) D9D_NOEXCEPT;

/* A built-in spec's JSON text (specs/NAME.json, compiled into libd9d; `d9d specs` lists them):
 * `name` is a spec's name ("qwen3_moe"), or "auto" for the one that the config.json of
 * `ckpt_path` names by its "model_type" (then "architectures"); ckpt_path may be NULL unless name
 * is "auto". *spec_json is libd9d's (valid while it is loaded; do not free it). D9D_E_SPEC when
 * there is no such spec, or config.json names none (d9d_last_error lists the library);
 * D9D_E_VALUE when "auto" finds no config.json. */
int d9d_builtin_spec(const char* name, const char* ckpt_path, const char** spec_json) D9D_NOEXCEPT;

/* Writes the outputs of `spec_json` on `ckpt_path` as a new sharded checkpoint in `out_dir`,
 * exactly as `d9d convert CKPT OUT --spec S` does: the shards and model.safetensors.index.json
 * (or, when everything fits one shard, model.safetensors and no index, as transformers'
 * save_pretrained writes it) and d9d-conversion.json (the record `d9d convert OUT BACK --reverse`
 * undoes it with); a tensor larger than "shard_size" gets a shard of its own, as transformers'
 * splitter does. Nothing is
 * left under a final name unless every file is complete; an out_dir this call created is removed
 * again on failure. */
int d9d_convert(const char* ckpt_path, const char* out_dir, const char* spec_json,
                const char* options_json) D9D_NOEXCEPT;

#ifdef __cplusplus
}
#endif

#endif /* D9D_D9D_H_ */
