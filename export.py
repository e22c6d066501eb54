"""Export a checkpoint as a Hugging Face model folder (no custom code), one class per family.

- neox -> GPTNeoXForCausalLM: sequential residual (`use_parallel_residual=False`), rotary on the
  whole head (`rotary_pct=1.0`), exact GELU, LayerNorm, biases; a renaming of
  weights plus one permutation (see `_neox_qkv`).
- llama -> LlamaForCausalLM and qwen3 -> Qwen3ForCausalLM: the fused qkv and [gate | up]
  matrices split into q/k/v and gate/up projections; qwen3's q_norm / k_norm scales as they are.
- Every family: a tied output head is not written (`tie_word_embeddings=True`); an untied one
  (`tie_embeddings=False`) is written as `embed_out` (neox) or `lm_head` (llama, qwen3).

Each gives our logits and greedy tokens (tests/test_export.py). The folder holds
`config.json`, `generation_config.json`, `model.safetensors`, `tokenizer.json`,
`tokenizer_config.json`, `special_tokens_map.json` and a short `README.md`, and loads with
`AutoModelForCausalLM.from_pretrained(folder)` / `AutoTokenizer.from_pretrained(folder)`.

transformers itself is not needed here (it is a test-only dependency): the files are
written directly as JSON and safetensors.

Differences a user of the export should know:
- The exported tokenizer prepends the document separator (our BOS) when called with
  `add_special_tokens=True` (the default), as our training data has a separator before every
  document; with `add_special_tokens=False` it gives exactly our tokenizer's ids. A model
  trained on lowercased text (tokenizer.trained_on_lowercase) gets a tokenizer that lowercases
  its input, as our generate stage does.
- GPT-NeoX in transformers has no document-aware attention: a sequence that contains the
  separator in the middle attends across it. Single documents (the normal generation case)
  give the same logits as our model.
- End of generation: both the separator (which ends every document in our training data)
  and `<|endoftext|>` are listed as `eos_token_id`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from common import UserError, file_sha256, is_write_failure, log, require_file, write_failure_reason
from tokenizer import DOC_SEPARATOR, EOS_TOKEN as EOT_TOKEN, PAD_TOKEN

_MARKER = "mini-llm export"  # in README.md: marks a folder that a new export may replace


def _neox_qkv(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """Our fused qkv rows [q heads | k heads | v heads] -> GPT-NeoX per-head [q_h k_h v_h].

    transformers views the fused output as (B, T, H, 3 * D) and chunks the last dim into
    q, k, v, so head h owns rows [h*3D, (h+1)*3D). Works for the weight (3C, C) and bias (3C,).
    """
    three_c = t.shape[0]
    D = three_c // 3 // n_head
    rest = t.shape[1:]
    return t.reshape(3, n_head, D, *rest).transpose(0, 1).reshape(three_c, *rest).contiguous()


HF_ARCHITECTURES = {"neox": "GPTNeoXForCausalLM", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
HF_HEADS = {"neox": "embed_out.weight", "llama": "lm_head.weight", "qwen3": "lm_head.weight"}  # when untied


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    """Our GPT's weights under the names of its family's transformers class (float32,
    contiguous). A tied output head is not written: `tie_word_embeddings=True` makes
    transformers tie it to the input embedding."""
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    out = _neox_state_dict(model.cfg, sd) if model.cfg.family == "neox" else _llama_state_dict(model.cfg, sd)
    if not model.cfg.tie_embeddings:
        out[HF_HEADS[model.cfg.family]] = sd["lm_head.weight"]
    return {k: v.contiguous().clone() for k, v in out.items()}  # no shared storage in safetensors


def _llama_state_dict(cfg, sd: dict) -> dict[str, torch.Tensor]:
    """llama / qwen3 names: q/k/v and gate/up are row blocks of our fused matrices."""
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"]}
    for i in range(cfg.n_layer):
        ours, hf = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = sd[ours + "attn.qkv.weight"].chunk(3, dim=0)
        gate, up = sd[ours + "mlp.fc.weight"].chunk(2, dim=0)
        out.update({
            hf + "input_layernorm.weight": sd[ours + "ln_1.weight"],
            hf + "self_attn.q_proj.weight": q, hf + "self_attn.k_proj.weight": k,
            hf + "self_attn.v_proj.weight": v, hf + "self_attn.o_proj.weight": sd[ours + "attn.proj.weight"],
            hf + "post_attention_layernorm.weight": sd[ours + "ln_2.weight"],
            hf + "mlp.gate_proj.weight": gate, hf + "mlp.up_proj.weight": up,
            hf + "mlp.down_proj.weight": sd[ours + "mlp.proj.weight"],
        })
        if cfg.family == "qwen3":
            out[hf + "self_attn.q_norm.weight"] = sd[ours + "attn.q_norm.weight"]
            out[hf + "self_attn.k_norm.weight"] = sd[ours + "attn.k_norm.weight"]
    out["model.norm.weight"] = sd["ln_f.weight"]
    return out


def _neox_state_dict(cfg, sd: dict) -> dict[str, torch.Tensor]:
    """GPT-NeoX names. Missing biases (`bias=False`) are written as zeros, the same function."""
    C, I = cfg.n_embd, cfg.intermediate_size

    def get(name, shape):
        return sd[name] if name in sd else torch.zeros(shape)

    out = {"gpt_neox.embed_in.weight": sd["tok_emb.weight"]}
    for i in range(cfg.n_layer):
        ours, hf = f"blocks.{i}.", f"gpt_neox.layers.{i}."
        out[hf + "input_layernorm.weight"] = sd[ours + "ln_1.weight"]
        out[hf + "input_layernorm.bias"] = get(ours + "ln_1.bias", (C,))
        out[hf + "attention.query_key_value.weight"] = _neox_qkv(sd[ours + "attn.qkv.weight"], cfg.n_head)
        out[hf + "attention.query_key_value.bias"] = _neox_qkv(get(ours + "attn.qkv.bias", (3 * C,)), cfg.n_head)
        out[hf + "attention.dense.weight"] = sd[ours + "attn.proj.weight"]
        out[hf + "attention.dense.bias"] = get(ours + "attn.proj.bias", (C,))
        out[hf + "post_attention_layernorm.weight"] = sd[ours + "ln_2.weight"]
        out[hf + "post_attention_layernorm.bias"] = get(ours + "ln_2.bias", (C,))
        out[hf + "mlp.dense_h_to_4h.weight"] = sd[ours + "mlp.fc.weight"]
        out[hf + "mlp.dense_h_to_4h.bias"] = get(ours + "mlp.fc.bias", (I,))
        out[hf + "mlp.dense_4h_to_h.weight"] = sd[ours + "mlp.proj.weight"]
        out[hf + "mlp.dense_4h_to_h.bias"] = get(ours + "mlp.proj.bias", (C,))
    out["gpt_neox.final_layer_norm.weight"] = sd["ln_f.weight"]
    out["gpt_neox.final_layer_norm.bias"] = get("ln_f.bias", (C,))
    return out


def hf_config(cfg, special: dict) -> dict:
    """config.json for the transformers class of cfg's family, matching ModelConfig `cfg` exactly."""
    eos = [i for i in (special["sep"], special["eos"]) if i is not None]
    common = {
        "architectures": [HF_ARCHITECTURES[cfg.family]],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.block_size,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
        "bos_token_id": special["sep"],
        "eos_token_id": eos if len(eos) != 1 else eos[0],
        "pad_token_id": special["pad"],
        "torch_dtype": "float32",
    }
    # transformers >= 5 reads rope_parameters; 4.x reads rope_theta / rotary_emb_base
    rope = {"rope_type": "default", "rope_theta": cfg.rope_base}
    if cfg.family != "neox":
        return {**common,
                "model_type": cfg.family,
                "num_key_value_heads": cfg.n_head,
                "head_dim": cfg.head_dim,
                "hidden_act": cfg.activation,  # gated: down(act(gate(x)) * up(x)); silu = SwiGLU
                "rms_norm_eps": cfg.norm_eps,
                "rope_theta": cfg.rope_base,
                "rope_parameters": rope,
                "attention_bias": False,
                "mlp_bias": False,
                **({"use_sliding_window": False, "sliding_window": None,
                    "layer_types": ["full_attention"] * cfg.n_layer} if cfg.family == "qwen3" else {})}
    return {
        **common,
        "model_type": "gpt_neox",
        "hidden_act": cfg.activation,  # gelu: the exact erf GELU, as ours
        "use_parallel_residual": False,  # x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))
        "rotary_pct": 1.0,  # RoPE on every head dim
        "rotary_emb_base": cfg.rope_base,
        # transformers >= 5 reads these; 4.x reads the two keys above
        "rope_parameters": {**rope, "partial_rotary_factor": 1.0},
        "layer_norm_eps": cfg.norm_eps,
        "attention_bias": True,  # biases of zeros when our model has bias=False
        "hidden_dropout": 0.0,
    }


def _special_tokens(tok, cfg) -> dict:
    """Ids and strings of the separator (BOS), end-of-text and padding tokens."""
    sep_id = cfg.sep_token_id if cfg.sep_token_id is not None else tok.token_to_id(DOC_SEPARATOR)
    ids = {"sep": sep_id, "eos": tok.token_to_id(EOT_TOKEN), "pad": tok.token_to_id(PAD_TOKEN)}
    names = {k: (tok.id_to_token(v) if v is not None else None) for k, v in ids.items()}
    return {**ids, "names": names}


def _tokenizer_json(tok, special: dict, lowercase: bool = False) -> str:
    """Our tokenizer.json, plus a post-processor that prepends the separator (BOS) when
    special tokens are requested; without them the ids are exactly ours. `lowercase` (a model
    trained on lowercased text): a Lowercase normalizer, so that the export lowercases its input
    as our generate stage does."""
    data = json.loads(tok.to_str())
    if lowercase and data.get("normalizer") is None:
        data["normalizer"] = {"type": "Lowercase"}
    sep_name, sep_id = special["names"]["sep"], special["sep"]
    existing = data.get("post_processor")
    if sep_name is not None and (existing is None or existing.get("type") == "ByteLevel"):
        template = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": sep_name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": sep_name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": sep_name, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {sep_name: {"id": sep_name, "ids": [sep_id], "tokens": [sep_name]}},
        }
        # a ByteLevel post-processor only adjusts offsets: keep it, then add the separator
        data["post_processor"] = template if existing is None else \
            {"type": "Sequence", "processors": [existing, template]}
    return json.dumps(data, ensure_ascii=False, indent=None)


def _tokenizer_config(special: dict, block_size: int) -> dict:
    names = special["names"]
    added = {str(i): {"content": t.content, "lstrip": t.lstrip, "rstrip": t.rstrip,
                      "normalized": t.normalized, "single_word": t.single_word, "special": t.special}
             for i, t in special["added"].items()}
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": names["sep"],
        "eos_token": names["eos"] or names["sep"],
        "pad_token": names["pad"],
        "model_max_length": block_size,
        "padding_side": "left",  # decoder-only generation pads on the left
        "clean_up_tokenization_spaces": False,  # decode(encode(text)) == text
        "add_prefix_space": False,
        "added_tokens_decoder": added,
    }


def _model_card(cfg, meta: dict, n_params: int) -> str:
    tying = "tied" if cfg.tie_embeddings else "untied"
    return f"""---
library_name: transformers
pipeline_tag: text-generation
---
# {_MARKER}

A small GPT-style language model trained with mini-llm, exported as
{HF_ARCHITECTURES[cfg.family]} (mini-llm family `{cfg.family}`; rotary embeddings, {tying} embeddings).

- parameters: {n_params:,}
- layers {cfg.n_layer}, heads {cfg.n_head}, width {cfg.n_embd}, context {cfg.block_size} tokens,
  vocabulary {cfg.vocab_size}
- training step: {meta.get("step", "?")}

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("path/to/this/folder")
model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")
ids = tok("Había una vez", return_tensors="pt").input_ids  # starts with the document separator
out = model.generate(ids, max_new_tokens=50, do_sample=True, top_p=0.9)
print(tok.decode(out[0], skip_special_tokens=True))
```

Each document in training started with the separator token, which the tokenizer adds
(`add_special_tokens=True`). transformers does not apply mini-llm's document-aware attention,
so give one document per sequence.
"""


# What an export folder holds; a folder with anything else in it is never replaced.
EXPORT_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "README.md", "mini_llm.json")
MINI_LLM_FILE = "mini_llm.json"   # our own record: model config, training tokenizer hash, step (init-from)
MINI_LLM_FORMAT = 1


def _check_replaceable(out: Path) -> None:
    """An existing --out may be replaced only when it is empty or an earlier export with nothing
    added: UserError naming what would be lost otherwise."""
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    card = out / "README.md"
    try:
        earlier = (out / "config.json").is_file() and _MARKER in card.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        earlier = False
    if not earlier:
        raise UserError(f"--out {out} is a folder with other files in it; pass a new or empty folder "
                        f"(an earlier export there would be replaced)")
    added = [name for name in entries if name not in EXPORT_FILES]
    if added:
        raise UserError(f"--out {out} is an earlier export with files added to it ({', '.join(added[:5])}"
                        f"{', ...' if len(added) > 5 else ''}); replacing it would delete them: move them "
                        f"out, or pass another --out")


def export_hf(ckpt_path, tokenizer, out_dir) -> Path:
    """Write the Hugging Face folder `out_dir` for checkpoint `ckpt_path` and `tokenizer` (a
    TokenizerIdentity or the path of the training tokenizer.json); return its path.

    Written into a temporary sibling folder and renamed into place, so an interrupted export
    never leaves a half-written folder where a good one was. An existing `out_dir` is replaced
    only if it is empty or an earlier export.
    """
    from safetensors.torch import save_file

    from checkpoint import load_model
    from tokenizer import as_identity

    ckpt_path = require_file(ckpt_path, "checkpoint")
    identity = as_identity(tokenizer)
    tokenizer_path = identity.path
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; pass a folder path")
    if out.is_dir():
        _check_replaceable(out)
    for p in (ckpt_path, tokenizer_path):
        if out.resolve() in p.resolve().parents:
            raise UserError(f"--out {out} contains the input {p}; choose another output folder")

    model, meta = load_model(ckpt_path, "cpu", tokenizer=identity)
    cfg = model.cfg
    tok = identity.tokenizer
    special = _special_tokens(tok, cfg)
    if special["sep"] is None:
        raise UserError(f"tokenizer {tokenizer_path} has no {DOC_SEPARATOR} token; "
                        f"pass the tokenizer.json written by init-tokenizer")
    special["added"] = dict(sorted(tok.get_added_tokens_decoder().items()))  # id -> AddedToken
    names = special["names"]
    special_map = {"bos_token": names["sep"], "eos_token": names["eos"] or names["sep"]}
    if names["pad"] is not None:
        special_map["pad_token"] = names["pad"]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        def write_json(name, obj):
            (tmp / name).write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

        config = hf_config(cfg, special)
        write_json("config.json", config)
        gen = {"bos_token_id": special["sep"], "eos_token_id": config["eos_token_id"],
               "pad_token_id": special["pad"]}
        write_json("generation_config.json", gen)
        save_file(hf_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "tokenizer.json").write_text(_tokenizer_json(tok, special, identity.lowercase), encoding="utf-8")
        write_json("tokenizer_config.json", _tokenizer_config(special, cfg.block_size))
        write_json("special_tokens_map.json", special_map)
        (tmp / "README.md").write_text(_model_card(cfg, meta, model.num_parameters()), encoding="utf-8")
        write_json(MINI_LLM_FILE, {"format": MINI_LLM_FORMAT, "model_config": cfg.to_dict(),
                                   "tokenizer_hash": meta.get("tokenizer_hash"), "vocab_size": cfg.vocab_size,
                                   "step": meta.get("step"), "checkpoint_sha256": file_sha256(ckpt_path)})
        for f in tmp.iterdir():
            os.chmod(f, 0o644)  # safetensors writes 0600; an export is meant to be shared
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        _swap_into_place(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_write_failure(e):
            raise UserError(f"cannot write the export {out}: {write_failure_reason(e)}; an earlier export there "
                            f"(if any) is intact") from None
        raise
    log.info(f"exported {model.num_parameters():,} parameters as {HF_ARCHITECTURES[cfg.family]} to {out}")
    return out


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder `tmp` onto `out`; an old `out` is removed only afterwards."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.rmdir(old)
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)  # put the previous export back
        raise
    shutil.rmtree(old, ignore_errors=True)


# =========================================================================== reading an export back

def is_export_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def import_hf(folder) -> tuple:
    """Read an export folder back: (ModelConfig, our state dict, record dict) where the record is
    mini_llm.json (model config, training tokenizer hash, step) or, for a folder written before
    it existed, {} with the config derived from config.json. The exact inverse of hf_state_dict:
    the weights equal the checkpoint's they came from. UserError for anything else."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from model import ModelConfig

    folder = Path(folder)
    hint = "pass a folder written by `main.py export` or a ckpt_best.pt / ckpt_last.pt"
    record = {}
    try:
        if (folder / MINI_LLM_FILE).is_file():
            record = json.loads((folder / MINI_LLM_FILE).read_text(encoding="utf-8"))
            cfg = ModelConfig.from_dict(record["model_config"])
        else:
            cfg = _config_from_hf(json.loads((folder / "config.json").read_text(encoding="utf-8")))
        weights = load_file(str(folder / "model.safetensors"))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise UserError(f"{folder} is not a readable mini-llm export ({type(e).__name__}: {str(e)[:120]}); {hint}")
    try:
        state = _neox_from_hf(cfg, weights) if cfg.family == "neox" else _llama_from_hf(cfg, weights)
        state["lm_head.weight"] = state["tok_emb.weight"] if cfg.tie_embeddings else weights[HF_HEADS[cfg.family]]
    except KeyError as e:
        raise UserError(f"{folder}: model.safetensors lacks the weight {e} that a {cfg.family} export holds; {hint}")
    return cfg, state, record


def _config_from_hf(hf: dict):
    """ModelConfig from an export's config.json (folders written before mini_llm.json)."""
    from model import ModelConfig

    family = {"gpt_neox": "neox", "llama": "llama", "qwen3": "qwen3"}.get(hf.get("model_type"))
    if family is None:
        raise ValueError(f"model_type {hf.get('model_type')!r} is not one mini-llm exports")
    eps = hf["layer_norm_eps"] if family == "neox" else hf["rms_norm_eps"]
    base = hf.get("rotary_emb_base") if family == "neox" else hf.get("rope_theta")
    return ModelConfig(vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"],
                       n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], n_embd=hf["hidden_size"],
                       family=family, intermediate_size=hf["intermediate_size"], norm_eps=eps,
                       rope_base=base or hf.get("rope_parameters", {}).get("rope_theta", 10000.0),
                       sep_token_id=hf.get("bos_token_id", 0), activation=hf.get("hidden_act"),
                       tie_embeddings=hf.get("tie_word_embeddings", True))


def _llama_from_hf(cfg, w: dict) -> dict:
    out = {"tok_emb.weight": w["model.embed_tokens.weight"], "ln_f.weight": w["model.norm.weight"]}
    for i in range(cfg.n_layer):
        ours, hf = f"blocks.{i}.", f"model.layers.{i}."
        out.update({
            ours + "ln_1.weight": w[hf + "input_layernorm.weight"],
            ours + "attn.qkv.weight": torch.cat([w[hf + f"self_attn.{n}_proj.weight"] for n in "qkv"]),
            ours + "attn.proj.weight": w[hf + "self_attn.o_proj.weight"],
            ours + "ln_2.weight": w[hf + "post_attention_layernorm.weight"],
            ours + "mlp.fc.weight": torch.cat([w[hf + "mlp.gate_proj.weight"], w[hf + "mlp.up_proj.weight"]]),
            ours + "mlp.proj.weight": w[hf + "mlp.down_proj.weight"],
        })
        if cfg.family == "qwen3":
            out[ours + "attn.q_norm.weight"] = w[hf + "self_attn.q_norm.weight"]
            out[ours + "attn.k_norm.weight"] = w[hf + "self_attn.k_norm.weight"]
    return out


def _neox_unfuse(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """The inverse of _neox_qkv: GPT-NeoX per-head [q_h k_h v_h] rows -> our [q | k | v]."""
    three_c, rest = t.shape[0], t.shape[1:]
    D = three_c // 3 // n_head
    return t.reshape(n_head, 3, D, *rest).transpose(0, 1).reshape(three_c, *rest).contiguous()


def _neox_from_hf(cfg, w: dict) -> dict:
    """Our neox weights; without biases (`bias=False`) the zero biases of the export are dropped."""
    pairs = {"ln_1": "input_layernorm", "attn.qkv": "attention.query_key_value", "attn.proj": "attention.dense",
             "ln_2": "post_attention_layernorm", "mlp.fc": "mlp.dense_h_to_4h", "mlp.proj": "mlp.dense_4h_to_h"}
    kinds = ("weight", "bias") if cfg.bias else ("weight",)
    out = {"tok_emb.weight": w["gpt_neox.embed_in.weight"]}
    for i in range(cfg.n_layer):
        for ours, hf in pairs.items():
            for kind in kinds:
                t = w[f"gpt_neox.layers.{i}.{hf}.{kind}"]
                out[f"blocks.{i}.{ours}.{kind}"] = _neox_unfuse(t, cfg.n_head) if ours == "attn.qkv" else t
    for kind in kinds:
        out[f"ln_f.{kind}"] = w[f"gpt_neox.final_layer_norm.{kind}"]
    return out
