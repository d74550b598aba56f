/* The C ABI from plain C11: every function on a small checkpoint this test writes, and every error
 * path (bad file, bad spec, bad options, a failing callback, NULL arguments) with its exact code
 * and a message check. Run under ASan with detect_leaks=1 by scripts/test.sh: a leak fails it.
 *
 *   test_capi [VERSION]   (VERSION: the project version d9d_version() must return)
 */
#define _XOPEN_SOURCE 700

#include <d9d/d9d.h>

#include <ftw.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int checks;
static int failures;

#define CHECK(cond, ...)                                             \
  do {                                                               \
    ++checks;                                                        \
    if (!(cond)) {                                                   \
      ++failures;                                                    \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);           \
      fprintf(stderr, __VA_ARGS__);                                  \
      fprintf(stderr, "\n  last error: %s\n", d9d_last_error());     \
    }                                                                \
  } while (0)

/* `status` is `code` and d9d_last_error() contains every one of `needles` (NULL-terminated). */
#define EXPECT_ERROR(status, code, ...) expect_error((status), (code), #status, __LINE__, __VA_ARGS__, (const char*)NULL)

static void expect_error(int status, int code, const char* call, int line, ...) {
  ++checks;
  int ok = status == code;
  const char* message = d9d_last_error();
  va_list needles;
  va_start(needles, line);
  for (const char* needle = va_arg(needles, const char*); needle != NULL;
       needle = va_arg(needles, const char*)) {
    if (strstr(message, needle) == NULL) {
      ok = 0;
      fprintf(stderr, "FAIL line %d: %s: the message lacks \"%s\"\n", line, call, needle);
    }
  }
  va_end(needles);
  if (status != code) fprintf(stderr, "FAIL line %d: %s returned %d, expected %d\n", line, call, status, code);
  if (!ok) {
    ++failures;
    fprintf(stderr, "  message: %s\n", message);
  }
}

/* ---- a checkpoint built here ----------------------------------------------------------------- */

/* Two layers of q [4, 2], k [2, 2], v [2, 2] and a norm [2], all F32; element i of tensor t is
 * 100 * t + i, t in the order below. */
enum { kLayers = 2, kTensors = 3 * kLayers + 1 };
static const char* const kNames[kTensors] = {
    "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.v_proj.weight", "model.layers.1.self_attn.q_proj.weight",
    "model.layers.1.self_attn.k_proj.weight", "model.layers.1.self_attn.v_proj.weight",
    "model.norm.weight"};
static const int64_t kRows[kTensors] = {4, 2, 2, 4, 2, 2, 2};
static int64_t rows_of(int t) { return kRows[t]; }
static int64_t numel_of(int t) { return t == kTensors - 1 ? 2 : kRows[t] * 2; }
static float value_of(int t, int64_t i) { return (float)(100 * t + i); }

static const char* kFusedSpec =
    "{\"d9d_mapper_spec\": 1, \"rules\": [{\"op\": \"concatenate_tensors\", \"dim\": 0,"
    " \"target\": \"layers.{L}.qkv\", \"sources\": [\"model.layers.{L}.self_attn.q_proj.weight\","
    " \"model.layers.{L}.self_attn.k_proj.weight\", \"model.layers.{L}.self_attn.v_proj.weight\"]}]}";

static char dir[256];
static char ckpt[300];

static void write_checkpoint(void) {
  char header[4096];
  size_t len = 0;
  int64_t offset = 0;
  len += (size_t)snprintf(header + len, sizeof header - len, "{");
  for (int t = 0; t < kTensors; ++t) {
    const int64_t bytes = numel_of(t) * 4;
    if (t == kTensors - 1) {
      len += (size_t)snprintf(header + len, sizeof header - len,
                              "\"%s\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[%lld,%lld]}",
                              kNames[t], (long long)offset, (long long)(offset + bytes));
    } else {
      len += (size_t)snprintf(header + len, sizeof header - len,
                              "\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld,2],\"data_offsets\":[%lld,%lld]},",
                              kNames[t], (long long)rows_of(t), (long long)offset, (long long)(offset + bytes));
    }
    offset += bytes;
  }
  len += (size_t)snprintf(header + len, sizeof header - len, "}");
  while (len % 8 != 0) header[len++] = ' ';
  FILE* f = fopen(ckpt, "wb");
  if (f == NULL) {
    perror(ckpt);
    exit(1);
  }
  unsigned char n[8];
  for (int i = 0; i < 8; ++i) n[i] = (unsigned char)(((uint64_t)len >> (8 * i)) & 0xff);
  fwrite(n, 1, 8, f);
  fwrite(header, 1, len, f);
  for (int t = 0; t < kTensors; ++t) {
    for (int64_t i = 0; i < numel_of(t); ++i) {
      const float v = value_of(t, i);
      fwrite(&v, 4, 1, f);
    }
  }
  fclose(f);
}

static void write_bytes(const char* path, const char* bytes, size_t n) {
  FILE* f = fopen(path, "wb");
  fwrite(bytes, 1, n, f);
  fclose(f);
}

static int remove_entry(const char* path, const struct stat* st, int flag, struct FTW* ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static char* path_in(const char* name) {
  static char buf[4][400];
  static int next;
  char* p = buf[next++ % 4];
  snprintf(p, sizeof buf[0], "%s/%s", dir, name);
  return p;
}

/* Tensor t of the checkpoint's values == `data`, for `n` elements from element `from`. */
static int equals_tensor(const float* data, int t, int64_t from, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (data[i] != value_of(t, from + i)) return 0;
  }
  return 1;
}

/* The fused qkv of layer L: q, k, v rows one after another. */
static int equals_qkv(const float* data, int layer) {
  int64_t at = 0;
  for (int t = 3 * layer; t < 3 * layer + 3; ++t) {
    if (!equals_tensor(data + at, t, 0, numel_of(t))) return 0;
    at += numel_of(t);
  }
  return 1;
}

/* ---- version, errors ------------------------------------------------------------------------- */

static void* fail_on_other_thread(void* arg) {
  (void)arg;
  d9d_checkpoint* c = NULL;
  d9d_open("/nonexistent/other-thread", &c);
  return NULL;
}

static void test_version_and_last_error(const char* version) {
  CHECK(d9d_abi_version() == D9D_ABI_VERSION, "abi %d", d9d_abi_version());
  CHECK(version == NULL || strcmp(d9d_version(), version) == 0, "version %s", d9d_version());
  /* The last error is per thread: a failure on another thread leaves this one's message. */
  d9d_checkpoint* c = NULL;
  EXPECT_ERROR(d9d_open(path_in("missing.safetensors"), &c), D9D_E_IO, "d9d_open: ", "missing.safetensors");
  pthread_t other;
  pthread_create(&other, NULL, fail_on_other_thread, NULL);
  pthread_join(other, NULL);
  CHECK(strstr(d9d_last_error(), "missing.safetensors") != NULL, "the message stayed this thread's");
  CHECK(c == NULL, "no handle on failure");
}

static int compare_names(const void* a, const void* b) {
  return strcmp(*(const char* const*)a, *(const char* const*)b);
}

/* ---- d9d_open, d9d_get_tensor ---------------------------------------------------------------- */

static void test_checkpoint(void) {
  d9d_checkpoint* c = NULL;
  CHECK(d9d_open(ckpt, &c) == D9D_OK, "open");
  CHECK(d9d_num_tensors(c) == kTensors, "num_tensors %lld", (long long)d9d_num_tensors(c));
  const char* sorted[kTensors];
  memcpy(sorted, kNames, sizeof sorted);
  qsort(sorted, kTensors, sizeof sorted[0], compare_names);
  for (int t = 0; t < kTensors; ++t) {
    const char* name = d9d_tensor_name(c, t);
    CHECK(name != NULL && strcmp(name, sorted[t]) == 0, "name %d: %s", t, name ? name : "NULL");
  }
  CHECK(d9d_tensor_name(c, kTensors) == NULL, "index past the end");
  CHECK(strstr(d9d_last_error(), "d9d_tensor_name: index 7 is out of range") != NULL, "its message");
  CHECK(d9d_tensor_name(c, -1) == NULL, "negative index");

  DLManagedTensorVersioned* q = NULL;
  CHECK(d9d_get_tensor(c, kNames[3], &q) == D9D_OK, "get_tensor");
  CHECK(q->version.major == 1, "DLPack major 1");
  CHECK((q->flags & DLPACK_FLAG_BITMASK_READ_ONLY) != 0, "a view of the mapped file is read-only");
  const DLTensor* t = &q->dl_tensor;
  CHECK(t->ndim == 2 && t->shape[0] == 4 && t->shape[1] == 2, "shape");
  CHECK(t->strides != NULL && t->strides[0] == 2 && t->strides[1] == 1, "strides");
  CHECK(t->dtype.code == kDLFloat && t->dtype.bits == 32 && t->dtype.lanes == 1, "dtype");
  CHECK(t->device.device_type == kDLCPU, "device");
  q->deleter(q);
  EXPECT_ERROR(d9d_get_tensor(c, "no.such.tensor", &q), D9D_E_VALUE, "d9d_get_tensor: ", "no.such.tensor");
  CHECK(q == NULL, "*out is NULL after a failure");
  CHECK(d9d_get_tensor(c, kNames[3], &q) == D9D_OK, "get_tensor again");

  /* The deleter keeps the mapping alive after the checkpoint is closed. */
  d9d_close(c);
  CHECK(equals_tensor((const float*)((const char*)q->dl_tensor.data + q->dl_tensor.byte_offset), 3, 0, 8),
        "the tensor's bytes after d9d_close");
  q->deleter(q);

  /* NULL arguments. */
  EXPECT_ERROR(d9d_open(NULL, &c), D9D_E_VALUE, "d9d_open: path is NULL");
  EXPECT_ERROR(d9d_open(ckpt, NULL), D9D_E_VALUE, "d9d_open: out is NULL");
  CHECK(d9d_num_tensors(NULL) == D9D_E_VALUE, "num_tensors(NULL)");
  CHECK(strstr(d9d_last_error(), "d9d_num_tensors: checkpoint is NULL") != NULL, "its message");
  CHECK(d9d_tensor_name(NULL, 0) == NULL, "tensor_name(NULL)");
  CHECK(strstr(d9d_last_error(), "d9d_tensor_name: checkpoint is NULL") != NULL, "its message");
  EXPECT_ERROR(d9d_get_tensor(NULL, "x", &q), D9D_E_VALUE, "d9d_get_tensor: checkpoint is NULL");
  CHECK(d9d_open(ckpt, &c) == D9D_OK, "open");
  EXPECT_ERROR(d9d_get_tensor(c, NULL, &q), D9D_E_VALUE, "d9d_get_tensor: name is NULL");
  EXPECT_ERROR(d9d_get_tensor(c, "x", NULL), D9D_E_VALUE, "d9d_get_tensor: out is NULL");
  d9d_close(c);
  d9d_close(NULL);  /* ignored */

  /* Bad files: a header length past the end of the file; a directory without a checkpoint. */
  write_bytes(path_in("bad.safetensors"), "\xff\xff\0\0\0\0\0\0{}      ", 16);
  EXPECT_ERROR(d9d_open(path_in("bad.safetensors"), &c), D9D_E_FORMAT, "d9d_open: ", "bad.safetensors", "rule");
  CHECK(c == NULL, "no handle");
  mkdir(path_in("empty"), 0700);
  EXPECT_ERROR(d9d_open(path_in("empty"), &c), D9D_E_IO, "empty");
}

/* ---- streams --------------------------------------------------------------------------------- */

static void test_stream(void) {
  /* Identity: every tensor as it is, in file order. */
  d9d_stream* s = NULL;
  CHECK(d9d_stream_open(ckpt, NULL, NULL, &s) == D9D_OK, "stream_open identity");
  const char* name = NULL;
  DLManagedTensorVersioned* held[kTensors] = {NULL};
  int n = 0;
  DLManagedTensorVersioned* out = NULL;
  int status;
  while ((status = d9d_stream_next(s, &name, &out)) == 1) {
    CHECK(n < kTensors && strcmp(name, kNames[n]) == 0, "stream name %d: %s", n, name);
    if (n < kTensors) held[n] = out;
    ++n;
  }
  CHECK(status == 0 && n == kTensors, "identity stream: status %d after %d tensors", status, n);
  CHECK(name == NULL && out == NULL, "*name and *out are NULL at the end");
  CHECK(d9d_stream_next(s, &name, &out) == 0, "still the end");
  d9d_stream_close(s);
  /* The tensors outlive the stream. */
  for (int t = 0; t < n && t < kTensors; ++t) {
    const DLTensor* dl = &held[t]->dl_tensor;
    CHECK(equals_tensor((const float*)((const char*)dl->data + dl->byte_offset), t, 0, numel_of(t)),
          "identity tensor %d after d9d_stream_close", t);
    held[t]->deleter(held[t]);
  }

  /* Fused QKV: two qkv outputs and the norm passing through; the qkv tensors are new memory. */
  CHECK(d9d_stream_open(ckpt, kFusedSpec, "{\"memory_budget\": \"1KiB\", \"threads\": 1}", &s) == D9D_OK,
        "stream_open fused");
  n = 0;
  int seen_qkv = 0;
  while ((status = d9d_stream_next(s, &name, &out)) == 1) {
    ++n;
    const float* data = (const float*)((const char*)out->dl_tensor.data + out->dl_tensor.byte_offset);
    if (strcmp(name, "layers.0.qkv") == 0 || strcmp(name, "layers.1.qkv") == 0) {
      const int layer = name[7] - '0';
      CHECK(out->dl_tensor.shape[0] == 8 && out->dl_tensor.shape[1] == 2, "qkv shape");
      CHECK(equals_qkv(data, layer), "%s is q, k, v", name);
      CHECK((out->flags & DLPACK_FLAG_BITMASK_READ_ONLY) == 0, "new memory is writable");
      ++seen_qkv;
    } else {
      CHECK(strcmp(name, "model.norm.weight") == 0 && equals_tensor(data, 6, 0, 2), "%s passes", name);
    }
    out->deleter(out);
  }
  CHECK(status == 0 && n == 3 && seen_qkv == 2, "fused stream: %d outputs", n);
  d9d_stream_close(s);
  d9d_stream_close(NULL);

  /* Spec params: the "params" option wins over the spec's default (4 heads would not fit q [4, 2];
   * 2 heads of one KV group interleave as q, k, v). */
  static const char* kParamsSpec =
      "{\"d9d_mapper_spec\": 1, \"params\": {\"heads\": 4, \"kv\": 1}, \"rules\": [{\"op\":"
      " \"interleave_qkv\", \"n_heads\": \"{heads}\", \"n_kv_heads\": \"{kv}\", \"target\":"
      " \"layers.{L}.qkv\", \"sources\": [\"model.layers.{L}.self_attn.q_proj.weight\","
      " \"model.layers.{L}.self_attn.k_proj.weight\", \"model.layers.{L}.self_attn.v_proj.weight\"]}]}";
  CHECK(d9d_stream_open(ckpt, kParamsSpec, "{\"params\": {\"heads\": 2}}", &s) == D9D_OK,
        "stream_open with params: %s", d9d_last_error());
  seen_qkv = 0;
  while ((status = d9d_stream_next(s, &name, &out)) == 1) {
    if (strncmp(name, "layers.", 7) == 0) {
      const float* data = (const float*)((const char*)out->dl_tensor.data + out->dl_tensor.byte_offset);
      CHECK(equals_qkv(data, name[7] - '0'), "%s is q, k, v (one KV group)", name);
      ++seen_qkv;
    }
    out->deleter(out);
  }
  CHECK(status == 0 && seen_qkv == 2, "params stream: %d qkv", seen_qkv);
  d9d_stream_close(s);
  s = NULL;
  CHECK(d9d_stream_open(ckpt, kParamsSpec, NULL, &s) != D9D_OK && s == NULL,
        "the spec's default of 4 heads does not fit");

  /* A stream closed before its end, with tensors still held. */
  CHECK(d9d_stream_open(ckpt, kFusedSpec, NULL, &s) == D9D_OK, "stream_open");
  CHECK(d9d_stream_next(s, &name, &out) == 1, "first output");
  d9d_stream_close(s);
  CHECK(out != NULL && out->dl_tensor.ndim == 2, "held output");
  out->deleter(out);

  /* A stream that fails mid-way (no CUDA device here, or a CPU-only build) repeats its failure. */
  CHECK(d9d_stream_open(ckpt, NULL, "{\"device\": \"cuda:0\"}", &s) == D9D_OK, "stream_open cuda:0");
  status = d9d_stream_next(s, &name, &out);
  if (status < 0) {
    char first[512];
    snprintf(first, sizeof first, "%s", d9d_last_error());
    CHECK(status == D9D_E_DEVICE, "no device: %d", status);
    CHECK(d9d_stream_next(s, &name, &out) == status && strcmp(first, d9d_last_error()) == 0,
          "the failure repeats");
  } else if (status == 1) {
    out->deleter(out);  /* a machine with a GPU */
  }
  d9d_stream_close(s);

  /* Errors: bad file, bad spec, spec that does not fit, NULL arguments. */
  s = NULL;
  EXPECT_ERROR(d9d_stream_open(path_in("missing"), NULL, NULL, &s), D9D_E_IO, "d9d_stream_open: ", "missing");
  EXPECT_ERROR(d9d_stream_open(path_in("bad.safetensors"), NULL, NULL, &s), D9D_E_FORMAT, "bad.safetensors");
  EXPECT_ERROR(d9d_stream_open(ckpt, "{\"d9d_mapper_spec\": 1, \"rules\": [", NULL, &s), D9D_E_SPEC,
               "d9d_stream_open: spec_json: ");
  EXPECT_ERROR(d9d_stream_open(ckpt, "{\"d9d_mapper_spec\": 1, \"rules\": [{\"op\": \"fuse\"}]}", NULL, &s),
               D9D_E_SPEC, "$.rules[0]", "fuse");
  EXPECT_ERROR(d9d_stream_open(ckpt, "{\"d9d_mapper_spec\": 1, \"unmatched\": \"error\", \"rules\": []}", NULL, &s),
               D9D_E_SPEC, "model.norm.weight");
  EXPECT_ERROR(d9d_stream_open(ckpt, "{\"d9d_mapper_spec\": 1, \"rules\": [{\"op\": \"rename_tensor\","
                                     " \"source\": \"model.norm.weight\", \"target\": \"x\","
                                     " \"dim\": 0}]}", NULL, &s),
               D9D_E_SPEC, "$.rules[0]", "dim");
  CHECK(s == NULL, "no handle on failure");
  EXPECT_ERROR(d9d_stream_open(NULL, NULL, NULL, &s), D9D_E_VALUE, "d9d_stream_open: ckpt_path is NULL");
  EXPECT_ERROR(d9d_stream_open(ckpt, NULL, NULL, NULL), D9D_E_VALUE, "d9d_stream_open: out is NULL");
  EXPECT_ERROR(d9d_stream_next(NULL, &name, &out), D9D_E_VALUE, "d9d_stream_next: stream is NULL");
  CHECK(d9d_stream_open(ckpt, NULL, NULL, &s) == D9D_OK, "stream_open");
  EXPECT_ERROR(d9d_stream_next(s, NULL, &out), D9D_E_VALUE, "d9d_stream_next: name is NULL");
  EXPECT_ERROR(d9d_stream_next(s, &name, NULL), D9D_E_VALUE, "d9d_stream_next: out is NULL");
  CHECK(d9d_stream_next(s, &name, &out) == 1, "a NULL argument does not end the stream");
  out->deleter(out);
  d9d_stream_close(s);
}

/* ---- options --------------------------------------------------------------------------------- */

static void test_options(void) {
  d9d_stream* s = NULL;
#define BAD_OPTIONS(json, ...) \
  EXPECT_ERROR(d9d_stream_open(ckpt, NULL, json, &s), D9D_E_VALUE, "d9d_stream_open: options_json", __VA_ARGS__)
  BAD_OPTIONS("{\"threads\": 2", "not valid JSON");
  BAD_OPTIONS("[1, 2]", "expected a JSON object");
  BAD_OPTIONS("{\"memory_budgte\": 5}", "unknown field \"memory_budgte\"", "known: device, memory_budget");
  BAD_OPTIONS("{\"params\": [4]}", "\"params\" must be an object");
  BAD_OPTIONS("{\"params\": {\"tp\": \"4\"}}", "\"params\".\"tp\" must be an integer");
  /* A param the spec does not declare is the spec's error. */
  EXPECT_ERROR(d9d_stream_open(ckpt, NULL, "{\"params\": {\"tp\": 4}}", &s), D9D_E_SPEC, "\"tp\"",
               "does not declare");
  BAD_OPTIONS("{\"io\": \"aio\"}", "expected auto, mmap, pread, direct or uring");
  BAD_OPTIONS("{\"io\": 1}", "\"io\" must be a string");
  BAD_OPTIONS("{\"shard_size\": 100}", "\"shard_size\" is an option of d9d_convert only");
  BAD_OPTIONS("{\"device\": \"tpu:0\"}", "\"device\"", "tpu:0");
  BAD_OPTIONS("{\"device\": 0}", "\"device\" must be");
  BAD_OPTIONS("{\"threads\": -1}", "\"threads\" must be an integer from 0");
  BAD_OPTIONS("{\"threads\": 1.5}", "\"threads\"");
  BAD_OPTIONS("{\"show_progress\": 1}", "\"show_progress\" must be true or false");
  BAD_OPTIONS("{\"memory_budget\": 0}", "\"memory_budget\" must be positive");
  BAD_OPTIONS("{\"memory_budget\": 18446744073709551615}", "\"memory_budget\" is out of range");
  BAD_OPTIONS("{\"memory_budget\": \"5G\"}", "invalid size \"5G\"", "unknown unit");
  BAD_OPTIONS("{\"memory_budget\": \"MiB\"}", "invalid size \"MiB\"", "expected a number");
  BAD_OPTIONS("{\"memory_budget\": \"9999999TiB\"}", "more than 2^63 - 1 bytes");
  BAD_OPTIONS("{\"memory_budget\": \"99999999999999999999\"}", "more than 2^63 - 1 bytes");
  BAD_OPTIONS("{\"memory_budget\": \"-5MiB\"}", "invalid size \"-5MiB\"", "expected a number");
  BAD_OPTIONS("{\"memory_budget\": [1]}", "must be a number of bytes or a size string");
  BAD_OPTIONS("{\"threads\": 1, \"threads\": 2}", "duplicate key \"threads\"");
  {
    /* 100,000 levels deep: an error naming the depth, not a stack overflow. */
    enum { kDepth = 100000 };
    char* deep = malloc(2 * kDepth + 32);
    CHECK(deep != NULL, "malloc");
    size_t n = (size_t)sprintf(deep, "{\"memory_budget\": ");
    for (int i = 0; i < kDepth; ++i) deep[n++] = '[';
    for (int i = 0; i < kDepth; ++i) deep[n++] = ']';
    deep[n++] = '}';
    deep[n] = '\0';
    BAD_OPTIONS(deep, "nested deeper than 64");
    free(deep);
  }
  CHECK(s == NULL, "no handle");
#undef BAD_OPTIONS
  /* Good ones, every form. */
  static const char* const good[] = {
      "{}", "{\"memory_budget\": 4096}", "{\"memory_budget\": \"512MiB\"}", "{\"memory_budget\": \"1.5 GB\"}",
      "{\"memory_budget\": \"2gib\", \"threads\": 0, \"show_progress\": false, \"device\": \"cpu\"}",
      "{\"memory_budget\": \"0.5KiB\"}"};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; ++i) {
    CHECK(d9d_stream_open(ckpt, NULL, good[i], &s) == D9D_OK, "options %s", good[i]);
    d9d_stream_close(s);
  }
  /* A size below one byte rounds down to 0, which is not a budget. */
  EXPECT_ERROR(d9d_stream_open(ckpt, NULL, "{\"memory_budget\": \"0.4B\"}", &s), D9D_E_VALUE, "must be positive");
}

/* ---- d9d_load_into --------------------------------------------------------------------------- */

enum Mode { kFill, kSkipLayer1, kFail, kBadAnswer, kWrongDtype, kWrongShape, kWrongStrides, kWrongDevice, kNullData };

struct Engine {
  enum Mode mode;
  int calls;
  char names[8][64];
  float* buffers[8];
  int64_t shape[2];   /* kWrongShape's own shape array */
  int64_t strides[2]; /* kWrongStrides' own strides array */
};

static int target(void* user, const char* name, const DLTensor* spec, DLTensor* into) {
  struct Engine* e = (struct Engine*)user;
  const int i = e->calls++;
  if (i >= 8 || spec->data != NULL || into->ndim != spec->ndim) return -99;
  snprintf(e->names[i], sizeof e->names[i], "%s", name);
  int64_t numel = 1;
  for (int d = 0; d < spec->ndim; ++d) numel *= spec->shape[d];
  e->buffers[i] = (float*)calloc((size_t)numel, sizeof(float));
  into->data = e->buffers[i];
  const int qkv1 = strcmp(name, "layers.1.qkv") == 0;
  switch (e->mode) {
    case kSkipLayer1: return qkv1 ? 1 : 0;
    case kFail: return qkv1 ? -42 : 0;
    case kBadAnswer: return qkv1 ? 7 : 0;
    case kWrongDtype: if (qkv1) into->dtype.bits = 16; return 0;
    case kWrongShape:
      if (qkv1) {
        e->shape[0] = 2;
        e->shape[1] = 8;
        into->shape = e->shape;
      }
      return 0;
    case kWrongStrides:
      if (qkv1) {  /* column-major */
        e->strides[0] = 1;
        e->strides[1] = spec->shape[0];
        into->strides = e->strides;
      }
      return 0;
    case kWrongDevice: if (qkv1) into->device.device_type = kDLCUDA; return 0;
    case kNullData: if (qkv1) into->data = NULL; return 0;
    case kFill: return 0;
  }
  return 0;
}

static void free_engine(struct Engine* e) {
  for (int i = 0; i < e->calls && i < 8; ++i) free(e->buffers[i]);
}

static void test_load_into(void) {
  struct Engine e;
  memset(&e, 0, sizeof e);
  CHECK(d9d_load_into(ckpt, kFusedSpec, NULL, target, &e) == D9D_OK, "load_into");
  CHECK(e.calls == 3, "one callback per output: %d", e.calls);
  for (int i = 0; i < e.calls && i < 3; ++i) {
    if (strcmp(e.names[i], "model.norm.weight") == 0) {
      CHECK(equals_tensor(e.buffers[i], 6, 0, 2), "norm filled");
    } else {
      CHECK(equals_qkv(e.buffers[i], e.names[i][7] - '0'), "%s filled", e.names[i]);
    }
  }
  free_engine(&e);

  /* Strides NULL (legacy row-major) are accepted, with the identity spec too. */
  memset(&e, 0, sizeof e);
  CHECK(d9d_load_into(ckpt, NULL, "{\"threads\": 1}", target, &e) == D9D_OK, "load_into identity");
  CHECK(e.calls == kTensors, "identity: %d callbacks", e.calls);
  for (int i = 0; i < e.calls && i < kTensors; ++i) {
    CHECK(strcmp(e.names[i], kNames[i]) == 0 && equals_tensor(e.buffers[i], i, 0, numel_of(i)), "%s", kNames[i]);
  }
  free_engine(&e);

  /* Skipping: the skipped output's buffer stays as the callback left it. */
  memset(&e, 0, sizeof e);
  e.mode = kSkipLayer1;
  CHECK(d9d_load_into(ckpt, kFusedSpec, NULL, target, &e) == D9D_OK, "load_into with a skip");
  for (int i = 0; i < e.calls && i < 3; ++i) {
    if (strcmp(e.names[i], "layers.1.qkv") == 0) {
      CHECK(e.buffers[i][0] == 0 && e.buffers[i][15] == 0, "skipped buffer untouched");
    } else if (strcmp(e.names[i], "layers.0.qkv") == 0) {
      CHECK(equals_qkv(e.buffers[i], 0), "layers.0.qkv filled beside a skipped output");
    }
  }
  free_engine(&e);

  /* A callback's error stops the load: its code comes back, nothing is written. */
  static const struct {
    enum Mode mode;
    int code;
    const char* needle;
  } bad[] = {
      {kFail, -42, "d9d_load_into: the target callback returned -42 for layers.1.qkv"},
      {kBadAnswer, D9D_E_VALUE, "returned 7 for layers.1.qkv (0: fill, 1: skip, negative: an error)"},
      {kWrongDtype, D9D_E_VALUE, "the target of layers.1.qkv has DLPack dtype (code 2, bits 16, lanes 1), expected (code 2, bits 32, lanes 1)"},
      {kWrongShape, D9D_E_VALUE, "the target of layers.1.qkv has shape [2, 8], expected [8, 2]"},
      {kWrongStrides, D9D_E_VALUE, "the target of layers.1.qkv has strides [1, 8], expected row-major [2, 1]"},
      {kWrongDevice, D9D_E_VALUE, "the target of layers.1.qkv is on DLPack device (type 2, id 0), expected (type 1, id 0)"},
      {kNullData, D9D_E_VALUE, "the target of layers.1.qkv has NULL data"},
  };
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; ++k) {
    memset(&e, 0, sizeof e);
    e.mode = bad[k].mode;
    EXPECT_ERROR(d9d_load_into(ckpt, kFusedSpec, NULL, target, &e), bad[k].code, bad[k].needle);
    int untouched = 1;
    for (int i = 0; i < e.calls && i < 8; ++i) {
      if (e.buffers[i] != NULL && e.buffers[i][0] != 0) untouched = 0;
    }
    CHECK(untouched, "mode %d: no buffer written", (int)bad[k].mode);
    free_engine(&e);
  }

  /* Errors before any callback. */
  memset(&e, 0, sizeof e);
  EXPECT_ERROR(d9d_load_into(path_in("missing"), NULL, NULL, target, &e), D9D_E_IO, "d9d_load_into: ", "missing");
  EXPECT_ERROR(d9d_load_into(path_in("bad.safetensors"), NULL, NULL, target, &e), D9D_E_FORMAT, "bad.safetensors");
  EXPECT_ERROR(d9d_load_into(ckpt, "{\"d9d_mapper_spec\": 2, \"rules\": []}", NULL, target, &e), D9D_E_SPEC,
               "spec_json", "d9d_mapper_spec", "version");
  EXPECT_ERROR(d9d_load_into(ckpt, NULL, "{\"memory_budget\": -1}", target, &e), D9D_E_VALUE,
               "d9d_load_into: options_json: \"memory_budget\" must be positive");
  EXPECT_ERROR(d9d_load_into(ckpt, NULL, "{\"overwrite\": true}", target, &e), D9D_E_VALUE, "d9d_convert only");
  EXPECT_ERROR(d9d_load_into(NULL, NULL, NULL, target, &e), D9D_E_VALUE, "d9d_load_into: ckpt_path is NULL");
  EXPECT_ERROR(d9d_load_into(ckpt, NULL, NULL, NULL, &e), D9D_E_VALUE, "d9d_load_into: target is NULL");
  CHECK(e.calls == 0, "no callback before those errors");
}

/* ---- d9d_convert ----------------------------------------------------------------------------- */

static void test_convert(void) {
  char out[400];
  snprintf(out, sizeof out, "%s/fused", dir);
  CHECK(d9d_convert(ckpt, out, kFusedSpec, "{\"shard_size\": \"64B\", \"fsync\": false}") == D9D_OK, "convert");
  d9d_checkpoint* c = NULL;
  CHECK(d9d_open(out, &c) == D9D_OK, "open the converted checkpoint");
  CHECK(d9d_num_tensors(c) == 3, "3 tensors");
  DLManagedTensorVersioned* t = NULL;
  CHECK(d9d_get_tensor(c, "layers.1.qkv", &t) == D9D_OK, "get qkv");
  CHECK(t != NULL && equals_qkv((const float*)t->dl_tensor.data, 1), "converted qkv");
  if (t != NULL) t->deleter(t);
  d9d_close(c);
  CHECK(access(path_in("fused/d9d-conversion.json"), F_OK) == 0, "the conversion record is written");
  CHECK(access(path_in("fused/model.safetensors.index.json"), F_OK) == 0, "the index is written");
  CHECK(access(path_in("fused/model-00003-of-00003.safetensors"), F_OK) == 0, "64-byte shards: 3 of them");

  /* Errors: an existing checkpoint without "overwrite"; then with it. */
  EXPECT_ERROR(d9d_convert(ckpt, out, NULL, NULL), D9D_E_IO, "d9d_convert: ", "already holds a checkpoint",
               "overwrite");
  CHECK(d9d_convert(ckpt, out, NULL, "{\"overwrite\": true, \"fsync\": false}") == D9D_OK, "convert --overwrite");
  CHECK(d9d_open(out, &c) == D9D_OK && d9d_num_tensors(c) == kTensors, "identity conversion");
  d9d_close(c);
  CHECK(access(path_in("fused/model.safetensors"), F_OK) == 0 &&
            access(path_in("fused/model.safetensors.index.json"), F_OK) != 0 &&
            access(path_in("fused/model-00001-of-00003.safetensors"), F_OK) != 0,
        "one shard: model.safetensors, the old index and shards gone (as save_pretrained)");
  EXPECT_ERROR(d9d_convert(ckpt, dir, NULL, NULL), D9D_E_VALUE, "is the source checkpoint's directory");
  char created[400];
  snprintf(created, sizeof created, "%s/not-created", dir);
  EXPECT_ERROR(d9d_convert(ckpt, created, "{\"d9d_mapper_spec\": 1, \"rules\": [{\"op\": \"cast\", \"source\": "
                                          "\"model.norm.weight\", \"dtype\": \"F33\"}]}", NULL),
               D9D_E_SPEC, "d9d_convert: spec_json: ", "$.rules[0]", "F33");
  CHECK(access(created, F_OK) != 0, "a failed conversion leaves no directory");
  EXPECT_ERROR(d9d_convert(ckpt, created, NULL, "{\"shard_size\": \"-5MB\"}"), D9D_E_VALUE, "\"shard_size\"");
  EXPECT_ERROR(d9d_convert(ckpt, created, NULL, "{\"fsync\": \"no\"}"), D9D_E_VALUE, "\"fsync\" must be true or false");
  EXPECT_ERROR(d9d_convert(ckpt, created, NULL, "{\"threads\": 2, \"x\": 1}"), D9D_E_VALUE,
               "unknown field \"x\"", "shard_size, overwrite, fsync");
  EXPECT_ERROR(d9d_convert(path_in("missing"), created, NULL, NULL), D9D_E_IO, "missing");
  EXPECT_ERROR(d9d_convert(NULL, out, NULL, NULL), D9D_E_VALUE, "d9d_convert: ckpt_path is NULL");
  EXPECT_ERROR(d9d_convert(ckpt, NULL, NULL, NULL), D9D_E_VALUE, "d9d_convert: out_dir is NULL");
  CHECK(access(created, F_OK) != 0, "still no directory");
}

/* ---- d9d_builtin_spec --------------------------------------------------------------------------- */

static void test_builtin_spec(void) {
  const char* llama = NULL;
  CHECK(d9d_builtin_spec("llama", NULL, &llama) == D9D_OK && llama != NULL, "the llama spec by name");
  CHECK(llama != NULL && strstr(llama, "\"d9d_mapper_spec\": 1") != NULL &&
            strstr(llama, "\"LlamaForCausalLM\"") != NULL,
        "its text, NUL-terminated");
  const char* text = llama;
  EXPECT_ERROR(d9d_builtin_spec("llama9", NULL, &text), D9D_E_SPEC, "d9d_builtin_spec: ",
               "no built-in spec \"llama9\"", "qwen3_moe");
  CHECK(text == NULL, "*spec_json is NULL after an error");
  EXPECT_ERROR(d9d_builtin_spec("auto", ckpt, &text), D9D_E_VALUE, "has no config.json");
  EXPECT_ERROR(d9d_builtin_spec("auto", NULL, &text), D9D_E_VALUE, "ckpt_path is NULL");
  EXPECT_ERROR(d9d_builtin_spec(NULL, ckpt, &text), D9D_E_VALUE, "name is NULL");
  EXPECT_ERROR(d9d_builtin_spec("llama", NULL, NULL), D9D_E_VALUE, "spec_json is NULL");
  FILE* f = fopen(path_in("config.json"), "w");
  CHECK(f != NULL, "write config.json");
  if (f == NULL) return;
  fputs("{\"model_type\": \"mamba\"}", f);
  fclose(f);
  EXPECT_ERROR(d9d_builtin_spec("auto", ckpt, &text), D9D_E_SPEC, "no built-in spec for",
               "\"model_type\": \"mamba\"", "llama (llama");
  f = fopen(path_in("config.json"), "w");
  fputs("{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\"}", f);
  fclose(f);
  CHECK(d9d_builtin_spec("auto", ckpt, &text) == D9D_OK && text == llama,
        "auto: the spec config.json's model_type names");
  remove(path_in("config.json"));
}

/* ---- CUDA (a GPU, or tests/emulated_cuda's device: the test capi_emulated) ----------------------- */

#ifdef D9D_TEST_CUDA
/* The CUDA runtime calls the test makes, declared here (not included) so that it stays plain C11. */
int cudaMalloc(void** pointer, size_t size);
int cudaFree(void* pointer);
int cudaMemcpy(void* dst, const void* src, size_t count, int kind);
enum { kDeviceToHost = 2 };

struct DeviceEngine {
  int calls;
  char names[8][64];
  void* buffers[8];
  int host; /* give host memory for layers.1.qkv: a mismatch */
};

static int device_target(void* user, const char* name, const DLTensor* spec, DLTensor* into) {
  struct DeviceEngine* e = (struct DeviceEngine*)user;
  if (e->calls == 8 || spec->device.device_type != kDLCUDA || spec->device.device_id != 0) return -99;
  int64_t numel = 1;
  for (int d = 0; d < spec->ndim; ++d) numel *= spec->shape[d];
  const int i = e->calls++;
  snprintf(e->names[i], sizeof e->names[i], "%s", name);
  if (cudaMalloc(&e->buffers[i], (size_t)numel * 4) != 0) return -98;
  into->data = e->buffers[i];
  if (e->host && strcmp(name, "layers.1.qkv") == 0) into->device.device_type = kDLCPU;
  return 0;
}

/* `n` floats of device memory at `device`, equal to qkv of `layer` (or the norm for layer -1). */
static int device_equals(const void* device, int layer, int64_t n) {
  float host[16];
  if (n > 16 || cudaMemcpy(host, device, (size_t)n * 4, kDeviceToHost) != 0) return 0;
  return layer < 0 ? equals_tensor(host, 6, 0, n) : equals_qkv(host, layer);
}

static void test_cuda(void) {
  d9d_stream* s = NULL;
  const char* name = NULL;
  DLManagedTensorVersioned* out = NULL;
  CHECK(d9d_stream_open(ckpt, kFusedSpec, "{\"device\": \"cuda:0\"}", &s) == D9D_OK, "stream_open cuda:0");
  int status = d9d_stream_next(s, &name, &out);
  if (status != 1) {
    printf("test_capi: no CUDA device (%s): the CUDA tests are skipped\n", d9d_last_error());
    d9d_stream_close(s);
    return;
  }
  int n = 0;
  for (; status == 1; status = d9d_stream_next(s, &name, &out), ++n) {
    const DLTensor* t = &out->dl_tensor;
    CHECK(t->device.device_type == kDLCUDA && t->device.device_id == 0, "%s on cuda:0", name);
    const int layer = strcmp(name, "model.norm.weight") == 0 ? -1 : name[7] - '0';
    CHECK(device_equals((const char*)t->data + t->byte_offset, layer, layer < 0 ? 2 : 16), "%s's bytes", name);
    out->deleter(out);
  }
  CHECK(status == 0 && n == 3, "cuda:0 stream: %d outputs", n);
  d9d_stream_close(s);

  /* Device buffers the engine allocated, filled on the device. */
  struct DeviceEngine e;
  memset(&e, 0, sizeof e);
  CHECK(d9d_load_into(ckpt, kFusedSpec, "{\"device\": \"cuda:0\"}", device_target, &e) == D9D_OK,
        "load_into cuda:0");
  for (int i = 0; i < e.calls; ++i) {
    const int layer = strcmp(e.names[i], "model.norm.weight") == 0 ? -1 : e.names[i][7] - '0';
    CHECK(device_equals(e.buffers[i], layer, layer < 0 ? 2 : 16), "%s filled on the device", e.names[i]);
    cudaFree(e.buffers[i]);
  }
  CHECK(e.calls == 3, "3 device targets");
  memset(&e, 0, sizeof e);
  e.host = 1;
  EXPECT_ERROR(d9d_load_into(ckpt, kFusedSpec, "{\"device\": \"cuda:0\"}", device_target, &e), D9D_E_VALUE,
               "the target of layers.1.qkv is on DLPack device (type 1, id 0), expected (type 2, id 0)");
  for (int i = 0; i < e.calls; ++i) cudaFree(e.buffers[i]);
}
#else
static void test_cuda(void) {}
#endif

int main(int argc, char** argv) {
  const char* base = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%s/d9d-test-capi-XXXXXX", base != NULL ? base : "/tmp");
  if (mkdtemp(dir) == NULL) {
    perror("mkdtemp");
    return 1;
  }
  snprintf(ckpt, sizeof ckpt, "%s/model.safetensors", dir);
  write_checkpoint();

  test_version_and_last_error(argc > 1 ? argv[1] : NULL);
  test_checkpoint();
  test_stream();
  test_options();
  test_load_into();
  test_convert();
  test_builtin_spec();
  test_cuda();

  nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  printf("test_capi: %d passed, %d failed\n", checks - failures, failures);
  return failures == 0 ? 0 : 1;
}
