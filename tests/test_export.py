"""export.py: the Hugging Face folder loads in transformers and computes exactly what our model does."""
from __future__ import annotations

import errno
import json
import shutil

import pytest
import torch

import export
import model as M
from common import UserError, file_sha256
from conftest import assert_user_error, corpus_slice

transformers = pytest.importorskip("transformers")  # test-only dependency (requirements-dev.txt)

SPECIALS = ["<|doc|>", "<|endoftext|>", "<|pad|>"]


@pytest.fixture(scope="module")
def spanish_docs():
    text = corpus_slice("wiki_es.txt", n_chars=120_000)
    return [d.strip() for d in text.split("<|doc|>\n") if d.strip()]


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory, spanish_docs):
    """A small byte-level BPE trained on real Spanish, built as init-tokenizer does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(spanish_docs[10:], trainer)  # the first documents are the test texts
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def _tokenizer(path):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(path))


# every family, llama with a non-default MLP width, qwen3 and neox also with ReLU squared and with
# an untied output head (written under each class's own head name)
FAMILY_SHAPES = {"neox": {}, "llama": {"intermediate_size": 96}, "qwen3": {},
                 "qwen3-relu2": {"activation": "relu2"}, "neox-relu2": {"activation": "relu2"},
                 "qwen3-untied": {"tie_embeddings": False}, "neox-untied": {"tie_embeddings": False}}


@pytest.fixture(scope="module", params=list(FAMILY_SHAPES))
def variant(request):
    return request.param


@pytest.fixture(scope="module")
def family(variant):
    return variant.split("-")[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_path, family, variant):
    """A tiny model of `family` whose every weight (norm scales, QK-norm and biases included) is
    random and far from its init, so that any mis-mapped tensor shows up in the logits; saved as
    training does."""
    vocab = _tokenizer(tokenizer_path).get_vocab_size()
    cfg = M.ModelConfig(vocab_size=vocab, block_size=96, n_layer=2, n_head=4, n_embd=64, rope_base=500.0,
                        family=family, **FAMILY_SHAPES[variant])
    torch.manual_seed(0)
    model = M.GPT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 1:  # norm scales
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    model.eval()
    path = tmp_path_factory.mktemp("run") / "ckpt_best.pt"
    torch.save({"model": model.state_dict(), "model_config": cfg.to_dict(),
                "meta": {"tokenizer_hash": file_sha256(tokenizer_path), "vocab_size": vocab,
                         "corpus_hash": "x", "step": 42},
                "step": 42, "epoch": 0}, path)
    return path, model


@pytest.fixture(scope="module")
def exported(tmp_path_factory, checkpoint, tokenizer_path):
    out = tmp_path_factory.mktemp("hf") / "export"
    export.export_hf(checkpoint[0], tokenizer_path, out)
    return out


@pytest.fixture(scope="module")
def hf_model(exported):
    m = transformers.AutoModelForCausalLM.from_pretrained(exported)
    return m.eval()


def test_folder_contents_and_config(exported, checkpoint, family, variant):
    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", "special_tokens_map.json"} <= names
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    cfg = json.loads((exported / "config.json").read_text(encoding="utf-8"))
    assert cfg["tie_word_embeddings"] is checkpoint[1].cfg.tie_embeddings is not variant.endswith("untied")
    assert cfg["intermediate_size"] == checkpoint[1].cfg.intermediate_size
    activation = FAMILY_SHAPES[variant].get("activation", "gelu" if family == "neox" else "silu")
    assert cfg["hidden_act"] == activation == checkpoint[1].cfg.activation
    if family == "neox":
        assert cfg["model_type"] == "gpt_neox" and cfg["use_parallel_residual"] is False
        assert cfg["rotary_pct"] == 1.0
    else:
        assert cfg["model_type"] == family and cfg["attention_bias"] is False
    assert cfg["bos_token_id"] == 0 and cfg["pad_token_id"] == 2 and cfg["eos_token_id"] == [0, 1]


def test_transformers_loads_its_family_class_with_our_tying(hf_model, checkpoint, family):
    assert type(hf_model).__name__ == {"neox": "GPTNeoXForCausalLM", "llama": "LlamaForCausalLM",
                                       "qwen3": "Qwen3ForCausalLM"}[family]
    head, embedding = hf_model.get_output_embeddings().weight, hf_model.get_input_embeddings().weight
    ours = checkpoint[1]
    assert (head.data_ptr() == embedding.data_ptr()) == ours.cfg.tie_embeddings
    assert torch.equal(head, ours.lm_head.weight[:ours.cfg.vocab_size])
    assert sum(p.numel() for p in hf_model.parameters()) == checkpoint[1].num_parameters()


def test_logits_equal_ours_on_spanish_text(hf_model, checkpoint, tokenizer_path, spanish_docs):
    ours = checkpoint[1]
    tok = _tokenizer(tokenizer_path)
    rows = [[0] + tok.encode(doc).ids[:95] for doc in spanish_docs[:3]]
    x = torch.tensor([r for r in rows if len(r) == 96])
    assert len(x) >= 2
    with torch.no_grad():
        want, _ = ours(x)
        got = hf_model(x).logits
    diff = (got - want).abs().max().item()
    print(f"max |logit diff| = {diff:.3g} (logit scale {want.abs().max().item():.3g})")
    assert diff < 1e-4


def _greedy(model, ids, n, eos):
    """Our own greedy loop: full forward each step, argmax of the last position."""
    ids = list(ids)
    for _ in range(n):
        with torch.no_grad():
            logits, _ = model(torch.tensor([ids]))
        nxt = int(logits[0, -1].argmax())
        ids.append(nxt)
        if nxt in eos:
            break
    return ids


def test_greedy_generate_gives_our_tokens(hf_model, checkpoint, tokenizer_path, spanish_docs):
    tok = _tokenizer(tokenizer_path)
    prompt = [0] + tok.encode(spanish_docs[1][:80]).ids
    n = 96 - len(prompt)
    want = _greedy(checkpoint[1], prompt, n, eos={0, 1})
    with torch.no_grad():
        got = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                max_new_tokens=n, do_sample=False)
    assert got[0].tolist() == want
    assert len(want) > len(prompt) + 3  # really generated something


def test_auto_tokenizer_matches_ours(exported, tokenizer_path, spanish_docs):
    hf_tok = transformers.AutoTokenizer.from_pretrained(exported)
    tok = _tokenizer(tokenizer_path)
    for text in spanish_docs[:4] + ["¿Qué año es? ¡Mañana, señor Muñoz!  Dos espacios\ty tab.\n"]:
        ids = tok.encode(text).ids
        assert hf_tok(text, add_special_tokens=False).input_ids == ids
        assert hf_tok(text).input_ids == [0] + ids  # the separator is our BOS
        assert hf_tok.decode(ids) == text
    assert (hf_tok.bos_token, hf_tok.eos_token, hf_tok.pad_token) == tuple(SPECIALS)
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (0, 1, 2)


def test_reading_the_export_back_gives_the_checkpoint_weights(exported, checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file
    ours = checkpoint[1]
    cfg, state, record = export.import_hf(exported)
    assert cfg == ours.cfg and record["step"] == 42
    want = ours.state_dict()
    assert set(state) == set(want) and all(torch.equal(state[k], want[k]) for k in want)
    # an untied head travels as a matrix of its own; a folder that lacks it is refused
    weights = load_file(str(exported / "model.safetensors"))
    heads = set(weights) & set(export.HF_HEADS.values())
    assert bool(heads) != ours.cfg.tie_embeddings
    if heads:
        damaged = tmp_path / "no-head"
        shutil.copytree(exported, damaged)
        save_file({k: v for k, v in weights.items() if k not in heads}, str(damaged / "model.safetensors"))
        with pytest.raises(UserError, match="lacks the weight"):
            export.import_hf(damaged)


def test_qkv_permutation_is_per_head_interleaved():
    H, D, C = 3, 2, 6
    w = torch.arange(3 * C).float()  # rows q0 q0 q1 q1 q2 q2 k0 k0 ... v2 v2
    got = export._neox_qkv(w, H).tolist()
    q, k, v = w[:C].tolist(), w[C:2 * C].tolist(), w[2 * C:].tolist()
    want = []
    for h in range(H):
        want += q[h * D:(h + 1) * D] + k[h * D:(h + 1) * D] + v[h * D:(h + 1) * D]
    assert got == want


def test_model_without_biases_exports_zero_biases(tmp_path, tokenizer_path):
    vocab = _tokenizer(tokenizer_path).get_vocab_size()
    cfg = M.ModelConfig(vocab_size=vocab, block_size=32, n_layer=1, n_head=2, n_embd=32, bias=False)
    torch.manual_seed(1)
    ours = M.GPT(cfg).eval()
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": ours.state_dict(), "model_config": cfg.to_dict(),
                "meta": {"tokenizer_hash": file_sha256(tokenizer_path), "vocab_size": vocab}}, ckpt)
    out = export.export_hf(ckpt, tokenizer_path, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.randint(3, vocab, (2, 20))
    with torch.no_grad():
        assert (hf(x).logits - ours(x)[0]).abs().max().item() < 1e-4


def test_reexport_replaces_an_earlier_export_only(tmp_path, checkpoint, tokenizer_path):
    out = tmp_path / "hf"
    export.export_hf(checkpoint[0], tokenizer_path, out)
    before = (out / "model.safetensors").read_bytes()
    export.export_hf(checkpoint[0], tokenizer_path, out)  # an earlier export is replaced
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(UserError, match="other files"):
        export.export_hf(checkpoint[0], tokenizer_path, precious)
    assert (precious / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_failed_export_leaves_the_previous_one(tmp_path, checkpoint, tokenizer_path, monkeypatch):
    out = tmp_path / "hf"
    export.export_hf(checkpoint[0], tokenizer_path, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(UserError, match="cannot write the export .*the disk is full.*earlier export there .* is intact"):
        export.export_hf(checkpoint[0], tokenizer_path, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_cli_export(cli, tmp_path, checkpoint, tokenizer_path):
    out = tmp_path / "hf"
    proc = cli("export", "--ckpt", checkpoint[0], "--tokenizer", tokenizer_path, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.safetensors").is_file() and "exported" in proc.stderr
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.randint(3, 600, (1, 30))
    with torch.no_grad():
        assert (hf(x).logits - checkpoint[1](x)[0]).abs().max().item() < 1e-4


def test_cli_export_bad_input(cli, tmp_path, checkpoint, tokenizer_path):
    assert_user_error(cli("export", "--ckpt", tmp_path / "nope.pt", "--tokenizer", tokenizer_path,
                          "--out", tmp_path / "a"))
    other = tmp_path / "other.json"
    other.write_text(tokenizer_path.read_text(encoding="utf-8").replace("<|pad|>", "<|PAD|>"), encoding="utf-8")
    assert_user_error(cli("export", "--ckpt", checkpoint[0], "--tokenizer", other, "--out", tmp_path / "b"))
    afile = tmp_path / "file.txt"
    afile.write_text("x", encoding="utf-8")
    assert_user_error(cli("export", "--ckpt", checkpoint[0], "--tokenizer", tokenizer_path, "--out", afile))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
