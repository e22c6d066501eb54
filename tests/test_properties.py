"""Property-based tests (hypothesis) of the pieces that take arbitrary input:

- cleaning (standarize): never crashes on any text or bytes, gives NFC UTF-8 without special-token
  strings inside documents, and is idempotent; binary files are skipped, and refused when nothing
  else is left, while real Spanish text in every supported encoding is accepted;
- the byte-level BPE tokenizer: decode(encode(text)) == text for all of Unicode but lone surrogates;
- sampling: `sample()` / `filter_logits` / `apply_repetition_penalty` never crash and never return
  an id outside the vocabulary for any valid settings (extreme temperatures and penalties, top-k 1
  and beyond the vocabulary, tiny top-p, rows where every token is banned), in generation too;
- argument validation: every out-of-range value of the generate sampling flags and of a few train
  flags is refused with exit code 2, one `error:` line naming it, and no traceback.

Deterministic in CI: every test runs under the PROPERTIES settings below (derandomize: the same
examples on every run and machine; no example database). MINI_LLM_PROPERTY_SCALE=N multiplies the
number of examples for a deeper local search (it stays deterministic).
"""
from __future__ import annotations

import contextlib
import io
import os
import random
import unicodedata

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import main
import sampling as S
import textfiles
import tokenizer
from common import UserError, log
from conftest import assert_user_error, corpus_slice
from standarize import clean_text, prepare_corpus
from textfiles import decode_bytes

PROPERTIES = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SCALE = max(1, int(os.environ.get("MINI_LLM_PROPERTY_SCALE", "1")))


def examples(n: int) -> settings:
    return settings(PROPERTIES, max_examples=n * SCALE)


SPECIALS = ("<|doc|>", "<|endoftext|>", "<|pad|>")


# =========================================================================== strategies

# Characters the cleaning rules treat specially: mojibake pieces (UTF-8 read as Windows-1252),
# C0/C1 controls, line and space separators, invisible format characters, combining marks,
# ligatures, full-width forms, characters whose case mapping is irregular.
TRICKY = ("ÃÂÊêÄäÏÎÅâã€œ™‰…†‡•–—˜šžŸ¿¡«»ñÑáéíóú´¨°ºª©®±µ¶·¸¹²³¼½¾×÷ßÀÁ"
          "\x80\x81\x85\x8d\x8f\x90\x93\x94\x9d\xa0\xad\u2028\u2029\x0b\x0c\r\n\t \x00\x01\x1b\x7f"
          "\u0301\u0302\u0303\u0308\u030c\u0327\u200b\u2060\ufeff\ufffe\uffff\ufffd\u2002\u3000\u202f"
          "ﬁﬂＡｂ１＜｜＞İıΣσςẞǅǄǳ\u212bK&;#<>")
PIECES = ("<|doc|>", "<|DOC|>", "<|endoftext|>", "<|pad|>", "＜｜ｐａｄ｜＞", "&amp;", "&#233;", "&eacute;",
          "Ã©", "Ã­", "Ã±", "â€œ", "â€\x9d", "Ã\x81", "historiografÃa", "Â¿", "Ã ", "\x1b[31m", "\r\n",
          "  ", "\n\n\n", "ï»¿", "Ã¢â‚¬â„¢", "BZh91AY&SY")
# Python strings may hold lone surrogates (os.fsdecode of a bad file name, "surrogateescape"): include them.
surrogates = st.integers(0xD800, 0xDFFF).map(chr)
mojibake_text = st.lists(st.one_of(st.text(alphabet=TRICKY, max_size=6), st.sampled_from(PIECES),
                                   st.text(max_size=4), st.text(alphabet=surrogates, max_size=2),
                                   st.text(alphabet="abcdefghijklmnñopqrstuvwxyzABC ", max_size=8)),
                         max_size=12).map("".join)
any_text = st.one_of(st.text(), st.text(alphabet=st.one_of(st.characters(), surrogates)), mojibake_text)


def _encode(text: str, encoding: str) -> bytes:
    if encoding == "utf-8":
        return text.encode("utf-8", "surrogatepass")  # lone surrogates as CESU-like bytes: invalid UTF-8
    return text.encode(encoding, "replace")


any_bytes = st.one_of(
    st.binary(max_size=300),
    st.builds(_encode, any_text, st.sampled_from(["utf-8", "utf-8-sig", "cp1252", "latin-1", "utf-16", "utf-32"])),
    st.builds(lambda text, tail: _encode(text, "utf-8") + tail, any_text, st.binary(max_size=20)),
)


# =========================================================================== cleaning

@examples(400)
@given(any_text, st.booleans())
@example("Ê¡\x10¯Ä", False)                   # a removed control character joins a mojibake pair
@example("»HÊ\x11½½â", True)
@example("\x90×\x87", True)                   # C1 repair makes "×‡", itself mojibake of U+05C7
@example("\u3000Ã vdwgglwk", True)            # a stripped leading space puts "Ã " at the line start
@example("ifÃ±ë<|doc|>\x0c\x8d®Ã±ifU&#233;¾", False)  # an entity repaired only without "<" in the line
@example("espera\u0085 ya\x0bvoy", False)
@example("A\u0303\u00a9", True)               # NFC makes "Ã©" (mojibake of "é") out of "A" + tilde + "©"
def test_clean_text_is_nfc_utf8_and_idempotent(text, preserve_case):
    cleaned = clean_text(text, preserve_case)
    cleaned.encode("utf-8")                    # no lone surrogates
    assert unicodedata.is_normalized("NFC", cleaned)
    assert clean_text(cleaned, preserve_case) == cleaned
    if not preserve_case:
        assert cleaned == cleaned.lower()


@examples(300)
@given(st.binary(max_size=400))
@example(b"caf\xe9 y \x93comillas\x94 \xff")
@example(b"\xed\xa0\x80 surrogate encoded as UTF-8")
def test_decode_bytes_then_clean_never_fails(raw):
    text, repaired = decode_bytes(raw)
    text.encode("utf-8")                       # every byte became a character, never a surrogate
    try:
        strict = raw.decode("utf-8")
    except UnicodeDecodeError:
        assert repaired and len(text) <= len(raw)   # invalid bytes were read as Windows-1252, one each
    else:
        assert not repaired and text == strict
    cleaned = clean_text(text)
    assert unicodedata.is_normalized("NFC", cleaned) and clean_text(cleaned) == cleaned


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("properties")


@examples(150)
@given(any_bytes, st.booleans())
@example(b"<|DOC|>", False)                                   # lowercasing made the separator
@example(b"\xef\xbc\x9c\xef\xbd\x9c\xef\xbd\x90\xef\xbd\x81\xef\xbd\x84\xef\xbd\x9c\xef\xbc\x9e x", True)
@example(b"\xef\xbb\xbfBZh", False)                           # plain text that starts like bz2
@example(b"L8zk\xe1bX\x18?z'\x13z\xf8>Q\xef\x06\xe5?\xb9\xc4\xc7]*?\xc17?\xe3\xc3", True)  # last line, no newline
@example(b"\xff\xfe\x00\x00\xac\x00\x00\x00\xeb\x00\x00\x00\xc1\x00\x00\x00\xac\x00\x00\x00 \x00\x00\x00"
         b" \x00\x00\x00P \xc6\xc3", False)                     # UTF-32 with an undecodable tail
def test_prepare_corpus_on_arbitrary_bytes(work_dir, raw, preserve_case):
    """Any file: a UserError (no output written) or a corpus of NFC UTF-8 documents without
    special-token strings inside, which prepare-corpus leaves exactly as it is."""
    src, out, again = work_dir / "in.txt", work_dir / "out.txt", work_dir / "again.txt"
    src.write_bytes(raw)
    for p in (out, again):
        p.unlink(missing_ok=True)
    try:
        prepare_corpus([str(src)], out, quiet=True, preserve_case=preserve_case)
    except UserError as e:
        assert "\n" not in str(e)
        assert not out.exists()
        return
    text = out.read_bytes().decode("utf-8")
    assert unicodedata.is_normalized("NFC", text)
    assert text.endswith("\n")
    for doc in text[:-1].split("\n<|doc|>\n"):
        assert doc and not any(s in doc for s in SPECIALS), doc
    prepare_corpus([str(out)], again, quiet=True, preserve_case=preserve_case)
    assert again.read_text(encoding="utf-8") == text


# --------------------------------------------------------------------------- binary input

def _random_bytes(n: int, low: int = 0, high: int = 256, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.randrange(low, high) for _ in range(n))


BINARY_FILES = {
    "random bytes": lambda: random.Random(0).randbytes(200_000),
    "random bytes without NUL or control bytes": lambda: _random_bytes(200_000, 32, 256),
    "random high bytes": lambda: _random_bytes(100_000, 128, 256),
    "random bytes after a UTF-16 byte-order mark": lambda: b"\xff\xfe" + random.Random(1).randbytes(100_000),
    "random bytes after a UTF-8 byte-order mark": lambda: b"\xef\xbb\xbf" + _random_bytes(50_000, 32, 256),
    "text with binary data appended": lambda: "hola, ¿qué tal?\n".encode() * 8000 + random.Random(2).randbytes(60_000),
    "png": lambda: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + random.Random(3).randbytes(5000),
    "zip": lambda: b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + random.Random(4).randbytes(5000),
    "Cyrillic in Windows-1251": lambda: "Привет, как дела? Это текст.\n".encode("cp1251") * 50,
}


@pytest.mark.parametrize("case", sorted(BINARY_FILES))
def test_binary_input_is_skipped_and_refused(tmp_path, caplog, case):
    src = tmp_path / "input.txt"
    src.write_bytes(BINARY_FILES[case]())
    out = tmp_path / "out.txt"
    with pytest.raises(UserError, match="binary") as e:
        prepare_corpus([str(src)], out, quiet=True)
    assert str(src) in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()
    # next to a real text file it is skipped with a warning naming it, and the text is prepared
    good = tmp_path / "good.txt"
    good.write_text("El niño comió pan.\n", encoding="utf-8")
    caplog.clear()
    with caplog.at_level("WARNING", logger=log.name):
        stats = prepare_corpus([str(src), str(good)], out, quiet=True)
    assert stats.files == 1 and stats.files_skipped_binary == 1 and stats.documents_kept == 1
    assert out.read_text(encoding="utf-8") == "el niño comió pan.\n"
    warnings = [r.getMessage() for r in caplog.records if "binary" in r.getMessage()]
    assert len(warnings) == 1 and str(src) in warnings[0] and "\n" not in warnings[0]


def test_random_bytes_through_the_cli(cli, tmp_path):
    """The reported defect: 200 KB of random bytes became a corpus without a word."""
    src = tmp_path / "random.bin"
    src.write_bytes(os.urandom(200_000))
    out = tmp_path / "corpus.txt"
    proc = cli("prepare-corpus", "--input", src, "--output", out)
    assert_user_error(proc)
    error = next(l for l in proc.stderr.splitlines() if l.startswith("error:"))
    assert str(src) in error and "binary" in error
    assert any(l.startswith("warning: skipping") and str(src) in l for l in proc.stderr.splitlines())
    assert not out.exists() and not list(tmp_path.glob(".corpus.txt.*"))


def test_two_binary_files_one_error(cli, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_bytes(_random_bytes(30_000, 32, 256, seed=5))
    b.write_bytes(b"\x00" * 100)
    proc = cli("prepare-corpus", "--input", a, b, "--output", tmp_path / "o.txt")
    assert_user_error(proc)
    assert "2 non-empty input files look like binary data" in proc.stderr
    assert not (tmp_path / "o.txt").exists()


def test_real_text_in_every_supported_encoding_is_text(tmp_path):
    """The binary detection never flags real text: the Spanish test corpus in UTF-8, Windows-1252,
    Latin-1 and UTF-16/32 with a byte-order mark, and each of its documents alone in Windows-1252
    and Latin-1 (short files: the whole file is the sample)."""
    text = corpus_slice()
    path = tmp_path / "x.txt"
    for encoding in ("utf-8", "utf-8-sig", "cp1252", "latin-1", "utf-16", "utf-32"):
        path.write_bytes(text.encode(encoding, "replace"))
        assert textfiles._sniff(path)[2] is None, encoding
    for doc in text.split("<|doc|>\n"):
        for encoding in ("cp1252", "latin-1"):
            path.write_bytes(doc.encode(encoding, "replace"))
            assert textfiles._sniff(path)[2] is None, doc[:200]


@pytest.fixture(scope="module")
def spanish_lines():
    return sorted({l for l in corpus_slice().splitlines() if l.strip() and l != "<|doc|>"})


@examples(60)
@given(st.data())
def test_spanish_text_in_latin1_is_never_binary(work_dir, spanish_lines, data):
    lines = data.draw(st.lists(st.sampled_from(spanish_lines), min_size=1, max_size=30))
    encoding = data.draw(st.sampled_from(["cp1252", "latin-1", "utf-8", "utf-16"]))
    path = work_dir / "latin1.txt"
    path.write_bytes("\n".join(lines).encode(encoding, "replace"))
    assert textfiles._sniff(path)[2] is None


# =========================================================================== tokenizer

@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    src = d / "corpus.txt"
    src.write_text(corpus_slice(n_chars=8_000), encoding="utf-8")
    out = d / "tokenizer.json"
    tokenizer.train_tokenizer([src], vocab_size=300, out_path=out, quiet=True)
    return out


@pytest.fixture(scope="module")
def tok(tok_path):
    return tokenizer.load_tokenizer(tok_path)


# "Arbitrary Unicode" for a byte-level BPE: every code point but the lone surrogates (U+D800-U+DFFF
# cannot be UTF-8, so they have no bytes to encode; Python refuses to pass them to the library).
unicode_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)))
tokenizer_text = st.one_of(
    unicode_text,
    st.lists(st.one_of(unicode_text.filter(lambda t: len(t) < 6), st.sampled_from(
        [*SPECIALS, "<|doc", "|>", "<|", " <|doc|> ", "\n<|doc|>\n", "\x00", "\r\n", "e\u0301", "👩‍💻", "🇪🇸",
         "\ufeff", "\u200b", "\U0010ffff", "¿Qué?", "¡Olé!", "«ñandú»", "  ", "\t"])), max_size=10).map("".join),
)


@examples(300)
@given(tokenizer_text)
@example("")
@example("\x00\r\n\ufeff e\u0301 👩‍💻 🇪🇸 \U0010ffff")
@example("texto con <|doc|> en medio y <|pad|> y <|endoftext|> literales")
def test_tokenizer_round_trip_is_exact(tok, text):
    ids = tok.encode(text, add_special_tokens=False).ids
    assert all(0 <= i < tok.get_vocab_size() for i in ids)
    assert tok.decode(ids, skip_special_tokens=False) == text


# =========================================================================== sampling

FINFO = np.finfo(np.float32)
logit_values = st.one_of(
    st.floats(-30, 30, width=32),
    st.floats(allow_nan=False, allow_infinity=False, width=32),     # up to +-3.4e38
    st.sampled_from([0.0, 1.0, 2.0, -1.0, float(FINFO.max), float(-FINFO.max), 1e-45, float("-inf")]),
)


@st.composite
def logit_tensors(draw):
    """(B, V) float32 logits: finite values of any size, ties, -inf (banned) entries, and rows that
    are all -inf (every token banned); V from 1 to past the nucleus prefix (NUCLEUS_PREFIX)."""
    B = draw(st.integers(1, 3))
    V = draw(st.sampled_from([1, 2, 3, 5, 8, 40, S.NUCLEUS_PREFIX + 44]))
    x = draw(arrays(np.float32, (B, V), elements=logit_values, fill=st.floats(-5, 5, width=32)))
    if draw(st.booleans()):
        x[draw(st.integers(0, B - 1))] = -np.inf
    return torch.from_numpy(x)


TINY, HUGE = 5e-324, 1.7976931348623157e308
temperatures = st.one_of(st.just(0.0), st.floats(min_value=TINY, max_value=HUGE),
                         st.sampled_from([TINY, 1e-300, 1e-45, 1e-38, 1e-8, 0.8, 1.0, 1e38, 1e300, HUGE]))
top_ks = st.one_of(st.integers(0, S.NUCLEUS_PREFIX + 50), st.sampled_from([0, 1, 2, 10**9]))
top_ps = st.one_of(st.floats(min_value=TINY, max_value=1.0), st.sampled_from([TINY, 1e-300, 1e-8, 0.5, 0.9, 1.0]))
min_ps = st.one_of(st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
                   st.sampled_from([0.0, TINY, 1e-300, 0.5, 1 - 1e-16]))
penalties = st.one_of(st.floats(min_value=TINY, max_value=HUGE),
                      st.sampled_from([TINY, 1e-300, 0.5, 1.0, 1.3, 50.0, 1e300, HUGE]))


@examples(250)
@given(logit_tensors(), temperatures, top_ks, top_ps, min_ps, st.integers(0, 2**32))
@example(torch.tensor([[0.3, 2.0, -1.0, 2.0]]), 1e-300, 0, 1.0, 0.0, 0)   # the reported crashes
@example(torch.tensor([[0.3, 2.0, -1.0, 2.0]]), 1e-300, 2, 0.5, 0.0, 0)
@example(torch.tensor([[0.3, 2.0, float("-inf"), 2.0]]), 1e300, 0, TINY, 0.0, 0)
@example(torch.full((2, 5), float("-inf")), 0.8, 3, 0.5, 0.1, 0)
def test_sample_never_fails_and_stays_in_the_vocabulary(logits, temperature, top_k, top_p, min_p, seed):
    S.SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)  # all valid
    B, V = logits.shape
    before = logits.clone()
    kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    ids = S.sample(logits, generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(logits, before)
    assert ids.shape == (B,) and ids.dtype == torch.long
    assert bool(((ids >= 0) & (ids < V)).all()), ids
    support = S.filter_logits(logits, **kw)
    assert torch.equal(logits, before) and support.shape == (B, V)
    for row, i in enumerate(ids.tolist()):
        finite = torch.isfinite(logits[row])
        if not finite.any():
            continue  # every token banned: nothing to draw, any id will do (it is in range)
        assert finite[i], "a banned token was drawn"
        assert torch.isfinite(support[row, i]), "drawn outside the support of filter_logits"
        assert torch.isfinite(support[row]).sum() >= 1
        if temperature == 0 or temperature <= 1e-300 or top_k == 1:  # only the (tied) maxima remain
            assert logits[row, i] == logits[row][finite].max()
        if temperature == 0 or top_k == 1 or top_p <= 1e-300:  # a support of one token
            assert torch.isfinite(support[row]).sum() == 1


@st.composite
def logits_and_seen(draw):
    logits = draw(logit_tensors())
    return logits, torch.from_numpy(draw(arrays(np.bool_, tuple(logits.shape))))


@examples(150)
@given(logits_and_seen(), penalties)
@example((torch.tensor([[5.0, -2.0, 0.0, 3.0]]), torch.ones(1, 4, dtype=torch.bool)), 1e-300)  # the reported crash
@example((torch.tensor([[5.0, -2.0, 0.0, float("-inf")]]), torch.ones(1, 4, dtype=torch.bool)), 1e300)
def test_repetition_penalty_keeps_logits_finite(case, penalty):
    logits, seen = case
    S.SamplingConfig(repetition_penalty=penalty)
    B, V = logits.shape
    out = S.apply_repetition_penalty(logits, seen, penalty)
    finite = torch.isfinite(logits)
    assert torch.equal(torch.isfinite(out), finite)                   # finite stays finite, -inf stays -inf
    assert torch.equal(out[~seen], logits[~seen])                      # unseen tokens untouched
    if penalty >= 1:
        assert bool((out[finite] <= logits[finite]).all())
    else:
        assert bool((out[finite] >= logits[finite]).all())
    # the ids form ((B, N) long, repeats count once) gives the same logits
    if B == 1 and seen.any():
        ids = seen[0].nonzero().flatten().repeat(2)[None]
        assert torch.equal(S.apply_repetition_penalty(logits, ids, penalty), out)
    drawn = S.sample(out, temperature=0.8, top_k=3, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert bool(((drawn >= 0) & (drawn < V)).all())


BAD_SAMPLING = st.one_of(
    st.fixed_dictionaries({"temperature": st.one_of(st.floats(max_value=-TINY), st.sampled_from(
        [float("nan"), float("inf"), float("-inf")]))}),
    st.fixed_dictionaries({"top_k": st.one_of(st.integers(max_value=-1), st.floats(), st.just(True))}),
    st.fixed_dictionaries({"top_p": st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0, exclude_min=True),
                                              st.just(float("nan")))}),
    st.fixed_dictionaries({"min_p": st.one_of(st.floats(max_value=-TINY), st.floats(min_value=1.0),
                                              st.just(float("nan")))}),
    st.fixed_dictionaries({"repetition_penalty": st.one_of(st.floats(max_value=0.0), st.sampled_from(
        [float("nan"), float("inf")]))}),
    st.fixed_dictionaries({"no_repeat_ngram": st.one_of(st.integers(max_value=-1), st.floats())}),
)


@examples(200)
@given(BAD_SAMPLING)
def test_sampling_config_refuses_every_out_of_range_value(bad):
    (name, value), = bad.items()
    with pytest.raises(ValueError, match=name) as e:
        S.SamplingConfig(**bad)
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- in generation

@contextlib.contextmanager
def one_thread():
    """Tiny models run one op after another: more threads only wait for each other (on a busy
    2-core machine, 40x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_model():
    from model import GPT, ModelConfig
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=12, n_layer=1, n_head=1, n_embd=8, block_size=8))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0)
    return model.eval()


@examples(25)
@given(temperatures, top_ks, top_ps, min_ps, penalties, st.integers(0, 3), st.integers(0, 2**32))
@example(1e-300, 50, 0.9, 0.0, 1e-300, 0, 0)        # the reported crash
@example(0.8, 0, 1.0, 0.0, 1.0, 1, 0)               # no-repeat 1 bans all 12 tokens: rows with none left
def test_generation_with_extreme_settings(tiny_model, temperature, top_k, top_p, min_p, penalty, ngram, seed):
    import generation as G
    cfg = G.SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                           repetition_penalty=penalty, no_repeat_ngram=ngram)
    with one_thread():
        steps = list(G.generate_batch(tiny_model, [[0, 3, 4], [0, 5]], 14, cfg, stop_ids=(),  # slides past block 8
                                      generator=torch.Generator().manual_seed(seed)))
    assert len(steps) == 14
    assert all(0 <= t < 12 for step in steps for t in step)


# =========================================================================== argument validation

def run_main(argv: list[str]) -> tuple[int, str, str]:
    """main.main in this process -> (exit code, stdout, stderr); argparse's SystemExit counts."""
    out, err = (io.TextIOWrapper(io.BytesIO(), encoding="utf-8") for _ in range(2))  # real text streams
    handlers, level = log.handlers[:], log.level
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main.main(argv)
            except SystemExit as e:
                code = e.code
    finally:  # main() points the project logger at the redirected stderr: put it back
        log.handlers[:], log.level = handlers, level
    text = []
    for stream in (out, err):
        stream.flush()
        text.append(stream.buffer.getvalue().decode("utf-8", "replace"))
    return code, text[0], text[1]


def assert_refused(argv: list[str], flag: str) -> None:
    code, out, err = run_main(argv)
    assert code == 2, (argv, code, err)
    assert "Traceback" not in err, err
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, err
    assert flag in errors[0] or flag.lstrip("-").replace("-", "_") in errors[0], errors[0]
    assert out == ""


def number_text(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


nan_inf = st.sampled_from(["nan", "inf", "-inf", "1e999", "NaN"])
not_a_number = st.sampled_from(["abc", "", "1,5", "0x10", "--"])
not_whole = st.one_of(st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: v != int(v)).map(repr),
                      st.sampled_from(["2.5", "1e3", "abc", "", "nan"]))

GENERATE_BAD = {
    "--temperature": st.one_of(st.floats(max_value=-TINY).map(repr), nan_inf, not_a_number),
    "--top-k": st.one_of(st.integers(max_value=-1).map(str), not_whole),
    "--top-p": st.one_of(st.floats(max_value=0.0).map(repr), st.floats(min_value=1.0, exclude_min=True).map(repr),
                         nan_inf, not_a_number),
    "--min-p": st.one_of(st.floats(max_value=-TINY).map(repr), st.floats(min_value=1.0).map(repr), nan_inf),
    "--repetition-penalty": st.one_of(st.floats(max_value=0.0).map(repr), nan_inf, not_a_number),
    "--no-repeat-ngram": st.one_of(st.integers(max_value=-1).map(str), not_whole),
    "--max-tokens": st.one_of(st.integers(max_value=0).map(str), not_whole),
    "--num-samples": st.one_of(st.integers(max_value=0).map(str), not_whole),
}


@examples(120)
@given(st.sampled_from(sorted(GENERATE_BAD)).flatmap(lambda f: st.tuples(st.just(f), GENERATE_BAD[f])))
def test_generate_refuses_out_of_range_flags(tok_path, work_dir, case):
    flag, value = case
    # the checkpoint does not exist: the flags are checked first (a valid value would fail on it,
    # with an error that does not name the flag)
    assert_refused(["generate", "--tokenizer", str(tok_path), "--ckpt", str(work_dir / "missing.pt"),
                    "--prompt", "Hola", "--device", "cpu", f"{flag}={value}"], flag)


TRAIN_BAD = {
    "--batch-size": st.one_of(st.integers(max_value=0).map(str), not_whole),
    "--lr": st.one_of(st.floats(max_value=0.0).map(repr), nan_inf, not_a_number),
    "--dropout": st.one_of(st.floats(max_value=-TINY).map(repr), st.floats(min_value=1.0).map(repr), nan_inf),
    "--val-fraction": st.one_of(st.floats(max_value=-TINY).map(repr), st.floats(min_value=1.0).map(repr), nan_inf,
                                not_a_number),
    "--eval-every": st.one_of(st.integers(max_value=0).map(str), not_whole),
}


@examples(60)
@given(st.sampled_from(sorted(TRAIN_BAD)).flatmap(lambda f: st.tuples(st.just(f), TRAIN_BAD[f])))
def test_train_refuses_out_of_range_flags(tok_path, work_dir, case):
    flag, value = case
    corpus = work_dir / "train_corpus.txt"
    corpus.write_text("hola mundo\n", encoding="utf-8")
    outdir = work_dir / "run_never_created"
    assert_refused(["train", "--tokenizer", str(tok_path), "--corpus", str(corpus), "--outdir", str(outdir),
                    "--device", "cpu", f"{flag}={value}"], flag)
    assert not outdir.exists()


@pytest.fixture(scope="module")
def tiny_checkpoint(tok_path, work_dir):
    """A random tiny model for the tokenizer above, in the checkpoint format generate loads."""
    from common import file_sha256
    from model import GPT, ModelConfig
    vocab = tokenizer.load_tokenizer(tok_path).get_vocab_size()
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=vocab, n_layer=1, n_head=1, n_embd=16, block_size=32))
    ckpt = work_dir / "ckpt_tiny.pt"
    torch.save({"model": model.state_dict(), "model_config": model.cfg.to_dict(), "step": 1,
                "meta": {"tokenizer_hash": file_sha256(tok_path), "vocab_size": vocab, "corpus_hash": "0" * 64,
                         "step": 1}}, ckpt)
    return ckpt


@examples(10)
@given(st.sampled_from(["1e-300", "5e-324", "1e300", "0"]), st.sampled_from(["1e-300", "1e300", "1"]),
       st.sampled_from(["0", "1", "100000"]), st.sampled_from(["1e-300", "1"]), st.sampled_from(["0", "1"]))
@example("1e-300", "1e-300", "50", "0.9", "0")       # the reported crash, through the command line
def test_generate_cli_accepts_extreme_valid_values(tok_path, tiny_checkpoint, temperature, penalty, top_k, top_p,
                                                   ngram):
    with one_thread():
        code, out, err = run_main(["generate", "--tokenizer", str(tok_path), "--ckpt", str(tiny_checkpoint),
                                   "--device", "cpu", "--precision", "fp32", "--prompt", "Hola", "--max-tokens",
                                   "20", "--seed", "0", "--temperature", temperature, "--repetition-penalty",
                                   penalty, "--top-k", top_k, "--top-p", top_p, "--no-repeat-ngram", ngram, "--quiet"])
    assert code == 0, err
    assert "Traceback" not in err and out.startswith("Hola")
