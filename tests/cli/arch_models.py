"""Tiny but faithful Hugging Face checkpoints of real architectures, for the CLI tests.

For every architecture in ARCHS this module makes the tensors a real published checkpoint's
safetensors files hold -- the same key names, dtypes and shape rules (including the surprising
ones: gpt2's causal-mask buffers, bert's LayerNorm gamma/beta, Qwen3-0.6B's untied-on-disk
lm_head, DeepSeek-V3's FP8 blocks and MTP layer, gpt-oss's MXFP4 experts) -- at tiny sizes, and
the model's published config.json with only its sizes reduced. FACTS says, per architecture,
where each fact was checked; /work/notes/arch_facts.md has the key patterns in one table.

    ARCHS                                  the 13 names
    config(name) -> dict                   the reduced config.json
    state(name, seed=0) -> {name: array}   every tensor, keyed by the real HF name
    write(name, directory, seed=0, shard_bytes=None)
                                           config.json + model.safetensors, or shards + index

Importing this module reads no sys.argv (unlike clitest), so any test driver can use it.
`python3 arch_models.py [OUT_DIR]` writes every architecture and prints a summary.
"""
import copy
import json
import math
import os
import struct
import sys

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)
F32 = np.dtype(np.float32)
E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
U8 = np.dtype(np.uint8)
I64 = np.dtype(np.int64)
DTYPE_NAMES = {F32: "F32", BF16: "BF16", E4M3: "F8_E4M3", U8: "U8", I64: "I64",
               np.dtype(np.float16): "F16", np.dtype(np.bool_): "BOOL"}
INDEX = "model.safetensors.index.json"

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "mixtral", "deepseek_v3", "gpt_oss",
         "gemma2", "gemma3", "phi3", "gpt2", "bert")

# --------------------------------------------------------------------------------------------
# The published config.json of each model (full field list), then the sizes the tiny one uses.
# --------------------------------------------------------------------------------------------

_REAL = {
    # meta-llama/Llama-3.2-1B
    "llama": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu",
        "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
        "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
        "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 128256},
    # mistralai/Mistral-7B-v0.3
    "mistral": {
        "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
        "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
        "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": None,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.42.0.dev0", "use_cache": True, "vocab_size": 32768},
    # Qwen/Qwen2.5-0.5B
    "qwen2": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896,
        "initializer_range": 0.02, "intermediate_size": 4864, "max_position_embeddings": 32768,
        "max_window_layers": 24, "model_type": "qwen2", "num_attention_heads": 14,
        "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_cache": True,
        "use_mrope": False, "use_sliding_window": False, "vocab_size": 151936},
    # Qwen/Qwen3-0.6B
    "qwen3": {
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
        "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
        "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
        "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False,
        "vocab_size": 151936},
    # Qwen/Qwen3-30B-A3B
    "qwen3_moe": {
        "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False,
        "attention_dropout": 0.0, "bos_token_id": 151643, "decoder_sparse_step": 1,
        "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048,
        "initializer_range": 0.02, "intermediate_size": 6144, "max_position_embeddings": 40960,
        "max_window_layers": 48, "mlp_only_layers": [], "model_type": "qwen3_moe",
        "moe_intermediate_size": 768, "norm_topk_prob": True, "num_attention_heads": 32,
        "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 48,
        "num_key_value_heads": 4, "output_router_logits": False, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False,
        "vocab_size": 151936},
    # mistralai/Mixtral-8x7B-v0.1
    "mixtral": {
        "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
        "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
        "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mixtral",
        "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32,
        "num_key_value_heads": 8, "num_local_experts": 8, "output_router_logits": False,
        "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.36.0.dev0", "use_cache": True, "vocab_size": 32000},
    # deepseek-ai/DeepSeek-V3 (same fields as DeepSeek-R1's config.json)
    "deepseek_v3": {
        "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False,
        "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config",
                     "AutoModel": "modeling_deepseek.DeepseekV3Model",
                     "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"},
        "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3,
        "hidden_act": "silu", "hidden_size": 7168, "initializer_range": 0.02,
        "intermediate_size": 18432, "kv_lora_rank": 512, "max_position_embeddings": 163840,
        "model_type": "deepseek_v3", "moe_intermediate_size": 2048, "moe_layer_freq": 1,
        "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1, "norm_topk_prob": True,
        "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61,
        "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "q_lora_rank": 1536,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
                                "quant_method": "fp8", "weight_block_size": [128, 128]},
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                         "type": "yarn"},
        "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
        "tie_word_embeddings": False, "topk_group": 4, "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16", "transformers_version": "4.33.1", "use_cache": True,
        "v_head_dim": 128, "vocab_size": 129280},
    # openai/gpt-oss-20b
    "gpt_oss": {
        "architectures": ["GptOssForCausalLM"], "attention_bias": True, "attention_dropout": 0.0,
        "eos_token_id": 200002, "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu",
        "hidden_size": 2880, "initial_context_length": 4096, "initializer_range": 0.02,
        "intermediate_size": 2880,
        "layer_types": ["sliding_attention", "full_attention"] * 12,
        "max_position_embeddings": 131072, "model_type": "gpt_oss", "num_attention_heads": 64,
        "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_key_value_heads": 8,
        "num_local_experts": 32, "output_router_logits": False, "pad_token_id": 199999,
        "quantization_config": {
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                       "model.embed_tokens", "lm_head"],
            "quant_method": "mxfp4"},
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                         "original_max_position_embeddings": 4096, "rope_type": "yarn",
                         "truncate": False},
        "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128,
        "swiglu_limit": 7.0, "tie_word_embeddings": False,
        "transformers_version": "4.55.0.dev0", "use_cache": True, "vocab_size": 201088},
    # google/gemma-2-2b (the base checkpoint: torch_dtype float32, F32 tensors on disk)
    "gemma2": {
        "architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid",
        "eos_token_id": 1, "final_logit_softcapping": 30.0, "head_dim": 256,
        "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 2304, "initializer_range": 0.02, "intermediate_size": 9216,
        "max_position_embeddings": 8192, "model_type": "gemma2", "num_attention_heads": 8,
        "num_hidden_layers": 26, "num_key_value_heads": 4, "pad_token_id": 0,
        "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
        "sliding_window": 4096, "torch_dtype": "float32", "transformers_version": "4.42.4",
        "use_cache": True, "vocab_size": 256000},
    # google/gemma-3-1b-it (text-only gemma3_text, Gemma3ForCausalLM)
    "gemma3": {
        "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid",
        "eos_token_id": [1, 106], "final_logit_softcapping": None, "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152,
        "initializer_range": 0.02, "intermediate_size": 6912, "max_position_embeddings": 32768,
        "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 26,
        "num_key_value_heads": 1, "pad_token_id": 0, "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000, "rope_scaling": None,
        "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6,
        "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0", "use_cache": True,
        "vocab_size": 262144},
    # microsoft/Phi-3-mini-4k-instruct
    "phi3": {
        "_name_or_path": "Phi-3-mini-4k-instruct", "architectures": ["Phi3ForCausalLM"],
        "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_phi3.Phi3Config",
                     "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"},
        "bos_token_id": 1, "embd_pdrop": 0.0, "eos_token_id": 32000, "hidden_act": "silu",
        "hidden_size": 3072, "initializer_range": 0.02, "intermediate_size": 8192,
        "max_position_embeddings": 4096, "model_type": "phi3", "num_attention_heads": 32,
        "num_hidden_layers": 32, "num_key_value_heads": 32,
        "original_max_position_embeddings": 4096, "pad_token_id": 32000, "resid_pdrop": 0.0,
        "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
        "sliding_window": 2047, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.40.2", "use_cache": True, "attention_bias": False,
        "vocab_size": 32064},
    # openai-community/gpt2
    "gpt2": {
        "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1, "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256,
        "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "gpt2",
        "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024,
        "resid_pdrop": 0.1, "summary_activation": None, "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True, "summary_type": "cls_index", "summary_use_proj": True,
        "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        "vocab_size": 50257},
    # google-bert/bert-base-uncased
    "bert": {
        "architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.1,
        "gradient_checkpointing": False, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
        "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0,
        "position_embedding_type": "absolute", "transformers_version": "4.6.0.dev0",
        "type_vocab_size": 2, "use_cache": True, "vocab_size": 30522},
}

# Only sizes change. Layer-count-shaped fields (layer_types, max_window_layers) follow the
# layer count; context lengths stay unless a tensor's shape depends on them (gpt2, bert).
_TINY = {
    "llama": {"hidden_size": 64, "head_dim": 16, "intermediate_size": 256,
              "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
              "vocab_size": 256},
    "mistral": {"hidden_size": 64, "intermediate_size": 224, "num_attention_heads": 4,
                "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 256},
    "qwen2": {"hidden_size": 64, "intermediate_size": 352, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 2, "max_window_layers": 2,
              "vocab_size": 256},
    # head_dim * heads (128) != hidden (64), as in the real 16 * 128 != 1024
    "qwen3": {"hidden_size": 64, "head_dim": 32, "intermediate_size": 192,
              "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
              "max_window_layers": 2, "vocab_size": 256},
    "qwen3_moe": {"hidden_size": 64, "head_dim": 32, "intermediate_size": 192,
                  "moe_intermediate_size": 32, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "num_hidden_layers": 2, "max_window_layers": 2,
                  "vocab_size": 256},
    "mixtral": {"hidden_size": 64, "intermediate_size": 224, "num_attention_heads": 4,
                "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 256},
    # 128-multiples where the real model has them, so 128x128 FP8 blocks make sense; kv_a's
    # kv_lora_rank + qk_rope_head_dim (96) leaves a partial block, as the real 576 does.
    "deepseek_v3": {"hidden_size": 128, "intermediate_size": 256, "moe_intermediate_size": 128,
                    "q_lora_rank": 128, "kv_lora_rank": 64, "qk_nope_head_dim": 32,
                    "qk_rope_head_dim": 32, "v_head_dim": 32, "num_attention_heads": 4,
                    "num_key_value_heads": 4, "num_hidden_layers": 3,
                    "first_k_dense_replace": 1, "vocab_size": 256},
    # hidden and intermediate multiples of 32 (MXFP4 blocks); heads * head_dim (128) != hidden
    "gpt_oss": {"hidden_size": 64, "intermediate_size": 64, "head_dim": 32,
                "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
                "vocab_size": 256},
    "gemma2": {"hidden_size": 64, "head_dim": 32, "intermediate_size": 256,
               "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
               "query_pre_attn_scalar": 32, "vocab_size": 256},
    # the real 1B is multi-query (4 heads, 1 kv head); kept so
    "gemma3": {"hidden_size": 64, "head_dim": 32, "intermediate_size": 384,
               "num_attention_heads": 4, "num_key_value_heads": 1, "num_hidden_layers": 2,
               "query_pre_attn_scalar": 32, "vocab_size": 256},
    # the real model is MHA (32 heads, 32 kv heads); kept so
    "phi3": {"hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4,
             "num_key_value_heads": 4, "num_hidden_layers": 2, "vocab_size": 256},
    "gpt2": {"n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 64, "n_ctx": 64,
             "vocab_size": 256},
    "bert": {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4,
             "num_hidden_layers": 2, "max_position_embeddings": 64, "vocab_size": 256},
}


def config(name):
    """The reduced config.json: every field of the real one, only sizes changed."""
    if name not in _REAL:
        raise KeyError(f"unknown architecture {name!r}; one of {ARCHS}")
    c = copy.deepcopy(_REAL[name])
    c.update(copy.deepcopy(_TINY[name]))
    if "layer_types" in c:  # gpt-oss: alternating sliding/full, one entry per layer
        c["layer_types"] = c["layer_types"][:c["num_hidden_layers"]]
    return c


# --------------------------------------------------------------------------------------------
# Tensor makers
# --------------------------------------------------------------------------------------------

class _Maker:
    def __init__(self, seed, dtype):
        self.rng = np.random.default_rng(seed)
        self.dtype = dtype

    def w(self, *shape, dt=None, std=0.02):
        """A weight: normal values in the checkpoint's float dtype."""
        return (self.rng.standard_normal(shape, dtype=np.float32) * std).astype(dt or self.dtype)

    def norm(self, n, dt=None):
        """A norm's scale: around 1."""
        return (1.0 + 0.1 * self.rng.standard_normal(n, dtype=np.float32)).astype(dt or self.dtype)

    def fp8(self, out, inp):
        """A DeepSeek-style block-quantized Linear weight: F8_E4M3 [out, in] and its F32
        weight_scale_inv [ceil(out/128), ceil(in/128)] (dequantized = fp8 * scale per block)."""
        q = (self.rng.standard_normal((out, inp), dtype=np.float32) * 64).clip(-448, 448)
        scale = (self.rng.random((math.ceil(out / 128), math.ceil(inp / 128)), dtype=np.float32)
                 * 1e-4 + 2e-5).astype(np.float32)
        return q.astype(E4M3), scale


def _head_dim(c):
    return c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]


def _attention(s, m, p, c, bias=False, o_bias=False):
    """q/k/v/o projections in nn.Linear layout [out, in] (GQA: kv heads < heads)."""
    h, hd = c["hidden_size"], _head_dim(c)
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    s[p + "self_attn.q_proj.weight"] = m.w(q, h)
    s[p + "self_attn.k_proj.weight"] = m.w(kv, h)
    s[p + "self_attn.v_proj.weight"] = m.w(kv, h)
    s[p + "self_attn.o_proj.weight"] = m.w(h, q)
    if bias:
        s[p + "self_attn.q_proj.bias"] = m.w(q)
        s[p + "self_attn.k_proj.bias"] = m.w(kv)
        s[p + "self_attn.v_proj.bias"] = m.w(kv)
    if o_bias:
        s[p + "self_attn.o_proj.bias"] = m.w(h)


def _glu_mlp(s, m, p, hidden, inter):
    s[p + "gate_proj.weight"] = m.w(inter, hidden)
    s[p + "up_proj.weight"] = m.w(inter, hidden)
    s[p + "down_proj.weight"] = m.w(hidden, inter)


def _decoder(name, c, seed, dtype, attn_bias=False, qk_norm=False, mlp=None, tied=None):
    """The common Llama-shaped decoder: model.embed_tokens, model.layers.{L}.{input_layernorm,
    self_attn.*, post_attention_layernorm, mlp...}, model.norm, lm_head (unless tied on disk).
    `mlp(s, m, prefix, c)` writes a layer's MLP (default: gate/up/down_proj)."""
    m = _Maker(seed, dtype)
    h, v = c["hidden_size"], c["vocab_size"]
    s = {"model.embed_tokens.weight": m.w(v, h)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        s[p + "input_layernorm.weight"] = m.norm(h)
        _attention(s, m, p, c, bias=attn_bias)
        if qk_norm:
            s[p + "self_attn.q_norm.weight"] = m.norm(_head_dim(c))
            s[p + "self_attn.k_norm.weight"] = m.norm(_head_dim(c))
        s[p + "post_attention_layernorm.weight"] = m.norm(h)
        if mlp is None:
            _glu_mlp(s, m, p + "mlp.", h, c["intermediate_size"])
        else:
            mlp(s, m, p, c)
    s["model.norm.weight"] = m.norm(h)
    if not (c.get("tie_word_embeddings", True) if tied is None else tied):
        s["lm_head.weight"] = m.w(v, h)
    return s


# --------------------------------------------------------------------------------------------
# One builder per architecture
# --------------------------------------------------------------------------------------------

def _llama(c, seed):
    # Llama-3.2-1B: tied, one model.safetensors without lm_head.weight
    return _decoder("llama", c, seed, BF16)


def _mistral(c, seed):
    return _decoder("mistral", c, seed, BF16)


def _qwen2(c, seed):
    # Qwen2.5-0.5B: q/k/v biases (no o_proj bias), tied: no lm_head.weight on disk
    return _decoder("qwen2", c, seed, BF16, attn_bias=True)


def _qwen3(c, seed):
    # Qwen3-0.6B: config says tie_word_embeddings=true, yet its model.safetensors holds
    # lm_head.weight (311 tensors, 751,632,384 parameters): keep it, as the real file does.
    return _decoder("qwen3", c, seed, BF16, qk_norm=True, tied=False)


def _qwen3_moe(c, seed):
    def mlp(s, m, p, c):
        h, e = c["hidden_size"], c["num_experts"]
        s[p + "mlp.gate.weight"] = m.w(e, h)
        for j in range(e):
            _glu_mlp(s, m, f"{p}mlp.experts.{j}.", h, c["moe_intermediate_size"])
    return _decoder("qwen3_moe", c, seed, BF16, qk_norm=True, mlp=mlp)


def _mixtral(c, seed):
    def mlp(s, m, p, c):
        h, i, e = c["hidden_size"], c["intermediate_size"], c["num_local_experts"]
        s[p + "block_sparse_moe.gate.weight"] = m.w(e, h)
        for j in range(e):
            q = f"{p}block_sparse_moe.experts.{j}."
            s[q + "w1.weight"] = m.w(i, h)  # gate
            s[q + "w2.weight"] = m.w(h, i)  # down
            s[q + "w3.weight"] = m.w(i, h)  # up
    return _decoder("mixtral", c, seed, BF16, mlp=mlp)


def _phi3(c, seed):
    m = _Maker(seed, BF16)
    h, v, i = c["hidden_size"], c["vocab_size"], c["intermediate_size"]
    hd = h // c["num_attention_heads"]
    qkv = (c["num_attention_heads"] + 2 * c["num_key_value_heads"]) * hd
    s = {"model.embed_tokens.weight": m.w(v, h)}
    for n in range(c["num_hidden_layers"]):
        p = f"model.layers.{n}."
        s[p + "input_layernorm.weight"] = m.norm(h)
        s[p + "self_attn.qkv_proj.weight"] = m.w(qkv, h)     # rows: q, then k, then v
        s[p + "self_attn.o_proj.weight"] = m.w(h, h)
        s[p + "post_attention_layernorm.weight"] = m.norm(h)
        s[p + "mlp.gate_up_proj.weight"] = m.w(2 * i, h)    # rows: gate, then up
        s[p + "mlp.down_proj.weight"] = m.w(h, i)
    s["model.norm.weight"] = m.norm(h)
    s["lm_head.weight"] = m.w(v, h)
    return s


def _gemma(c, seed, dtype, qk_norm):
    """Gemma 2 / Gemma 3 text: four norms a layer; tied, no lm_head.weight on disk."""
    m = _Maker(seed, dtype)
    h, v = c["hidden_size"], c["vocab_size"]
    s = {"model.embed_tokens.weight": m.w(v, h)}
    for n in range(c["num_hidden_layers"]):
        p = f"model.layers.{n}."
        s[p + "input_layernorm.weight"] = m.norm(h)
        _attention(s, m, p, c)
        if qk_norm:
            s[p + "self_attn.q_norm.weight"] = m.norm(_head_dim(c))
            s[p + "self_attn.k_norm.weight"] = m.norm(_head_dim(c))
        s[p + "post_attention_layernorm.weight"] = m.norm(h)
        s[p + "pre_feedforward_layernorm.weight"] = m.norm(h)
        _glu_mlp(s, m, p + "mlp.", h, c["intermediate_size"])
        s[p + "post_feedforward_layernorm.weight"] = m.norm(h)
    s["model.norm.weight"] = m.norm(h)
    return s


def _gemma2(c, seed):
    return _gemma(c, seed, F32, qk_norm=False)   # gemma-2-2b ships F32


def _gemma3(c, seed):
    return _gemma(c, seed, BF16, qk_norm=True)


def _deepseek_v3(c, seed):
    m = _Maker(seed, BF16)
    h, v = c["hidden_size"], c["vocab_size"]
    nh, qk = c["num_attention_heads"], c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
    s = {}

    def lin(name, out, inp):  # a quantized Linear: weight + weight_scale_inv
        s[name + ".weight"], s[name + ".weight_scale_inv"] = m.fp8(out, inp)

    def mlp(p, inter):
        lin(p + "gate_proj", inter, h)
        lin(p + "up_proj", inter, h)
        lin(p + "down_proj", h, inter)

    def layer(i):
        p = f"model.layers.{i}."
        s[p + "input_layernorm.weight"] = m.norm(h)
        lin(p + "self_attn.q_a_proj", c["q_lora_rank"], h)
        s[p + "self_attn.q_a_layernorm.weight"] = m.norm(c["q_lora_rank"])
        lin(p + "self_attn.q_b_proj", nh * qk, c["q_lora_rank"])
        lin(p + "self_attn.kv_a_proj_with_mqa", c["kv_lora_rank"] + c["qk_rope_head_dim"], h)
        s[p + "self_attn.kv_a_layernorm.weight"] = m.norm(c["kv_lora_rank"])
        lin(p + "self_attn.kv_b_proj", nh * (c["qk_nope_head_dim"] + c["v_head_dim"]),
            c["kv_lora_rank"])
        lin(p + "self_attn.o_proj", h, nh * c["v_head_dim"])
        s[p + "post_attention_layernorm.weight"] = m.norm(h)
        if i < c["first_k_dense_replace"]:
            mlp(p + "mlp.", c["intermediate_size"])
            return
        e = c["n_routed_experts"]
        s[p + "mlp.gate.weight"] = m.w(e, h)                       # router: BF16, no scale
        s[p + "mlp.gate.e_score_correction_bias"] = m.w(e, dt=F32)  # F32 on disk
        for j in range(e):
            mlp(f"{p}mlp.experts.{j}.", c["moe_intermediate_size"])
        mlp(p + "mlp.shared_experts.", c["moe_intermediate_size"] * c["n_shared_experts"])

    s["model.embed_tokens.weight"] = m.w(v, h)
    for i in range(c["num_hidden_layers"]):
        layer(i)
    s["model.norm.weight"] = m.norm(h)
    s["lm_head.weight"] = m.w(v, h)
    # multi-token prediction: layer num_hidden_layers + k, a full (MoE) decoder layer plus its
    # own copies of the embedding and head, all of the extras BF16 and unquantized
    for k in range(c["num_nextn_predict_layers"]):
        i = c["num_hidden_layers"] + k
        p = f"model.layers.{i}."
        layer(i)
        s[p + "embed_tokens.weight"] = s["model.embed_tokens.weight"].copy()
        s[p + "enorm.weight"] = m.norm(h)
        s[p + "hnorm.weight"] = m.norm(h)
        s[p + "eh_proj.weight"] = m.w(h, 2 * h)
        s[p + "shared_head.norm.weight"] = m.norm(h)
        s[p + "shared_head.head.weight"] = s["lm_head.weight"].copy()
    return s


def _gpt_oss(c, seed):
    m = _Maker(seed, BF16)
    h, v, i = c["hidden_size"], c["vocab_size"], c["intermediate_size"]
    e = c["num_local_experts"]
    s = {"model.embed_tokens.weight": m.w(v, h)}

    def mxfp4(name, rows, cols):
        # U8 blocks [E, rows, cols/32, 16]: 32 FP4 (E2M1) values a block, two a byte, low
        # nibble first; U8 scales [E, rows, cols/32]: E8M0 exponents (2**(s-127)).
        s[name + "_blocks"] = m.rng.integers(0, 256, size=(e, rows, cols // 32, 16),
                                             dtype=np.uint8)
        s[name + "_scales"] = m.rng.integers(118, 128, size=(e, rows, cols // 32),
                                             dtype=np.uint8)

    for n in range(c["num_hidden_layers"]):
        p = f"model.layers.{n}."
        s[p + "input_layernorm.weight"] = m.norm(h)
        _attention(s, m, p, c, bias=True, o_bias=True)
        s[p + "self_attn.sinks"] = m.w(c["num_attention_heads"], std=1.0)
        s[p + "post_attention_layernorm.weight"] = m.norm(h)
        s[p + "mlp.router.weight"] = m.w(e, h)
        s[p + "mlp.router.bias"] = m.w(e)
        # 2I rows: gate and up interleaved (even rows gate, odd rows up)
        mxfp4(p + "mlp.experts.gate_up_proj", 2 * i, h)
        s[p + "mlp.experts.gate_up_proj_bias"] = m.w(e, 2 * i)
        mxfp4(p + "mlp.experts.down_proj", h, i)
        s[p + "mlp.experts.down_proj_bias"] = m.w(e, h)
    s["model.norm.weight"] = m.norm(h)
    s["lm_head.weight"] = m.w(v, h)
    return s


def _gpt2(c, seed):
    # No "transformer." prefix; Conv1D weights stored [in, out]; the causal-mask buffer
    # h.{L}.attn.bias (F32 lower-triangular ones, [1, 1, n_positions, n_positions]) is in the
    # file, attn.masked_bias is not; lm_head is tied to wte and absent.
    m = _Maker(seed, F32)
    h, v, n = c["n_embd"], c["vocab_size"], c["n_positions"]
    inner = c.get("n_inner") or 4 * h
    mask = np.tril(np.ones((n, n), dtype=np.float32)).reshape(1, 1, n, n)
    s = {"wte.weight": m.w(v, h), "wpe.weight": m.w(n, h, std=0.01)}
    for i in range(c["n_layer"]):
        p = f"h.{i}."
        s[p + "ln_1.weight"], s[p + "ln_1.bias"] = m.norm(h), m.w(h)
        s[p + "attn.bias"] = mask.copy()
        s[p + "attn.c_attn.weight"] = m.w(h, 3 * h)   # [in, out]: columns q | k | v
        s[p + "attn.c_attn.bias"] = m.w(3 * h)
        s[p + "attn.c_proj.weight"] = m.w(h, h)
        s[p + "attn.c_proj.bias"] = m.w(h)
        s[p + "ln_2.weight"], s[p + "ln_2.bias"] = m.norm(h), m.w(h)
        s[p + "mlp.c_fc.weight"] = m.w(h, inner)
        s[p + "mlp.c_fc.bias"] = m.w(inner)
        s[p + "mlp.c_proj.weight"] = m.w(inner, h)
        s[p + "mlp.c_proj.bias"] = m.w(h)
    s["ln_f.weight"], s["ln_f.bias"] = m.norm(h), m.w(h)
    return s


def _bert(c, seed):
    # BertForPreTraining layout, "bert." prefix, every LayerNorm as gamma/beta; no
    # cls.predictions.decoder.weight (tied to the word embeddings, dropped from the
    # safetensors file) and no embeddings.position_ids.
    m = _Maker(seed, F32)
    h, v, i = c["hidden_size"], c["vocab_size"], c["intermediate_size"]

    def ln(s, p):
        s[p + "LayerNorm.gamma"], s[p + "LayerNorm.beta"] = m.norm(h), m.w(h)

    def dense(s, p, out, inp):
        s[p + "weight"], s[p + "bias"] = m.w(out, inp), m.w(out)

    s = {"bert.embeddings.word_embeddings.weight": m.w(v, h),
         "bert.embeddings.position_embeddings.weight": m.w(c["max_position_embeddings"], h),
         "bert.embeddings.token_type_embeddings.weight": m.w(c["type_vocab_size"], h)}
    ln(s, "bert.embeddings.")
    for n in range(c["num_hidden_layers"]):
        p = f"bert.encoder.layer.{n}."
        for x in ("query", "key", "value"):
            dense(s, f"{p}attention.self.{x}.", h, h)
        dense(s, p + "attention.output.dense.", h, h)
        ln(s, p + "attention.output.")
        dense(s, p + "intermediate.dense.", i, h)
        dense(s, p + "output.dense.", h, i)
        ln(s, p + "output.")
    dense(s, "bert.pooler.dense.", h, h)
    s["cls.predictions.bias"] = m.w(v)
    dense(s, "cls.predictions.transform.dense.", h, h)
    ln(s, "cls.predictions.transform.")
    dense(s, "cls.seq_relationship.", 2, h)
    return s


_BUILDERS = {"llama": _llama, "mistral": _mistral, "qwen2": _qwen2, "qwen3": _qwen3,
             "qwen3_moe": _qwen3_moe, "mixtral": _mixtral, "deepseek_v3": _deepseek_v3,
             "gpt_oss": _gpt_oss, "gemma2": _gemma2, "gemma3": _gemma3, "phi3": _phi3,
             "gpt2": _gpt2, "bert": _bert}


def state(name, seed=0):
    """Every tensor of the tiny checkpoint, keyed by the real checkpoint's names."""
    return _BUILDERS[name](config(name), seed)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _save(tensors, path):
    """One safetensors file, written here (Python's safetensors has no numpy FP8)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    names = sorted(tensors)
    for k in names:
        a = tensors[k]
        header[k] = {"dtype": DTYPE_NAMES[a.dtype], "shape": list(a.shape),
                     "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for k in names:
            f.write(np.ascontiguousarray(tensors[k]).tobytes())


def write(name, directory, seed=0, shard_bytes=None):
    """config.json and the weights: one model.safetensors, or (shard_bytes set) the hub's own
    split into model-0000i-of-0000n.safetensors plus model.safetensors.index.json."""
    write_state(directory, state(name, seed), config(name), shard_bytes)


def write_state(directory, s, cfg, shard_bytes=None):
    """`s` (name -> array) and config.json `cfg` as write() writes them."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2, sort_keys=True)
        fh.write("\n")
    if shard_bytes is None:
        _save(s, os.path.join(directory, "model.safetensors"))
        return
    from huggingface_hub import split_state_dict_into_shards_factory
    split = split_state_dict_into_shards_factory(
        s, get_storage_size=lambda a: a.nbytes, filename_pattern="model{suffix}.safetensors",
        max_shard_size=shard_bytes)
    for filename, names in split.filename_to_tensors.items():
        _save({k: s[k] for k in names}, os.path.join(directory, filename))
    if split.is_sharded:
        with open(os.path.join(directory, INDEX), "w") as fh:
            json.dump({"metadata": split.metadata, "weight_map": split.tensor_to_filename}, fh,
                      indent=2)


def load(directory):
    """Every tensor of a checkpoint directory (any dtype write() writes, FP8 included), read
    from the safetensors headers here: name -> array."""
    by_name = {v: k for k, v in DTYPE_NAMES.items()}
    index = os.path.join(directory, INDEX)
    if os.path.exists(index):
        with open(index) as fh:
            files = sorted(set(json.load(fh)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for f in files:
        with open(os.path.join(directory, f), "rb") as fh:
            data = fh.read()
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + n])
        header.pop("__metadata__", None)
        for k, h in header.items():
            begin, end = h["data_offsets"]
            out[k] = np.frombuffer(data[8 + n + begin:8 + n + end],
                                   dtype=by_name[h["dtype"]]).reshape(h["shape"])
    return out


# --------------------------------------------------------------------------------------------
# Where each fact was checked
# --------------------------------------------------------------------------------------------

_TF = "huggingface/transformers src/transformers/models"
FACTS = {
    "llama": (
        "Keys/shapes: {tf}/llama/modeling_llama.py (q_proj [heads*head_dim, H], k/v [kv*head_dim, "
        "H], o [H, heads*head_dim], gate/up [I, H], down [H, I], no biases since attention_bias and "
        "mlp_bias are false). config.json of meta-llama/Llama-3.2-1B as quoted in "
        "kevinstephano/thunder_model_blocks hf_llama/llama_config.py (head_dim 64, "
        "tie_word_embeddings true, llama3 rope_scaling). Tied means no lm_head.weight in "
        "model.safetensors (meta-llama/llama-models issue #172 for 3.2-3B; the 1B file is "
        "2.47 GB = 1,235,814,400 BF16 parameters, embeddings counted once)."
    ).format(tf=_TF),
    "mistral": (
        "Keys: {tf}/mistral/modeling_mistral.py (Llama layout, no biases). config.json of "
        "mistralai/Mistral-7B(-Instruct)-v0.3 quoted verbatim in a code search hit (vocab 32768, "
        "sliding_window null, rope_theta 1e6, no head_dim field, tie false) and a parameter "
        "listing of the same model ending in lm_head (32768, 4096). The repo also carries a "
        "consolidated.safetensors in Mistral's own naming; the HF-named files are "
        "model-0000i-of-00003.safetensors."
    ).format(tf=_TF),
    "qwen2": (
        "Keys: {tf}/qwen2/modeling_qwen2.py (q/k/v_proj bias=True, o_proj bias=False). config.json "
        "of Qwen/Qwen2.5-0.5B from a code search hit (# Qwen/Qwen2.5-0.5B ## model config: "
        "tie_word_embeddings true, 14 heads / 2 kv heads). Tied on disk: QwenLM/Qwen3 issue #733 "
        "('0.5B and 1.5B have tied word embedding', no lm_head in the safetensors); the file is "
        "0.49B parameters x 2 bytes."
    ).format(tf=_TF),
    "qwen3": (
        "Keys: {tf}/qwen3/modeling_qwen3.py (q_norm/k_norm RMSNorm(head_dim), no biases). "
        "config.json of Qwen/Qwen3-0.6B from a code search hit (head_dim 128 with hidden 1024 and "
        "16 heads, tie_word_embeddings true). SURPRISE: github tesf777/nano-vllm "
        "Qwen3-0.6B/Qwen3-0.6B_weights_info.md lists the real model.safetensors: 311 tensors, "
        "751,632,384 parameters, including lm_head.weight (151936, 1024) -- the tied model ships "
        "its head anyway, so this module keeps lm_head.weight."
    ).format(tf=_TF),
    "qwen3_moe": (
        "Keys: {tf}/qwen3_moe/modeling_qwen3_moe.py (4.x: mlp.gate = Linear(H, num_experts), "
        "mlp.experts.{{E}}.gate_proj/up_proj/down_proj; 5.x fuses experts in memory but converts "
        "from these on-disk names). config.json of Qwen/Qwen3-30B-A3B: a GPTQ copy's config "
        "(quantization fields dropped) plus a verbatim Qwen3-30B-A3B defaults dict (sglang RND1) "
        "found by code search: 128 experts, moe_intermediate 768, mlp_only_layers [], "
        "decoder_sparse_step 1, tie false, head_dim 128."
    ).format(tf=_TF),
    "mixtral": (
        "Keys: {tf}/mixtral/modeling_mixtral.py (block_sparse_moe.gate Linear(H, E, bias=False); "
        "experts.{{E}}.w1 [I, H] gate, w3 [I, H] up, w2 [H, I] down); the real "
        "Mixtral-8x7B-v0.1 model.safetensors.index.json key "
        "model.layers.0.block_sparse_moe.experts.0.w1.weight -> model-00001-of-00019.safetensors "
        "(quoted in a code search hit). config.json of "
        "mistralai/Mixtral-8x7B-v0.1 quoted verbatim in several hits (e.g. TensorRT-LLM "
        "test_modeling_mixtral.py MIXTRAL_8X7B_CONFIG)."
    ).format(tf=_TF),
    "deepseek_v3": (
        "Keys, dtypes and shapes: github simpx/model-inspect README, a header dump of "
        "deepseek-ai/DeepSeek-V3 (layer 0: q_a_proj F8_E4M3 (1536, 7168) + weight_scale_inv F32 "
        "(12, 56), q_a_layernorm BF16, q_b_proj (24576, 1536), kv_a_proj_with_mqa (576, 7168) + "
        "scale (5, 56), kv_a_layernorm (512), kv_b_proj (32768, 512) + (256, 4), o_proj "
        "(7168, 16384) + (56, 128), dense mlp gate/up/down + scales; layer 61: embed_tokens, enorm, "
        "hnorm, eh_proj BF16 (7168, 14336) with no scale, shared_head.norm, shared_head.head "
        "BF16); 91,991 tensors and 688,574,839,360 bytes, which the pattern here reproduces "
        "exactly only with gate.weight BF16 unquantized, e_score_correction_bias F32, "
        "shared_experts quantized, norms/embeddings/lm_head BF16. Shape formulas: "
        "{tf}/deepseek_v3/modeling_deepseek_v3.py. config.json: DeepSeek-R1's verbatim copy (same "
        "architecture fields as V3; V3's transformers_version is 4.33.1)."
    ).format(tf=_TF),
    "gpt_oss": (
        "Keys and config: a verbatim copy of openai/gpt-oss-20b config.json and "
        "model.safetensors.index.json found by code search (weight_map keys: self_attn.q/k/v/o "
        "weight+bias, self_attn.sinks, mlp.router.weight/bias, mlp.experts.gate_up_proj_blocks/"
        "_scales/_bias, down_proj_blocks/_scales/_bias, norms; total_size 13,761,264,768, which "
        "matches only with every non-expert tensor BF16 and blocks/scales U8). Shapes: "
        "huggingface/transformers src/transformers/integrations/mxfp4.py Mxfp4GptOssExperts "
        "(gate_up_proj_blocks [E, 2I, H/32, 16], scales [E, 2I, H/32], bias [E, 2I]; down "
        "[E, H, I/32, 16], [E, H, I/32], [E, H]); convert_moe_packed_tensors (low nibble first, "
        "exponent = scale - 127, result [E, 2I, H] transposed to [E, H, 2I]); "
        "{tf}/gpt_oss/modeling_gpt_oss.py (gate = gate_up[..., ::2], up = gate_up[..., 1::2]: "
        "interleaved along 2I; sinks [num_attention_heads]; router Linear with bias; o_proj bias "
        "from attention_bias); convert_gpt_oss_weights_to_hf.py (mxfp4 path renames .blocks/"
        ".scales to _blocks/_scales)."
    ).format(tf=_TF),
    "gemma2": (
        "Keys: {tf}/gemma2/modeling_gemma2.py (input_layernorm, post_attention_layernorm, "
        "pre_feedforward_layernorm, post_feedforward_layernorm; no q/k norms; no biases). "
        "config.json of google/gemma-2-2b verbatim in a code search hit (torch_dtype float32, "
        "head_dim 256 with hidden 2304 and 8 heads, query_pre_attn_scalar 256); the base 2b "
        "checkpoint is F32 (the -it one is bfloat16), so this module writes F32. Tied: no "
        "lm_head.weight (google-deepmind/gemma issue #8)."
    ).format(tf=_TF),
    "gemma3": (
        "Keys: {tf}/gemma3/modeling_gemma3.py Gemma3Attention (q_norm/k_norm Gemma3RMSNorm("
        "head_dim)) and Gemma3DecoderLayer (four norms), Gemma3ForCausalLM prefix model.; "
        "embed_scale is a non-persistent buffer (not on disk). config.json of google/gemma-3-1b-it: "
        "dims corroborated by several code hits (1152/6912/26 layers/4 heads/1 kv head/head_dim "
        "256/sliding_window 512/pattern 6/rope_local_base_freq 10000/vocab 262144); the remaining "
        "fields (cache_implementation hybrid, eos [1, 106], softcappings null, transformers "
        "4.50.0.dev0) are as published to my knowledge but were not found verbatim. Tied: no "
        "lm_head.weight."
    ).format(tf=_TF),
    "phi3": (
        "Keys: {tf}/phi3/modeling_phi3.py (self_attn.qkv_proj [(heads + 2*kv)*head_dim, H], "
        "rows q|k|v; mlp.gate_up_proj [2I, H], gate = first half (chunk(2)), down_proj). "
        "config.json of microsoft/Phi-3-mini-4k-instruct verbatim in several hits (e.g. "
        "TensorRT-LLM test_modeling_phi3.py), and a Rust test listing the real tensor names "
        "(lm_head, embed_tokens, input_layernorm, mlp.down_proj, mlp.gate_up_proj, "
        "post_attention_layernorm, self_attn.o_proj, self_attn.qkv_proj, model.norm)."
    ).format(tf=_TF),
    "gpt2": (
        "Keys: {tf}/gpt2/modeling_gpt2.py (Conv1D weight [nx_in, nf_out]; c_attn [H, 3H]; "
        "c_fc [H, 4H]; mlp.c_proj [4H, H]; biases everywhere) and vllm gpt2.py load_weights "
        "(skips .attn.bias/.attn.masked_bias, adds the missing transformer. prefix). The real "
        "model.safetensors is read with unprefixed names (wpe.weight, h.3.attn.bias) in code "
        "search hits; loading 'gpt2' reports h.N.attn.masked_bias and lm_head.weight as newly "
        "initialized (so neither is stored) but not attn.bias; the page's 137M parameters = "
        "124.4M + 12 x 1024 x 1024 confirms the F32 [1, 1, 1024, 1024] mask buffers are in the "
        "file. config.json verbatim from a code hit."
    ).format(tf=_TF),
    "bert": (
        "Keys: keras-nlp src/utils/transformers/convert_bert.py reads the hub model.safetensors as "
        "bert.embeddings.LayerNorm.gamma/beta and bert.encoder.layer.N.{{attention.output,output}}"
        ".LayerNorm.gamma/beta; the PaddleNLP conversion doc lists every key of bert-base-uncased "
        "(cls.predictions.bias, cls.predictions.transform.dense.*, "
        "cls.predictions.transform.LayerNorm.gamma/beta, cls.predictions.decoder.weight [bin "
        "only], cls.seq_relationship.*, bert.pooler.dense.*; no position_ids). "
        "cls.predictions.decoder.weight is dropped from model.safetensors as a shared tensor "
        "(huggingface/candle PR #2879; 110M parameters F32 = 440 MB). config.json verbatim from "
        "a code hit (architectures BertForMaskedLM)."
    ).format(tf=_TF),
}


# --------------------------------------------------------------------------------------------

def _summary(out):
    """Writes every architecture under `out`, reopens each file with Python's safetensors and
    prints tensor count, bytes, and the non-layer keys plus layer 0's (DeepSeek: also the first
    MoE layer and the MTP layer; experts past the second elided)."""
    import re
    from safetensors import safe_open
    for name in ARCHS:
        d = os.path.join(out, name)
        write(name, d)
        c = config(name)
        show = {0}
        if name == "deepseek_v3":
            show |= {c["first_k_dense_replace"], c["num_hidden_layers"]}
        path = os.path.join(d, "model.safetensors")
        with safe_open(path, framework="numpy") as f:
            keys = {k: (f.get_slice(k).get_dtype(), f.get_slice(k).get_shape()) for k in f.keys()}
        nbytes = sum(int(np.prod(sh, dtype=np.int64)) * {"F32": 4, "BF16": 2, "F8_E4M3": 1,
                                                          "U8": 1, "I64": 8}[dt]
                     for dt, sh in keys.values())
        print(f"== {name}: {len(keys)} tensors, {nbytes} tensor bytes, "
              f"{os.path.getsize(path)} file bytes")
        elided = 0
        for k in sorted(keys, key=lambda k: [int(t) if t.isdigit() else t
                                              for t in k.split(".")]):
            m = re.search(r"(?:^h|\.layers?)\.(\d+)\.", k)
            if m and int(m.group(1)) not in show:
                continue
            e = re.search(r"\.experts\.(\d+)\.", k)
            if e and int(e.group(1)) > 1:
                elided += 1
                continue
            dt, sh = keys[k]
            print(f"   {k:62s} {dt:8s} {sh}")
        if elided:
            print(f"   ... and {elided} more per-expert tensors of those layers")


if __name__ == "__main__":
    _summary(sys.argv[1] if len(sys.argv) > 1 else "/tmp/arch_models")
