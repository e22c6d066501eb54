"""init-tokenizer: byte-level BPE training, exact round trips, special tokens, refusals, CLI."""
from __future__ import annotations

import json
import sys

import pytest

import dataset
import tokenizer
from common import UserError
from conftest import assert_user_error, corpus_slice

ROUND_TRIP = [
    "¿Qué pasó con el niño? ¡Nadie lo sabía! Él contestó: «mañana, quizá».",
    "Ñandú, pingüino, corazón, acción, débil, público, vergüenza, ÁÉÍÓÚÜÑ.",
    "Emoji: 🙂🎉👩‍💻 y banderas 🇪🇸 mezclados con texto.",
    "Cifras: 1.234.567,89 €, 3,14159, 2024-05-17, 0x1F, 10^9, ½, ², №.",
    "def f(x):\n\treturn {'a': [x ** 2, x // 3]}  # comentario\n\n    if x != 0: pass\r\n",
    "  espacios   dobles\t\ttabuladores \n\n\n líneas   \n",
    "中文字符 и кириллица ελληνικά עברית العربية",
    "texto con <|doc|> en medio y <|pad|> y <|endoftext|> literales",
    "",
    " ",
    "\n",
    "a",
]


@pytest.fixture(scope="module")
def spanish_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "corpus.txt"
    path.write_text(corpus_slice("wiki_es.txt", n_chars=200_000), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok_path(spanish_file):
    out = spanish_file.parent / "tokenizer.json"
    tokenizer.train_tokenizer([spanish_file], vocab_size=600, min_frequency=2, out_path=out, quiet=True)
    return out


@pytest.fixture(scope="module")
def tok(tok_path):
    return tokenizer.load_tokenizer(tok_path)


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_exact(tok, text):
    ids = tok.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_round_trip_real_text_no_unknown(tok):
    text = corpus_slice("wiki_es.txt", n_chars=50_000).replace("<|doc|>\n", "")
    enc = tok.encode(text, add_special_tokens=False)
    assert tok.decode(enc.ids) == text
    assert max(enc.ids) < tok.get_vocab_size()


def test_special_token_ids_stable(tok, tok_path):
    assert tokenizer.special_ids(tok) == {"sep": 0, "eos": 1, "pad": 2}
    assert tok.token_to_id("<|doc|>") == 0
    assert tok.token_to_id("<|endoftext|>") == 1
    assert tok.token_to_id("<|pad|>") == 2
    assert tokenizer.tokenizer_separator(tok) == "<|doc|>"
    # stored in the file, marked special
    added = {t["id"]: t for t in json.loads(tok_path.read_text(encoding="utf-8"))["added_tokens"]}
    assert [added[i]["content"] for i in range(3)] == ["<|doc|>", "<|endoftext|>", "<|pad|>"]
    assert all(added[i]["special"] for i in range(3))


def test_separator_is_one_token_never_learned_as_characters(tok):
    assert tok.encode("<|doc|>", add_special_tokens=False).ids == [0]
    assert tok.encode("a\n<|doc|>\nb", add_special_tokens=False).ids.count(0) == 1
    # the corpus separator lines were not training text: no learned token holds their pieces
    learned = [tok.decode([i]) for i in range(3, tok.get_vocab_size())]
    assert not any("<|" in t or "|>" in t for t in learned)


def test_tokenizer_hash_is_file_sha256(tok_path):
    import hashlib
    assert tokenizer.tokenizer_hash(tok_path) == hashlib.sha256(tok_path.read_bytes()).hexdigest()


def test_vocab_size_below_alphabet_refused(spanish_file, tmp_path):
    with pytest.raises(UserError, match="at least 259"):
        tokenizer.train_tokenizer([spanish_file], vocab_size=258, out_path=tmp_path / "t.json", quiet=True)
    assert not (tmp_path / "t.json").exists()


def test_smallest_vocab_is_bytes_plus_specials(spanish_file, tmp_path):
    tokenizer.train_tokenizer([spanish_file], vocab_size=259, out_path=tmp_path / "t.json", quiet=True)
    tok = tokenizer.load_tokenizer(tmp_path / "t.json")
    assert tok.get_vocab_size() == 259
    text = "¿Año 2024? ¡Sí! 🙂"
    assert tok.decode(tok.encode(text).ids) == text


@pytest.mark.parametrize("content", ["<|doc|>\n   \n<|doc|>\n\n", "\n\n  \t\n"])
def test_empty_training_text_refused(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match="empty"):
        tokenizer.train_tokenizer([path], vocab_size=300, out_path=tmp_path / "t.json", quiet=True)


def test_custom_separator_becomes_token_zero(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("uno dos tres\n###\ncuatro cinco\n###\nseis\n", encoding="utf-8")
    tokenizer.train_tokenizer([corpus], vocab_size=300, separator="###", out_path=tmp_path / "t.json", quiet=True)
    tok = tokenizer.load_tokenizer(tmp_path / "t.json")
    assert tokenizer.tokenizer_separator(tok) == "###"
    assert tok.token_to_id("###") == 0
    assert tokenizer.special_ids(tok) == {"sep": 0, "eos": 1, "pad": 2}
    # the token store follows the tokenizer's separator when none is given
    store = dataset.load_or_build_token_store(corpus, tmp_path / "t.json", tmp_path / "cache", quiet=True)
    assert store.n_docs == 3 and store.separator == "###"


@pytest.mark.parametrize("sep", ["", " <|doc|>", "a\nb", "<|pad|>"])
def test_bad_separator_refused(spanish_file, tmp_path, sep):
    with pytest.raises(UserError):
        tokenizer.train_tokenizer([spanish_file], vocab_size=300, separator=sep, out_path=tmp_path / "t.json",
                                quiet=True)


def test_load_tokenizer_errors(tmp_path):
    from tokenizers import Tokenizer, models
    with pytest.raises(UserError, match="not found"):
        tokenizer.load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="not a valid tokenizer"):
        tokenizer.load_tokenizer(bad)
    foreign = tmp_path / "foreign.json"
    Tokenizer(models.BPE()).save(str(foreign))
    with pytest.raises(UserError, match="special tokens"):
        tokenizer.load_tokenizer(foreign)


def test_load_identity_of_a_trained_tokenizer(tmp_path):
    import dataclasses

    from tokenizers import Tokenizer
    from common import file_sha256
    corpus = tmp_path / "c.txt"
    corpus.write_text(corpus_slice("wiki_es.txt", n_chars=20_000), encoding="utf-8")
    path = tmp_path / "t.json"
    tokenizer.train_tokenizer([corpus], vocab_size=300, out_path=path, quiet=True)

    ident = tokenizer.load_identity(str(path))
    assert ident.path == path
    assert isinstance(ident.tokenizer, Tokenizer)
    assert ident.sha256 == file_sha256(path) == tokenizer.tokenizer_hash(path)
    assert ident.vocab_size == tokenizer.load_tokenizer(path).get_vocab_size() == 300
    assert ident.special == tokenizer.special_ids(ident.tokenizer) == {"sep": 0, "eos": 1, "pad": 2}
    assert ident.tokenizer.encode("hola mundo").ids == tokenizer.load_tokenizer(path).encode("hola mundo").ids
    with pytest.raises(dataclasses.FrozenInstanceError):
        ident.sha256 = "0" * 64


def test_load_identity_errors(tmp_path):
    from tokenizers import Tokenizer, models
    garbled = tmp_path / "garbled.json"
    garbled.write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": [1, 2', encoding="utf-8")
    empty = tmp_path / "empty.json"
    empty.write_text("", encoding="utf-8")
    foreign = tmp_path / "foreign.json"
    Tokenizer(models.BPE()).save(str(foreign))
    cases = [(tmp_path / "missing.json", "not found"), (garbled, "not a valid tokenizer"),
             (empty, "is empty"), (foreign, "special tokens"), (tmp_path, "not a regular file")]
    for path, match in cases:
        with pytest.raises(UserError, match=match) as identity_error:
            tokenizer.load_identity(path)
        message = str(identity_error.value)
        assert "\n" not in message, path
        with pytest.raises(UserError) as load_error:
            tokenizer.load_tokenizer(path)
        assert message == str(load_error.value), path


def test_fitness_report(tok):
    text = corpus_slice("wiki_es.txt", n_chars=100_000).replace("<|doc|>\n", "")
    rep = tokenizer.tokenizer_fitness(tok, text)
    assert 1.0 < rep["tokens_per_word"] < 5.0
    assert 1.5 < rep["bytes_per_token"] < 6.0
    assert 1 <= len(rep["long_words"]) <= 10
    for w in rep["long_words"]:
        assert len(w["word"]) >= 8
        assert "".join(w["tokens"]) == " " + w["word"]


# ------------------------------------------------------------------------------------------ CLI

def test_cli_init_tokenizer_real_slice(cli, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_slice("wiki_es.txt", n_chars=150_000), encoding="utf-8")
    out = tmp_path / "tok.json"
    proc = cli("init-tokenizer", "--files", corpus, "--vocab-size", 500, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "tokens per word" in proc.stdout and "bytes per token" in proc.stdout
    tok = tokenizer.load_tokenizer(out)
    assert tok.get_vocab_size() == 500

    proc = cli("init-tokenizer", "--files", corpus, "--vocab-size", 400, "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)          # exactly one JSON object on stdout
    assert rep["vocab_size"] == 400 and rep["special_tokens"] == {"<|doc|>": 0, "<|endoftext|>": 1, "<|pad|>": 2}
    assert rep["hash"] == tokenizer.tokenizer_hash(out)
    assert {"tokens_per_word", "bytes_per_token", "long_words"} <= rep.keys()


def test_cli_two_files_and_no_separator(cli, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(corpus_slice("parlamento_es.txt", n_chars=40_000), encoding="utf-8")
    b.write_text(corpus_slice("biblia_rv1909_es.txt", n_chars=40_000).replace("<|doc|>\n", ""), encoding="utf-8")
    proc = cli("init-tokenizer", "--files", a, b, "--vocab-size", 400, "--out", tmp_path / "t.json", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["files"] == [str(a), str(b)]


def test_cli_bad_inputs_leave_existing_output(cli, tmp_path):
    out = tmp_path / "tok.json"
    out.write_text("previous good tokenizer", encoding="utf-8")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    seps = tmp_path / "seps.txt"
    seps.write_text("<|doc|>\n\n<|doc|>\n", encoding="utf-8")
    binary = tmp_path / "binary.bin"
    binary.write_bytes(bytes(range(256)) * 20)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("año, corazón, señor\n".encode("latin-1"))
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"texto\x00binario\n")
    good = tmp_path / "good.txt"
    good.write_text("hola mundo\n", encoding="utf-8")
    cases = [
        ["--files", tmp_path / "missing.txt"],
        ["--files", empty],
        ["--files", seps],
        ["--files", binary],
        ["--files", latin],
        ["--files", nul],
        ["--files", tmp_path],
        ["--files", good, "--vocab-size", "100"],
        ["--files", good, "--vocab-size", "abc"],
    ]
    for extra in cases:
        proc = cli("init-tokenizer", *extra, "--out", out)
        assert_user_error(proc)
        assert out.read_text(encoding="utf-8") == "previous good tokenizer", extra
    # output equal to input
    proc = cli("init-tokenizer", "--files", good, "--out", good)
    assert_user_error(proc)
    assert good.read_text(encoding="utf-8") == "hola mundo\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cli_ten_megabyte_single_line(cli, tmp_path):
    """A 10 MB line is valid text: one document, trained without trouble."""
    line = ("palabra número %d, " * 1000) % tuple(range(1000))
    big = tmp_path / "big.txt"
    big.write_text(line * (10_000_000 // len(line) + 1), encoding="utf-8")
    proc = cli("init-tokenizer", "--files", big, "--vocab-size", 300, "--out", tmp_path / "t.json", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["vocab_size"] <= 300


# ---------------------------------------------------------------------------------- fast encoding

def _encode_as_store(tok, texts):
    """tok's ids of `texts` with special-token strings as plain text, as the token store encodes."""
    with tokenizer.specials_as_text(tok):
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def test_fast_encoder_gives_the_tokenizer_ids(tok):
    """tiktoken, built from a trained tokenizer, gives its ids: Spanish text, accents, ñ, ¿¡ « »,
    emoji, other scripts, whitespace runs, special-token strings as text, non-breaking and other
    Unicode spaces, long runs without a space."""
    encode = tokenizer.fast_plain_encoder(tok)
    assert encode is not None
    texts = ROUND_TRIP + [
        corpus_slice("wiki_es.txt", n_chars=100_000),
        corpus_slice("novelas_es.txt", n_chars=100_000),
        "a\u00a0b \u2009«sí»\u202f; \u3000x\u2028y\u0085z \u200bw\ufeffv \u180eu \u1680t",
        "x" * 5000 + " " + "é" * 3000 + " " + "7" * 2000 + " " + "¡" * 1000 + "   \n\n  ",
    ]
    assert encode(texts, 2) == _encode_as_store(tok, texts)
    assert encode(texts, 1) == encode(texts, 2)


def test_fast_encoder_splits_words_as_the_tokenizer_on_every_character(tok):
    """The word split (GPT-2's pattern, two regex engines) agrees on every character beyond the
    Basic Multilingual Plane that fast_plain_encoder itself checks: the supplementary planes where
    Unicode assigns characters (1-3, 14; 15-16 are private use)."""
    encode = tokenizer.fast_plain_encoder(tok)
    probe = tokenizer.split_probe([*range(0x10000, 0x40000), *range(0xE0000, 0xE1000)])
    assert encode(probe, 2) == _encode_as_store(tok, probe)


def _reordered(spec: dict, change: str) -> dict:
    """spec (a tokenizer.json) changed so that tiktoken could encode some text otherwise."""
    spec = json.loads(json.dumps(spec))
    model = spec["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    first = min(model["vocab"][a + b] for a, b in merges)
    if change == "normalizer":
        spec["normalizer"] = {"type": "NFC"}
    elif change == "prefix_space":
        spec["pre_tokenizer"]["add_prefix_space"] = True
    elif change == "ids_not_in_merge_order":
        a, b = merges[-2:]
        model["vocab"][a[0] + a[1]], model["vocab"][b[0] + b[1]] = model["vocab"][b[0] + b[1]], model["vocab"][a[0] + a[1]]
    elif change == "token_not_encoding_to_itself":
        # bytes and three merges, ids in merge order: "abc" = (a, bc), but alone "ab" forms first
        # and "ab" + "c" is no merge, so "abc" encodes as [ab, c] (tiktoken: [abc], a token)
        byte_chars = set(tokenizer._byte_level_alphabet())
        model["vocab"] = {s: i for s, i in model["vocab"].items() if s in byte_chars or i < first and len(s) > 1}
        model["merges"] = [["a", "b"], ["b", "c"], ["a", "bc"]]
        for i, (a, b) in enumerate(model["merges"]):
            model["vocab"][a + b] = first + i
    return spec


@pytest.mark.parametrize("change", ["normalizer", "prefix_space", "ids_not_in_merge_order",
                                    "token_not_encoding_to_itself"])
def test_fast_encoder_refuses_a_tokenizer_it_could_encode_otherwise(tok_path, change):
    from tokenizers import Tokenizer
    spec = _reordered(json.loads(tok_path.read_text(encoding="utf-8")), change)
    other = Tokenizer.from_str(json.dumps(spec))
    assert tokenizer.fast_plain_encoder(other) is None
    if change == "token_not_encoding_to_itself":   # where the refusal matters: tiktoken differs
        import tiktoken
        ranks = {bytes(tokenizer._byte_level_alphabet()[ch] for ch in s): i
                 for s, i in spec["model"]["vocab"].items() if i > 2}
        raw = tiktoken.Encoding("raw", pat_str=tokenizer.BYTE_LEVEL_SPLIT, mergeable_ranks=ranks, special_tokens={})
        assert [other.id_to_token(i) for i in _encode_as_store(other, ["abc"])[0]] == ["ab", "c"]
        assert [other.id_to_token(i) for i in raw.encode_ordinary("abc")] == ["abc"]


def test_fast_encoder_without_tiktoken_is_none(tok, monkeypatch):
    monkeypatch.setattr(tokenizer, "_FAST_ENCODERS", {})
    monkeypatch.setitem(sys.modules, "tiktoken", None)     # import tiktoken raises ImportError
    assert tokenizer.fast_plain_encoder(tok) is None


def test_output_and_input_flags_take_the_names_of_the_other_stages(spanish_file, tok_path, cli, tmp_path):
    """init-tokenizer also takes --corpus (as analyze-corpus and train) and --output (as
    prepare-corpus and generate); export and report take --output too."""
    proc = cli("init-tokenizer", "--corpus", spanish_file, "--vocab-size", 600, "--output", tmp_path / "t.json",
               "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "t.json").read_bytes() == tok_path.read_bytes()   # as --files ... --out
    import main
    parser = main.build_parser()
    assert parser.parse_args(["export", "--ckpt", "c.pt", "--tokenizer", "t.json", "--output", "hf"]).out == "hf"
    assert parser.parse_args(["report", "run", "--output", "r.html"]).out == "r.html"
