"""analyze-corpus with several corpora: per-corpus reports, the mixture's numbers and warnings, CLI."""
from __future__ import annotations

import json
import math

import pytest

import analysis
from conftest import assert_user_error, corpus_slice
from corpus import parse_corpus_specs

SEP = "<|doc|>"
ADDED_KEYS = ("name", "weight", "bytes")         # what a mixture adds to a corpus's own report


def write_docs(path, docs):
    path.write_text(f"\n{SEP}\n".join(docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def shipped_docs():
    return [d.strip() for d in corpus_slice().split(f"{SEP}\n") if d.strip()]


@pytest.fixture
def two_corpora(tmp_path, shipped_docs):
    """A 'general' corpus (400 documents) and a small 'historia' one (20 other documents)."""
    return {"general": write_docs(tmp_path / "general.txt", shipped_docs[:400]),
            "historia": write_docs(tmp_path / "historia.txt", shipped_docs[400:420])}


def without_timing(report: dict, drop=()) -> dict:
    return {k: v for k, v in report.items() if k != "seconds" and k not in drop}


def analyze_mixture(*specs, **kw) -> dict:
    return analysis.analyze_corpora(parse_corpus_specs([str(s) for s in specs]), quiet=True, **kw)


def synthetic_report(name: str, tokens: int, weight: float) -> dict:
    """The fields of a corpus report that mixture_report reads, for corpora too big to write in a test."""
    return {"name": name, "corpus": f"{name}.txt", "tokens": tokens, "weight": weight, "tokens_exact": True}


# --------------------------------------------------------------------------- library

def test_each_corpus_report_equals_its_own_analysis(two_corpora):
    result = analyze_mixture(f"{two_corpora['historia']}:0.7", f"{two_corpora['general']}:0.3")
    assert [r["name"] for r in result["corpora"]] == ["historia", "general"]
    assert [r["weight"] for r in result["corpora"]] == pytest.approx([0.7, 0.3])
    for report in result["corpora"]:
        path = two_corpora[report["name"]]
        alone = analysis.analyze_corpus(path, quiet=True)
        assert without_timing(report, ADDED_KEYS) == without_timing(alone)
        assert report["bytes"] == path.stat().st_size


def test_mixture_numbers_match_hand_computation(two_corpora):
    result = analyze_mixture(f"{two_corpora['historia']}:0.7", f"{two_corpora['general']}:0.3")
    small, big = result["corpora"]
    m = result["mixture"]
    total = small["tokens"] + big["tokens"]
    assert m["tokens_per_epoch"] == total
    assert m["largest"] == "general" and m["tokens_without_largest"] == small["tokens"]
    for report, entry in zip(result["corpora"], m["corpora"]):
        assert entry["name"] == report["name"] and entry["tokens"] == report["tokens"]
        assert entry["share"] == pytest.approx(report["weight"], rel=1e-3)
        assert entry["natural_share"] == pytest.approx(report["tokens"] / total, rel=1e-3)
        per_epoch = report["weight"] * total / report["tokens"]
        assert entry["repetitions_per_epoch"] == pytest.approx(per_epoch, rel=1e-3)
        assert entry["repetitions"] == pytest.approx(per_epoch * m["epochs"], rel=1e-3)
    assert m["corpora"][0]["repetitions_per_epoch"] > 1 > m["corpora"][1]["repetitions_per_epoch"]
    for name, p in m["presets"].items():
        params = analysis.PRESET_PARAMS[name]
        assert p["tokens_per_param"] == pytest.approx(total / params, rel=1e-3)
        assert p["tokens_per_param_without_largest"] == pytest.approx(small["tokens"] / params, rel=1e-3)
        assert p["epochs_for_20_tokens_per_param"] == pytest.approx(analysis.TOKENS_PER_PARAM * params / total,
                                                                    rel=1e-3)
    # a few tens of thousands of tokens: the small preset, epochs capped as for one corpus
    assert m["preset"] == "small" and m["epochs"] == analysis.MAX_RECOMMENDED_EPOCHS
    assert any(line.startswith("historia is ") and "times per epoch" in line for line in m["advice"])


def test_over_repetition_warning_names_the_weight_that_keeps_the_limit(two_corpora, tmp_path, shipped_docs):
    tiny = write_docs(tmp_path / "tiny.txt", shipped_docs[420:422])
    m = analyze_mixture(f"{tiny}:0.9", f"{two_corpora['general']}:0.1")["mixture"]
    tiny_entry = next(c for c in m["corpora"] if c["name"] == "tiny")
    assert tiny_entry["repetitions"] > analysis.MAX_USEFUL_EPOCHS
    warned = [w for w in m["warnings"] if w.startswith("tiny ")]
    assert len(warned) == 1 and "too high for its size" in warned[0]
    limit_weight = tiny_entry["max_useful_weight"]
    assert f"{limit_weight:.3g}" in warned[0]
    reads = limit_weight * m["tokens_per_epoch"] * m["epochs"] / tiny_entry["tokens"]
    assert reads == pytest.approx(analysis.MAX_USEFUL_EPOCHS, rel=1e-3)
    # general is below its share by size: the mixture's own smallness is warned about, not its weight
    assert not any(w.startswith("general ") for w in m["warnings"])
    assert any(w.startswith("the whole mixture") for w in m["warnings"])


def test_no_warning_for_a_well_weighted_large_mixture():
    general, domain = 2_000_000_000, 5_000_000
    m = analysis.mixture_report([synthetic_report("historia", domain, 0.002),
                                 synthetic_report("general", general, 0.998)])
    assert m["preset"] == "large" and m["epochs"] == 1      # 1.4B tokens wanted, 2B per epoch
    assert m["warnings"] == []
    # the same domain corpus at a high weight is repeated ~280 times within one epoch
    m = analysis.mixture_report([synthetic_report("historia", domain, 0.7),
                                 synthetic_report("general", general, 0.3)])
    historia, gen = m["corpora"]
    assert historia["repetitions"] == pytest.approx(0.7 * (general + domain) / domain, rel=1e-3)
    text = "\n".join(m["warnings"])
    assert "historia" in text and "too high for its size" in text
    # ... and general at weight 0.3 is read only ~30% over the one recommended epoch
    assert gen["seen_fraction"] == pytest.approx(0.3 * (general + domain) / general, rel=1e-3)
    unseen = [w for w in m["warnings"] if w.startswith("general ")]
    assert len(unseen) == 1 and "never trained on" in unseen[0]
    assert f"{general / (general + domain):.3g}" in unseen[0]    # the weight that reads it once


def test_tokens_per_param_without_largest_with_three_corpora():
    m = analysis.mixture_report([synthetic_report("a", 1_000_000, 0.5), synthetic_report("b", 3_000_000, 0.2),
                                 synthetic_report("c", 50_000_000, 0.3)])
    assert m["largest"] == "c" and m["tokens_without_largest"] == 4_000_000
    params = analysis.PRESET_PARAMS["small"]
    assert m["presets"]["small"]["tokens_per_param_without_largest"] == pytest.approx(4_000_000 / params, rel=1e-3)
    needed = analysis.TOKENS_PER_PARAM * analysis.PRESET_PARAMS[m["preset"]] / 54_000_000
    assert m["epochs"] == min(math.ceil(needed), analysis.MAX_RECOMMENDED_EPOCHS)


# --------------------------------------------------------------------------- CLI

def test_cli_json_two_corpora_with_tokenizer(cli, two_corpora, tmp_path):
    import tokenizer
    tok = tmp_path / "tok.json"
    tokenizer.train_tokenizer([two_corpora["general"]], vocab_size=512, out_path=tok, quiet=True)
    proc = cli("analyze-corpus", "--corpus", f"{two_corpora['historia']}:0.7", f"{two_corpora['general']}:0.3",
               "--tokenizer", tok, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)                           # stdout is exactly one JSON object
    assert set(result) == {"corpora", "mixture"}
    assert [(r["name"], r["weight"]) for r in result["corpora"]] == [("historia", 0.7), ("general", 0.3)]
    for report in result["corpora"]:
        alone = analysis.analyze_corpus(two_corpora[report["name"]], tokenizer_path=tok, quiet=True)
        assert report["tokens_exact"] is True and report["tokens"] == alone["tokens"]
    assert result["mixture"]["tokens_exact"] is True
    assert result["mixture"]["tokens_per_epoch"] == sum(r["tokens"] for r in result["corpora"])


def test_cli_human_two_corpora(cli, two_corpora):
    proc = cli("analyze-corpus", "--corpus", f"{two_corpora['historia']}:0.7", two_corpora["general"])
    assert proc.returncode == 0, proc.stderr
    for words in ("historia (weight 0.412)", "general (weight 0.588)", "recommendations", "mixture",
                  "tokens per parameter", "without general", "historia is ", "times per epoch"):
        assert words in proc.stdout, words


def test_cli_one_weighted_corpus_is_the_plain_report(cli, two_corpora):
    plain = cli("analyze-corpus", "--corpus", two_corpora["historia"], "--json")
    weighted = cli("analyze-corpus", "--corpus", f"{two_corpora['historia']}:0.5", "--json")
    assert plain.returncode == weighted.returncode == 0, weighted.stderr
    assert without_timing(json.loads(weighted.stdout)) == without_timing(json.loads(plain.stdout))


@pytest.mark.parametrize("case", ["weight 0", "weight x", "negative weight", "missing second", "same file twice"])
def test_bad_mixture_input(cli, two_corpora, case):
    general, historia = two_corpora["general"], two_corpora["historia"]
    args = {"weight 0": [f"{historia}:0", general],
            "weight x": [f"{historia}:x", general],
            "negative weight": [f"{historia}:-1", general],
            "missing second": [historia, historia.parent / "nope.txt"],
            "same file twice": [historia, historia.parent / "." / historia.name]}[case]
    proc = cli("analyze-corpus", "--corpus", *args, "--json")
    assert_user_error(proc)
    assert proc.stdout == ""
