/* A toy inference engine in plain C11 that takes its weights from d9d's C ABI:
 *
 *   cc -std=c11 -Wall -Werror examples/c/engine.c $(pkg-config --cflags --libs d9d) -o engine
 *   ./engine CKPT examples/specs/llama_hf_to_fused.json
 *
 * It asks for its own layout (fused QKV and gate_up: the spec), allocates every weight itself when
 * d9d_load_into calls back with the weight's name, dtype and shape, lets d9d fill the buffers, and
 * then checks them against the checkpoint's original tensors (zero-copy views from d9d_get_tensor):
 * each layer's fused qkv must be its q, k and v rows one after another, gate_up its gate and up
 * rows, and every renamed tensor its source, byte for byte.
 */
#include <d9d/d9d.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_WEIGHTS 4096

struct Weight {
  char name[128];
  void* data;
  size_t nbytes;
};

struct Engine {
  struct Weight weights[MAX_WEIGHTS];
  int count;
  size_t bytes;
};

static size_t nbytes_of(const DLTensor* t) {
  size_t numel = 1;
  for (int32_t d = 0; d < t->ndim; ++d) numel *= (size_t)t->shape[d];
  return (numel * t->dtype.bits * t->dtype.lanes + 7) / 8;
}

/* d9d_load_into's callback: the engine's buffer for one weight (see d9d_target_fn in d9d.h). */
static int allocate_weight(void* user, const char* name, const DLTensor* spec, DLTensor* into) {
  struct Engine* engine = user;
  if (engine->count == MAX_WEIGHTS || strlen(name) >= sizeof engine->weights[0].name) return -1;
  struct Weight* w = &engine->weights[engine->count];
  w->nbytes = nbytes_of(spec);
  w->data = malloc(w->nbytes > 0 ? w->nbytes : 1);
  if (w->data == NULL) return D9D_E_NOMEM;
  strcpy(w->name, name);
  engine->count++;
  engine->bytes += w->nbytes;
  into->data = w->data; /* *into is already *spec: the engine's buffer is all it adds */
  return 0;
}

static const struct Weight* find(const struct Engine* engine, const char* name) {
  for (int i = 0; i < engine->count; ++i) {
    if (strcmp(engine->weights[i].name, name) == 0) return &engine->weights[i];
  }
  return NULL;
}

/* Whether `bytes` at `*offset` are the bytes of the checkpoint's tensor `name`; advances *offset. */
static int matches(d9d_checkpoint* ckpt, const char* name, const unsigned char* bytes, size_t nbytes,
                   size_t* offset) {
  DLManagedTensorVersioned* t = NULL;
  if (d9d_get_tensor(ckpt, name, &t) != D9D_OK) {
    fprintf(stderr, "engine: %s\n", d9d_last_error());
    return 0;
  }
  const size_t n = nbytes_of(&t->dl_tensor);
  const unsigned char* source = (const unsigned char*)t->dl_tensor.data + t->dl_tensor.byte_offset;
  const int ok = *offset + n <= nbytes && memcmp(bytes + *offset, source, n) == 0;
  *offset += n;
  t->deleter(t);
  return ok;
}

/* Weight `fused` of layer `layer` is the concatenation of the layer's `parts` (rows on dim 0). */
static int check_fused(const struct Engine* engine, d9d_checkpoint* ckpt, int layer, const char* fused,
                       const char* const* parts, int count) {
  char name[256];
  snprintf(name, sizeof name, "layers.%d.%s", layer, fused);
  const struct Weight* w = find(engine, name);
  if (w == NULL) return -1; /* no such layer: the end */
  size_t offset = 0;
  for (int i = 0; i < count; ++i) {
    char part[256];
    snprintf(part, sizeof part, "model.layers.%d.%s", layer, parts[i]);
    if (!matches(ckpt, part, w->data, w->nbytes, &offset)) {
      fprintf(stderr, "engine: %s differs from its part %s\n", name, part);
      return 0;
    }
  }
  return offset == w->nbytes;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s CHECKPOINT SPEC.json\n", argv[0]);
    return 2;
  }
  /* The spec's text. */
  FILE* f = fopen(argv[2], "rb");
  if (f == NULL) {
    perror(argv[2]);
    return 1;
  }
  char* spec = calloc(1 << 20, 1);
  const size_t spec_len = fread(spec, 1, (1 << 20) - 1, f);
  fclose(f);
  if (spec_len == 0) {
    fprintf(stderr, "engine: %s is empty\n", argv[2]);
    return 1;
  }

  printf("d9d %s (C ABI %d)\n", d9d_version(), d9d_abi_version());
  d9d_checkpoint* ckpt = NULL;
  if (d9d_open(argv[1], &ckpt) != D9D_OK) {
    fprintf(stderr, "engine: %s\n", d9d_last_error());
    return 1;
  }
  printf("checkpoint: %lld tensors, first %s\n", (long long)d9d_num_tensors(ckpt), d9d_tensor_name(ckpt, 0));

  static struct Engine engine;
  const int status = d9d_load_into(argv[1], spec, "{\"memory_budget\": \"256MiB\"}", allocate_weight, &engine);
  free(spec);
  int ok = status == D9D_OK;
  if (!ok) fprintf(stderr, "engine: d9d_load_into failed (%d): %s\n", status, d9d_last_error());

  /* Check what the engine got against the checkpoint's own tensors. */
  static const char* const qkv[] = {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"};
  static const char* const gate_up[] = {"mlp.gate_proj.weight", "mlp.up_proj.weight"};
  int layers = 0;
  for (; ok; ++layers) {
    const int a = check_fused(&engine, ckpt, layers, "attn.qkv.weight", qkv, 3);
    const int b = check_fused(&engine, ckpt, layers, "mlp.gate_up.weight", gate_up, 2);
    if (a < 0 && b < 0) break;
    ok = a == 1 && b == 1;
  }
  const struct Weight* norm = find(&engine, "norm.weight");
  size_t offset = 0;
  ok = ok && layers > 0 && norm != NULL && matches(ckpt, "model.norm.weight", norm->data, norm->nbytes, &offset);
  printf("engine: %d weights, %.1f MB in its own buffers; fused qkv and gate_up of %d layers and the "
         "renamed norm equal the checkpoint's tensors: %s\n",
         engine.count, engine.bytes / 1e6, layers, ok ? "OK" : "FAILED");

  for (int i = 0; i < engine.count; ++i) free(engine.weights[i].data);
  d9d_close(ckpt);
  return ok ? 0 : 1;
}
