"""A model trained on lowercased text (prepare-corpus without --preserve-case): its tokenizer is
recognised from its merges, and generate, evaluate, training samples and export meet it on its
own terms (prompts and stop strings lowercased, a warning for capitals in a test file, an
exported tokenizer that lowercases). Decomposed accents (not NFC) are checked alike for
every model."""
from __future__ import annotations

import json
import unicodedata

import pytest
import torch

import generation as G
import tokenizer as T
from common import file_sha256
from conftest import corpus_slice
from test_generation import train_tiny
from tokenizer import load_identity


def _docs(n_chars: int) -> list[str]:
    return [d.strip() for d in corpus_slice("wiki_es.txt", n_chars=n_chars).split("<|doc|>\n") if d.strip()]


def _write_corpus(path, docs) -> None:
    path.write_text("".join(f"{d}\n<|doc|>\n" for d in docs), encoding="utf-8")


@pytest.fixture(scope="module")
def lower_run(tmp_path_factory):
    """A tokenizer (512 ids) and a 2-layer model trained briefly, both on lowercased Spanish."""
    d = tmp_path_factory.mktemp("lower")
    docs = [x.lower() for x in _docs(120_000)]
    _write_corpus(d / "corpus.txt", docs)
    tok_path = d / "tokenizer.json"
    T.train_tokenizer([d / "corpus.txt"], vocab_size=512, out_path=tok_path, quiet=True)
    tok = T.load_tokenizer(tok_path)
    model, _ = train_tiny(tok, docs, 150)
    cfg = model.cfg
    ckpt = d / "ckpt_best.pt"
    torch.save({"model": model.state_dict(), "model_config": cfg.to_dict(), "step": 150,
                "meta": {"tokenizer_hash": file_sha256(tok_path), "vocab_size": cfg.vocab_size,
                         "corpus_hash": "0" * 64, "step": 150}}, ckpt)
    return {"dir": d, "tok": tok_path, "ckpt": ckpt, "model": model.eval(), "tokenizer": tok}


def test_trained_on_lowercase_tells_a_lowercased_corpus_from_a_cased_one(tmp_path):
    docs = _docs(60_000)
    for name, texts in (("cased", docs), ("lower", [x.lower() for x in docs])):
        _write_corpus(tmp_path / f"{name}.txt", texts)
        for vocab in (512, 2000):
            out = tmp_path / f"{name}{vocab}.json"
            T.train_tokenizer([tmp_path / f"{name}.txt"], vocab_size=vocab, out_path=out, quiet=True)
            assert T.trained_on_lowercase(T.load_tokenizer(out)) is (name == "lower"), (name, vocab)
            assert load_identity(out).lowercase is (name == "lower")
    # too few merges to tell: never taken for lowercase
    few = tmp_path / "few.json"
    T.train_tokenizer([tmp_path / "lower.txt"], vocab_size=T.MIN_VOCAB_SIZE + T.LOWERCASE_MIN_MERGES - 1,
                      out_path=few, quiet=True)
    assert not T.trained_on_lowercase(T.load_tokenizer(few))


def test_generate_texts_lowercases_prompts_and_stop_strings_for_such_a_model(lower_run):
    model, tok = lower_run["model"], lower_run["tokenizer"]
    cfg = G.SamplingConfig(temperature=0.8)

    def gen(prompt, **kw):
        return G.generate_texts(model, tok, [prompt], max_new_tokens=24, cfg=cfg,
                                generator=torch.Generator().manual_seed(1), **kw)[0]

    cased, lower = "La Historia de España", "la historia de españa"
    want = gen(lower)
    got = gen(cased, lowercase=True)
    assert got.prompt == cased and got.text == want.text and got.token_ids == want.token_ids
    # without it the capitals reach the model as byte pieces, and it continues otherwise
    assert gen(cased).token_ids != want.token_ids
    # a stop string typed in capitals ends the text where its lowercase form appears
    word = next(w for w in want.text.split() if len(w) >= 2 and w == w.lower() != w.upper())
    stopped = gen(cased, lowercase=True, stop_strings=[word.upper()])
    assert stopped.finish_reason == "stop" and stopped.text == want.text[:want.text.index(word)]
    greedy = G.generate_texts(model, tok, [lower], max_new_tokens=24, cfg=G.SamplingConfig(temperature=0))[0]
    assert G.complete(model, tok, cased, max_new_tokens=24, lowercase=True) == greedy.text


def test_generate_cli_lowercases_the_prompt_and_says_so(lower_run, cli):
    args = ("generate", "--tokenizer", lower_run["tok"], "--ckpt", lower_run["ckpt"], "--device", "cpu",
            "--max-tokens", 20, "--temperature", 0, "--precision", "fp32")
    cased = cli(*args, "--prompt", "Durante el Siglo XIX")
    lower = cli(*args, "--prompt", "durante el siglo xix")
    assert cased.returncode == 0 and lower.returncode == 0, (cased.stderr, lower.stderr)
    assert cased.stdout == "Durante el Siglo XIX" + lower.stdout[len("durante el siglo xix"):]
    assert "lowercased text" in cased.stderr and "lowercased" not in lower.stderr


def test_evaluate_warns_of_capitals_and_decomposed_accents_the_model_never_saw(lower_run, cli, tmp_path):
    docs = _docs(140_000)[-6:]                      # documents past the training slice
    texts = {"cased": docs, "lower": [x.lower() for x in docs],
             "decomposed": [unicodedata.normalize("NFD", x.lower()) for x in docs]}
    results = {}
    for name, text in texts.items():
        _write_corpus(tmp_path / f"{name}.txt", text)
        proc = cli("evaluate", "--tokenizer", lower_run["tok"], "--ckpt", lower_run["ckpt"], "--device", "cpu",
                   "--test-file", tmp_path / f"{name}.txt", "--json")
        assert proc.returncode == 0, proc.stderr
        warned = [l for l in proc.stderr.splitlines() if l.startswith("warning:")]
        assert len(warned) == (name != "lower"), proc.stderr
        assert ("capital letters" in proc.stderr) == (name == "cased")
        assert ("decomposed accents" in proc.stderr) == (name == "decomposed")
        results[name] = json.loads(proc.stdout)["perplexity"]
    assert min(results["cased"], results["decomposed"]) > 1.2 * results["lower"], results


def test_export_of_such_a_model_lowercases_its_input(lower_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    import export
    out = export.export_hf(lower_run["ckpt"], lower_run["tok"], tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "Los Reyes Católicos y la Conquista de Granada"
    ours = lower_run["tokenizer"].encode(text.lower(), add_special_tokens=False).ids
    assert hf_tok(text, add_special_tokens=False).input_ids == ours
    assert json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))["normalizer"] == {"type": "Lowercase"}
