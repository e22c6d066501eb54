"""generation.py: pure sampling, KV-cached decoding against a full-recompute reference, sliding
context, batched == single, UTF-8-safe streaming and stop strings, on a real Spanish tokenizer
and a tiny briefly trained model."""
from __future__ import annotations

import functools

import pytest
import torch

import generation as G
import sampling as S
from conftest import corpus_slice
from model import GPT, ModelConfig

VOCAB = 300  # 256 bytes + 3 specials + a few merges: accented letters stay split across tokens
BLOCK = 64


# --------------------------------------------------------------------------- shared builders
# (also imported by test_generate_cli.py; cached so the suite trains one model)

@functools.lru_cache(maxsize=None)
def spanish_docs() -> tuple[str, ...]:
    text = corpus_slice("wiki_es.txt", n_chars=120_000)
    return tuple(d.strip() for d in text.split("<|doc|>\n") if d.strip())


@functools.lru_cache(maxsize=None)
def tokenizer_json() -> str:
    """A byte-level BPE tokenizer.json (INTERFACES spec) trained on a Spanish slice."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, show_progress=False,
                                  special_tokens=["<|doc|>", "<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(spanish_docs(), trainer=trainer)
    return tok.to_str()


def load_tok():
    from tokenizers import Tokenizer
    return Tokenizer.from_str(tokenizer_json())


def train_tiny(tok, docs, steps: int) -> tuple[GPT, float]:
    """A 2-layer, 32-wide model trained for `steps` steps on `docs` (each after the separator, id
    0) with tokenizer `tok`: (model, last training loss)."""
    ids = []
    for d in docs:
        ids += [0] + tok.encode(d, add_special_tokens=False).ids
    data = torch.tensor(ids, dtype=torch.long)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, n_embd=32, block_size=BLOCK)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - BLOCK - 1, (16,), generator=g)
        x = torch.stack([data[s:s + BLOCK] for s in starts])
        y = torch.stack([data[s + 1:s + BLOCK + 1] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model, loss.item()


@functools.lru_cache(maxsize=None)
def trained_state() -> tuple[dict, dict]:
    """(state_dict, model_config dict) of a 2-layer, 32-wide model trained briefly on Spanish."""
    model, loss = train_tiny(load_tok(), spanish_docs(), 200)
    assert loss < 3.9, loss  # past the unigram plateau (~4.1; uniform: ln 300 = 5.7)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, model.cfg.to_dict()


def trained_model() -> GPT:
    state, cfg = trained_state()
    model = GPT(ModelConfig.from_dict(cfg))
    model.load_state_dict(state)
    return model.eval()


def random_model(seed=0, block=BLOCK) -> GPT:
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32, block_size=block))
    with torch.no_grad():  # larger weights than the default init: sharper, non-degenerate logits
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return model.eval()


@torch.no_grad()
def uncached_greedy(model, prompt, n, stop_ids=(0, 1)):
    """Reference decoding: recompute the whole context every step (same sliding rule)."""
    block = model.cfg.block_size
    keep = max(1, int(block * G.SLIDE_KEEP_FRACTION))
    tokens = list(prompt)
    start = max(0, len(tokens) - block)
    out = []
    for _ in range(n):
        if len(tokens) - start > block:
            start = len(tokens) - keep
        logits, _ = model(torch.tensor([tokens[start:]]))
        t = int(logits[0, -1].argmax())
        if t in stop_ids:
            break
        out.append(t)
        tokens.append(t)
    return out


GREEDY = G.SamplingConfig(temperature=0.0)


# --------------------------------------------------------------------------- configuration

@pytest.mark.parametrize("bad", [
    dict(temperature=-0.1), dict(temperature=float("nan")), dict(top_k=-1), dict(top_k=2.5),
    dict(top_p=0.0), dict(top_p=1.01), dict(min_p=-0.1), dict(min_p=1.0),
    dict(repetition_penalty=0.0), dict(repetition_penalty=-1.0), dict(no_repeat_ngram=-2),
])
def test_sampling_config_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        G.SamplingConfig(**bad)


def test_sampling_config_collects_all_problems():
    with pytest.raises(ValueError) as e:
        G.SamplingConfig(temperature=-1, top_p=2.0)
    assert "temperature" in str(e.value) and "top_p" in str(e.value)
    G.SamplingConfig(temperature=0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.3, no_repeat_ngram=3)


# --------------------------------------------------------------------------- pure sampling

def support(logits, **kw):
    return set(torch.isfinite(S.filter_logits(logits, **kw)[0]).nonzero().flatten().tolist())


def drawn(logits, n=4000, seed=0, **kw):
    """Tokens drawn in n independent draws (one batched call)."""
    g = torch.Generator().manual_seed(seed)
    ids = S.sample(logits.expand(n, -1), generator=g, **kw)
    return ids


def test_temperature_zero_is_argmax_with_lowest_id_on_ties():
    logits = torch.tensor([[0.1, 2.0, -1.0, 2.0], [5.0, 1.0, 1.0, 0.0]])
    assert S.sample(logits, temperature=0.0, top_k=1, top_p=0.5).tolist() == [1, 0]
    assert support(logits[:1], temperature=0.0) == {1}


def test_sample_never_modifies_callers_logits():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    before = logits.clone()
    for kw in [dict(temperature=0.7, top_k=5, top_p=0.8, min_p=0.05), dict(temperature=1.3, top_k=0, top_p=0.6),
               dict(temperature=0.9, top_k=0, top_p=1.0, min_p=0.2), dict(temperature=0.0)]:
        S.sample(logits, generator=torch.Generator().manual_seed(1), **kw)
        S.filter_logits(logits, **{k: v for k, v in kw.items()})
    S.apply_repetition_penalty(logits, torch.tensor([[1, 2], [3, 3], [0, 49]]), 1.5)
    assert torch.equal(logits, before)


def test_top_k_keeps_exactly_the_k_largest():
    torch.manual_seed(1)
    logits = torch.randn(1, 40)
    want = set(torch.sort(logits[0], descending=True).indices[:7].tolist())
    assert support(logits, top_k=7) == want
    assert set(drawn(logits, temperature=2.0, top_k=7).tolist()) == want  # every kept token is drawn


def test_top_k_ties_at_the_cut_keep_exactly_k_lowest_ids():
    # values: one clear winner, then four tokens tied for the 2nd place; top_k=3 keeps 2 of the 4
    logits = torch.tensor([[0.0, 1.0, 3.0, 1.0, -2.0, 1.0, 1.0, 0.5]])
    assert support(logits, top_k=3) == {2, 1, 3}
    got = drawn(logits, n=3000, temperature=1.0, top_k=3)
    assert set(got.tolist()) == {1, 2, 3}
    # batched rows with different tie patterns, and the candidates' order (for top_p): by id
    rows = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 2.0, 2.0]])
    assert [set(torch.isfinite(r).nonzero().flatten().tolist())
            for r in S.filter_logits(rows, top_k=2)] == [{0, 1}, {0, 2}]
    # equal probabilities: top_p keeps the first in id order among the tied ones
    assert support(rows[:1], top_k=3, top_p=0.3) == {0}


def test_top_k_larger_than_vocab_is_a_no_op():
    torch.manual_seed(2)
    logits = torch.randn(2, 10)
    assert torch.equal(S.filter_logits(logits, top_k=1000), logits)
    ids = S.sample(logits, temperature=1.0, top_k=1000, generator=torch.Generator().manual_seed(0))
    assert ids.shape == (2,) and ids.dtype == torch.long


def nucleus_reference(probs, p):
    """The smallest set of most likely tokens whose mass reaches p."""
    order = sorted(range(len(probs)), key=lambda i: (-probs[i], i))
    kept, mass = set(), 0.0
    for i in order:
        kept.add(i)
        mass += probs[i]
        if mass >= p:
            break
    return kept


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    probs = [0.5, 0.05, 0.3, 0.15]
    logits = torch.tensor([probs]).log()
    assert support(logits, top_p=0.45) == {0}
    assert support(logits, top_p=0.51) == {0, 2}
    assert support(logits, top_p=0.85) == {0, 2, 3}
    assert support(logits, top_p=0.99) == {0, 1, 2, 3}
    assert set(drawn(logits, temperature=1.0, top_p=0.85).tolist()) == {0, 2, 3}
    torch.manual_seed(3)
    for _ in range(20):
        row = torch.randn(1, 30) * 2
        p = float(torch.rand(()) * 0.9 + 0.05)
        assert support(row, top_p=p) == nucleus_reference(torch.softmax(row[0], -1).tolist(), p)
        # top_p applies to the top-k survivors (renormalised), at the given temperature
        k_logits = S.filter_logits(row, top_k=10)
        want = nucleus_reference(torch.softmax(k_logits[0] / 0.7, -1).tolist(), p)
        assert support(row, temperature=0.7, top_k=10, top_p=p) == want


@pytest.mark.parametrize("prefix", [3, 40])
def test_top_p_alone_prefix_path_matches_the_full_sort(prefix, monkeypatch):
    """top_p without top_k first looks at the NUCLEUS_PREFIX most likely tokens; exact anyway,
    ties across the prefix boundary included (integer logits: many ties)."""
    monkeypatch.setattr(S, "NUCLEUS_PREFIX", prefix)
    g = torch.Generator().manual_seed(6)
    for _ in range(40):
        row = torch.randint(-3, 4, (1, 60), generator=g).float() * 1.5
        row[0, :5] += 6 * torch.rand(5, generator=g)  # sometimes peaked (prefix holds), sometimes flat
        p = float(torch.rand((), generator=g) * 0.9 + 0.05)
        want = nucleus_reference(torch.softmax(row[0].double(), -1).tolist(), p)
        assert support(row, top_p=p) == want
    assert set(drawn(row, temperature=1.0, top_p=p).tolist()) == want


def test_min_p_drops_tokens_below_a_fraction_of_the_top():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert support(logits, min_p=0.2) == {0, 1, 2}   # threshold 0.1
    assert support(logits, min_p=0.7) == {0}         # threshold 0.35
    assert support(logits, temperature=2.0, min_p=0.5) == {0, 1, 2}  # flatter: sqrt ratios
    assert set(drawn(logits, temperature=1.0, min_p=0.2).tolist()) == {0, 1, 2}


def test_sample_frequencies_follow_the_renormalised_distribution():
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    ids = drawn(probs.log()[None], n=20000, seed=5, temperature=1.0, top_k=3)
    freq = torch.bincount(ids, minlength=4).float() / len(ids)
    want = torch.tensor([4 / 9, 3 / 9, 2 / 9, 0.0])
    assert torch.allclose(freq, want, atol=0.015), freq


def test_seeds_reproduce_and_differ():
    torch.manual_seed(4)
    logits = torch.randn(1, 100)
    kw = dict(temperature=1.0, top_k=50, top_p=0.95)
    a = drawn(logits, n=200, seed=7, **kw)
    assert torch.equal(a, drawn(logits, n=200, seed=7, **kw))
    assert not torch.equal(a, drawn(logits, n=200, seed=8, **kw))


def test_repetition_penalty_arithmetic():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5, 0.0]])
    out = S.apply_repetition_penalty(logits, torch.tensor([[0, 1, 1, 4]]), 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, 0.5, 0.0]]
    mask = torch.tensor([[True, True, False, False, True]])
    assert torch.equal(S.apply_repetition_penalty(logits, mask, 2.0), out)  # (B, V) mask form
    assert S.apply_repetition_penalty(logits, torch.tensor([[0]]), 1.0) is logits
    assert logits.tolist() == [[2.0, -2.0, 1.0, 0.5, 0.0]]


def test_banned_ngram_tokens_reference():
    assert S.banned_ngram_tokens([5, 6, 7, 5, 6], 3) == {7}
    assert S.banned_ngram_tokens([5, 6, 7, 5, 9], 3) == set()
    assert S.banned_ngram_tokens([1, 2, 1, 3, 1], 2) == {2, 3}
    assert S.banned_ngram_tokens([4, 4, 2], 1) == {2, 4}


# --------------------------------------------------------------------------- KV-cached decoding

@pytest.mark.parametrize("which", ["random", "trained"])
def test_kv_cache_greedy_equals_full_recompute_over_50_tokens(which):
    model = random_model() if which == "random" else trained_model()
    tok = load_tok()
    prompt = G.encode_prompt(tok, "La fotosíntesis es un proceso")
    want = uncached_greedy(model, prompt, 50, stop_ids=())
    got = list(G.generate_tokens(model, prompt, 50, GREEDY, stop_ids=()))
    assert len(want) == 50 and got == want


def test_context_slides_instead_of_crashing():
    model = random_model(seed=1, block=32)
    prompt = [0] + list(range(40, 60))  # 21 tokens; 21 + 60 > 32: slides twice
    want = uncached_greedy(model, prompt, 60, stop_ids=())
    assert list(G.generate_tokens(model, prompt, 60, GREEDY, stop_ids=())) == want
    long_prompt = [0] + list(range(3, 80))  # longer than the whole block: keeps the last 32
    want = uncached_greedy(model, long_prompt, 20, stop_ids=())
    assert list(G.generate_tokens(model, long_prompt, 20, GREEDY, stop_ids=())) == want


def test_no_repeat_ngram_and_repetition_penalty_in_generation():
    model = random_model(seed=2)
    prompt = [0, 10, 11, 12]
    plain = list(G.generate_tokens(model, prompt, 40, GREEDY, stop_ids=()))
    seq = prompt + plain
    assert len({tuple(seq[i:i + 2]) for i in range(len(seq) - 1)}) < len(seq) - 1  # it does repeat
    cfg = G.SamplingConfig(temperature=0.0, no_repeat_ngram=2)
    seq = prompt + list(G.generate_tokens(model, prompt, 40, cfg, stop_ids=()))
    bigrams = [tuple(seq[i:i + 2]) for i in range(len(seq) - 1)]
    assert len(bigrams) == len(set(bigrams))
    # the penalty changes greedy output; penalised tokens are those of the prompt and output
    cfg = G.SamplingConfig(temperature=0.0, repetition_penalty=50.0)
    penalised = list(G.generate_tokens(model, prompt, 15, cfg))  # stop ids 0, 1: never penalised
    assert penalised != plain[:15]
    assert len(set(penalised)) > len(set(plain[:15]))
    # reference: penalise the logits of the prompt tokens (not the SEP) and all output so far
    with torch.no_grad():
        seq, ref = list(prompt), []
        for _ in range(15):
            logits = model(torch.tensor([seq]))[0][:, -1]
            logits = S.apply_repetition_penalty(logits, torch.tensor([[t for t in seq if t != 0]]), 50.0)
            if int(logits.argmax()) in (0, 1):
                break
            ref.append(int(logits.argmax()))
            seq.append(ref[-1])
    assert penalised == ref


def test_batched_greedy_equals_each_prompt_alone():
    model, tok = trained_model(), load_tok()
    prompts = ["La", "El río Amazonas es el más caudaloso", "En 1492,", "Durante el Imperio Romano, la ciudad",
               "¿Qué es la fotosíntesis?"]
    alone = [G.generate_texts(model, tok, [p], max_new_tokens=30, cfg=GREEDY)[0] for p in prompts]
    for bs in (2, 5):
        batched = G.generate_texts(model, tok, prompts, max_new_tokens=30, cfg=GREEDY, batch_size=bs)
        assert [r.prompt for r in batched] == prompts
        assert [(r.text, r.tokens, r.finish_reason) for r in batched] == \
               [(r.text, r.tokens, r.finish_reason) for r in alone]


@pytest.mark.parametrize("prepared", [False, True])
def test_batched_token_ids_equal_single_including_sliding(prepared):
    """prepared: set up for a CPU (inference.prepare, fp32), so that both sides decode through
    model.TokenDecoder, the batch with its padding mask and per-row positions, again after each
    re-prefill of the slid context."""
    model = random_model(seed=3, block=32)
    if prepared:
        import inference
        from precision import Precision
        inference.prepare(model, Precision("fp32", "cpu", "fp32"), weight_only=True)
    prompts = [[0, 5], [0] + list(range(20, 45)), [0, 7, 8, 9, 10, 11]]
    alone = [list(G.generate_tokens(model, p, 45, GREEDY, stop_ids=())) for p in prompts]
    steps = list(G.generate_batch(model, prompts, 45, GREEDY, stop_ids=()))
    assert [[s[i] for s in steps] for i in range(3)] == alone


def test_stop_ids_end_a_row_and_batch_marks_it():
    model = random_model(seed=4)
    plain = list(G.generate_tokens(model, [0, 9], 20, GREEDY, stop_ids=()))
    stop = plain[5]
    first = plain.index(stop)
    assert list(G.generate_tokens(model, [0, 9], 20, GREEDY, stop_ids=(stop,))) == plain[:first]
    steps = list(G.generate_batch(model, [[0, 9]], 20, GREEDY, stop_ids=(stop,)))
    assert [s[0] for s in steps] == plain[:first + 1]  # the stop id is reported, then it ends


# --------------------------------------------------------------------------- text: UTF-8 and stop strings

def byte_token_ids(tok, data: bytes) -> list[int]:
    """One token per byte (the ByteLevel alphabet), so multi-byte characters are split."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    for b in range(256):  # GPT-2 bytes_to_unicode: the other bytes map to 256, 257, ...
        if b not in bs:
            bs.append(b)
            cs.append(256 + len(cs) - 188)
    byte_to_char = dict(zip(bs, map(chr, cs)))
    return [tok.token_to_id(byte_to_char[b]) for b in data]


def test_incremental_decoder_never_splits_characters():
    tok = load_tok()
    text = "Año 2024: ñandú, canción, 😀 y 東京."
    ids = byte_token_ids(tok, text.encode("utf-8"))
    assert tok.decode(ids) == text
    dec = G.IncrementalDecoder(tok)
    pieces = [dec.push(t) for t in ids]
    pieces.append(dec.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert "😀" in pieces and "ñ" in pieces  # emitted whole, once its last byte arrived
    # merged tokens too, and invalid bytes decode exactly as the tokenizer does
    ids = tok.encode(text, add_special_tokens=False).ids + byte_token_ids(tok, b"\xc3(\xf0\x9f")
    dec = G.IncrementalDecoder(tok)
    assert "".join([dec.push(t) for t in ids] + [dec.flush()]) == tok.decode(ids)


def stream_pieces(tok, ids, stops=()):
    s = G.TextStream(tok, stops)
    pieces = []
    for t in ids:
        if s.done:
            break
        pieces.append(s.push(t))
    pieces.append(s.end(G.FINISH_LENGTH))
    return s, pieces


def test_stop_strings_cut_the_text_before_them():
    tok = load_tok()
    text = "hola mundo. adiós, mundo cruel"
    ids = tok.encode(text, add_special_tokens=False).ids
    s, pieces = stream_pieces(tok, ids, ["mundo"])
    assert s.text == "hola " and s.finish_reason == G.FINISH_STOP and "".join(pieces) == "hola "
    s, pieces = stream_pieces(tok, ids, ["xyz", "s, m", "cruel"])  # the earliest match wins
    assert s.text == "hola mundo. adió" and "".join(pieces) == s.text
    s, pieces = stream_pieces(tok, ids, ["zzz"])
    assert s.text == text and s.finish_reason == G.FINISH_LENGTH and "".join(pieces) == text
    # a stop string spelled across byte tokens, with a partial match that is shown later
    ids = byte_token_ids(tok, "ab añb año".encode("utf-8"))
    s, pieces = stream_pieces(tok, ids, ["año"])
    assert s.text == "ab añb " and "".join(pieces) == s.text


def test_stream_shows_nothing_that_a_stop_string_later_removes():
    tok = load_tok()
    ids = byte_token_ids(tok, "uno dos tres".encode("utf-8"))
    s = G.TextStream(tok, ["dos tres"])
    shown = ""
    for t in ids:
        if s.done:
            break
        shown += s.push(t)
        assert s.text.startswith(shown) and not shown.endswith("d")
    shown += s.end(G.FINISH_LENGTH)
    assert shown == s.text == "uno "


def test_generate_texts_stop_strings_and_end_of_document():
    model, tok = trained_model(), load_tok()
    full = G.generate_texts(model, tok, ["La ciudad de"], max_new_tokens=40, cfg=GREEDY)[0]
    assert full.finish_reason in (G.FINISH_LENGTH, G.FINISH_END_OF_DOCUMENT)
    assert full.text == tok.decode(list(G.generate_tokens(model, G.encode_prompt(tok, "La ciudad de"), 40, GREEDY)))
    stop = full.text[len(full.text) // 2:len(full.text) // 2 + 3]
    cut = G.generate_texts(model, tok, ["La ciudad de"], max_new_tokens=40, cfg=GREEDY, stop_strings=[stop])[0]
    assert cut.finish_reason == G.FINISH_STOP and cut.text == full.text[:full.text.index(stop)]


def test_streaming_equals_non_streaming_on_spanish_text():
    model, tok = trained_model(), load_tok()
    cfg = G.SamplingConfig(temperature=1.0, top_k=0, top_p=1.0)
    prompts = ["La música española", "El año pasado"]
    kw = dict(max_new_tokens=120, cfg=cfg, num_samples=2)
    plain = G.generate_texts(model, tok, prompts, generator=torch.Generator().manual_seed(11), **kw)
    pieces: dict[int, list[str]] = {}
    started = []
    streamed = G.generate_texts(model, tok, prompts, generator=torch.Generator().manual_seed(11),
                                on_start=started.append, on_text=lambda r, p: pieces.setdefault(r, []).append(p), **kw)
    assert started == [0, 1, 2, 3]
    assert streamed == plain
    for r, res in enumerate(plain):
        assert "".join(pieces.get(r, [])).encode("utf-8") == res.text.encode("utf-8")
    text = "".join(r.text for r in plain)
    assert any(c in text for c in "áéíóúñ")  # multi-byte characters were produced...
    # ...and characters did arrive split across tokens: a token holding a lone UTF-8 lead byte
    for r in plain:
        assert tok.decode(r.token_ids) == r.text and len(r.token_ids) == r.tokens
    assert any(tok.decode([t]) == "\ufffd" and not tok.decode(r.token_ids[i:i + 2]).endswith("\ufffd")
               for r in plain for i, t in enumerate(r.token_ids[:-1]))


def test_seeded_sampling_reproduces_text():
    model, tok = trained_model(), load_tok()
    cfg = G.SamplingConfig(temperature=0.9, top_k=40, top_p=0.95)

    def run(seed):
        return G.generate_texts(model, tok, ["Hola"], max_new_tokens=40, cfg=cfg, num_samples=2,
                                generator=torch.Generator().manual_seed(seed))

    a = run(3)
    assert a == run(3) and a != run(4)
    assert a[0].text != a[1].text  # two samples of one prompt differ


def test_complete_restores_mode_and_frees_the_cache():
    model, tok = trained_model(), load_tok()
    model.train()
    text = G.complete(model, tok, "La fotosíntesis", max_new_tokens=20)
    assert isinstance(text, str) and model.training
    assert all(b.attn.kv_cache is None for b in model.blocks)
    model.eval()
    assert G.complete(model, tok, "La fotosíntesis", max_new_tokens=20) == text


def test_compiled_decode_step_equals_eager_and_is_traced_once():
    """generate_batch(compile=True): greedy tokens equal the uncached reference (padding and a
    sliding context included), and a second call with other prompts of the same batch size
    reuses the traced step (fixed-size cache, tensor arguments): no new graph."""
    from torch._dynamo.utils import counters
    model = random_model(seed=3, block=32)
    prompts = [[0, 5], [0] + list(range(20, 45)), [0, 7, 8, 9, 10, 11]]  # 26 + 30 > 32: slides
    want = [uncached_greedy(model, p, 30, stop_ids=()) for p in prompts]
    steps = list(G.generate_batch(model, prompts, 30, GREEDY, stop_ids=(), compile=True))
    assert [[s[i] for s in steps] for i in range(3)] == want
    graphs = counters["stats"]["unique_graphs"]
    others = [[0, 9, 9], [0, 3], [0, 60, 61, 62, 63]]
    steps = list(G.generate_batch(model, others, 12, GREEDY, stop_ids=(), compile=True))
    assert [[s[i] for s in steps] for i in range(3)] == [uncached_greedy(model, p, 12, stop_ids=()) for p in others]
    assert counters["stats"]["unique_graphs"] == graphs          # traced once, not per call or per step
    model.clear_cache()


def test_compiled_int8_decoding_gives_the_eager_int8_tokens():
    """generate --quantize int8 --compile: the compiled step runs the int8 weights (not a float
    copy) and gives the tokens of the eager int8 run, batch 1 and a padded batch of 3."""
    import inference
    from precision import Precision
    model = random_model(seed=4, block=48)
    context = inference.prepare(model, Precision("bf16", "cpu", "bf16"), "int8", weight_only=True)
    assert isinstance(model.blocks[0].mlp.fc, inference.FrozenLinear) and model.blocks[0].mlp.fc.kind == "int8"
    for prompts in ([[0, 5, 6, 7]], [[0, 5], [0] + list(range(20, 30)), [0, 7, 8, 9]]):
        with context():
            eager = list(G.generate_batch(model, prompts, 16, GREEDY, stop_ids=()))
            compiled = list(G.generate_batch(model, prompts, 16, GREEDY, stop_ids=(), compile=True))
        assert compiled == eager
    model.clear_cache()


# --------------------------------------------------------------------------- one-token decoding

def decoder_model(family: str, seed: int, **kw) -> GPT:
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=64, block_size=BLOCK, family=family, **kw))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3) if p.dim() >= 2 else p.uniform_(0.5, 1.5)   # norms and biases not trivial
    return model.eval()


@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("family,kw", [("neox", {}), ("neox", dict(bias=False, activation="relu2", tie_embeddings=False)),
                                       ("llama", {}), ("qwen3", {})])
def test_token_decoder_gives_the_models_logits_bit_for_bit(family, kw, weights, monkeypatch):
    """model.TokenDecoder (cached decoding on a CPU) computes what GPT.forward computes for one
    new token per row: equal logits at every step, for each family, float32, bf16 and int8
    weights (llama's MLP output, 171 inputs, stays bf16 under int8: a mixed model), one prompt,
    and left-padded batches of three and five (their key masks and per-row RoPE positions). bf16
    weights multiply many rows only with native bf16 (the packed weights): without it (the tests'
    default) ATen's product takes up to ATEN_BF16_ROWS rows and a larger batch with bf16 layers
    decodes through GPT.forward; where the CPU has native bf16, it is tried too."""
    import inference
    from model import token_decoder
    from precision import ATEN_BF16_ROWS, NATIVE_BF16_ENV, Precision, cpu_native_bf16
    monkeypatch.delenv(NATIVE_BF16_ENV, raising=False)          # the CPU's own answer
    natives = ["0", "1"] if weights == "bf16" and cpu_native_bf16() is not None else ["0"]
    for native in natives:
        monkeypatch.setenv(NATIVE_BF16_ENV, native)
        model = decoder_model(family, seed=3, **kw)
        precision = Precision("fp32", "cpu", "fp32") if weights == "fp32" else Precision("bf16", "cpu", "bf16")
        context = inference.prepare(model, precision, "int8" if weights == "int8" else None, weight_only=True)
        for prompts in ([[0, 17, 42, 99, 7]], [[0, 17, 42, 99, 7], [0, 5], [0, 8, 9]],
                        [[0, 17, 42, 99, 7], [0, 5], [0, 8, 9], [0, 3, 4, 5], [0, 11]]):
            with context(), torch.inference_mode():
                model.setup_cache(len(prompts), 40)
                slots = torch.arange(40)
                batch, logits = G._prefill(model, prompts, 40, slots, torch.device("cpu"), pad_id=0)
                decoder = token_decoder(model)
                bf16_layers = any(getattr(m, "kind", None) == "bf16" for m in model.modules())
                if bf16_layers and native == "0" and len(prompts) > ATEN_BF16_ROWS:
                    assert decoder is None                   # GPT.forward multiplies them in float32
                    continue
                assert decoder is not None
                token = logits.argmax(-1, keepdim=True)
                for pos in range(batch.P, 30):
                    want, _ = model(token, input_pos=slots[pos:pos + 1], key_mask=batch.key_mask,
                                    positions=batch.positions_at(pos, pos + 1), kv_len=pos + 1)
                    got = decoder(token, pos, batch.key_mask, batch.positions)  # same keys and values at pos
                    assert got.shape == (len(prompts), VOCAB) and got.dtype == torch.float32
                    assert torch.equal(got, want[:, -1]), (native, pos, (got - want[:, -1]).abs().max())
                    token = got.argmax(-1, keepdim=True)
            model.clear_cache()


def test_generation_on_a_cpu_runs_the_token_decoder(monkeypatch):
    """generate_batch decodes through TokenDecoder on a CPU model set up by inference.prepare,
    with the tokens of the full-recompute reference, sliding included, one prompt or a padded
    batch; an unprepared model (RoPE not interleaved) stays on GPT.forward."""
    import inference
    import model as M
    from precision import Precision
    calls = []
    call = M.TokenDecoder.__call__
    monkeypatch.setattr(M.TokenDecoder, "__call__", lambda self, *a: calls.append(1) or call(self, *a))
    model = random_model(seed=1, block=32)
    prompt = [0] + list(range(40, 60))
    want = uncached_greedy(model, prompt, 50, stop_ids=())
    assert list(G.generate_tokens(model, prompt, 50, GREEDY, stop_ids=())) == want
    assert calls == []                                   # not interleaved: forward decodes
    inference.prepare(model, Precision("fp32", "cpu", "fp32"), weight_only=True)
    assert list(G.generate_tokens(model, prompt, 50, GREEDY, stop_ids=())) == want
    assert len(calls) > 40                               # every step but the re-prefills after sliding
    calls.clear()
    batch = list(G.generate_batch(model, [prompt, prompt[:5]], 10, GREEDY, stop_ids=()))
    assert len(calls) == 9 and [row[0] for row in batch] == want[:10]


def test_prompts_and_stop_strings_are_put_in_nfc_as_the_corpus_was():
    """A decomposed prompt or stop string (combining accents, as in text pasted from a PDF) acts
    as its composed form, the one prepare-corpus writes; the result keeps the prompt as given."""
    import unicodedata
    model, tok = trained_model(), load_tok()
    composed = "La canción de la región"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed and tok.encode(decomposed).ids != tok.encode(composed).ids

    def gen(prompt, **kw):
        return G.generate_texts(model, tok, [prompt], max_new_tokens=40, cfg=G.SamplingConfig(temperature=0.8),
                                generator=torch.Generator().manual_seed(1), **kw)[0]

    want, got = gen(composed), gen(decomposed)
    assert got.prompt == decomposed and got.token_ids == want.token_ids
    accented = [w for w in want.text.split() if unicodedata.normalize("NFD", w) != w]
    assert accented, want.text
    stopped = gen(composed, stop_strings=[unicodedata.normalize("NFD", accented[0])])
    assert stopped.finish_reason == "stop" and stopped.text == want.text[:want.text.index(accented[0])]
