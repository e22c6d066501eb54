"""Sampling: the settings of the generate stage (SamplingConfig) and pure functions of a (B, V)
logits tensor: temperature / top-k / top-p / min-p filtering (`filter_logits`), drawing a token
(`sample`), the repetition penalty and the no-repeat n-gram ban. No model, no files.

Notation: B batch (rows), V vocabulary, K candidates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch


# =========================================================================== configuration

@dataclass
class SamplingConfig:
    temperature: float = 0.8        # 0 = greedy (argmax)
    top_k: int = 50                 # keep the k most likely tokens (0 = off)
    top_p: float = 0.9              # nucleus: smallest set with this much mass (1.0 = off)
    min_p: float = 0.0              # drop tokens below min_p * p(top token) (0 = off)
    repetition_penalty: float = 1.0  # > 1 penalises tokens already in the prompt or output
    no_repeat_ngram: int = 0        # forbid repeating any n-gram of this size (0 = off)

    def __post_init__(self):
        problems = []

        def number(name, v):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                problems.append(f"{name}={v!r} must be a finite number")
                return False
            return True

        def whole(name, v):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                problems.append(f"{name}={v!r} must be a whole number >= 0")

        if number("temperature", self.temperature) and self.temperature < 0:
            problems.append(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        whole("top_k", self.top_k)
        if number("top_p", self.top_p) and not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p={self.top_p} must be in (0, 1] (1 = off)")
        if number("min_p", self.min_p) and not 0.0 <= self.min_p < 1.0:
            problems.append(f"min_p={self.min_p} must be in [0, 1) (0 = off)")
        if number("repetition_penalty", self.repetition_penalty) and self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty={self.repetition_penalty} must be > 0 (1 = off)")
        whole("no_repeat_ngram", self.no_repeat_ngram)
        if problems:
            raise ValueError("invalid sampling settings: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


# =========================================================================== pure sampling

# top_p without top_k first tries the most likely tokens: the nucleus nearly always lies in the
# first few hundred, and a topk of those is far cheaper than sorting a 32k vocabulary per step.
NUCLEUS_PREFIX = 256


def _canonical(source: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """source's values at ids (B, K), ordered by value descending, ties by lower id."""
    ids = ids.sort(dim=-1).values  # ascending ids...
    cand, order = source.gather(-1, ids).sort(dim=-1, descending=True, stable=True)  # ...then by value
    return cand, ids.gather(-1, order)


def _top_k_candidates(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly k candidates per row -> (logits (B, k), ids (B, k)), ordered by logit descending,
    ties by lower token id. Ties at the cut keep the lowest ids, so no extra token slips in.

    One topk of k + 1 finds the set; only when the (k+1)-th value equals the k-th (a tie across
    the cut, rare with real logits; checked with one (B,)-sized host read) does a slower exact
    pass push the tied tokens beyond the `k - (number strictly above)` lowest ids to -inf.
    """
    V = logits.shape[-1]
    vals, ids = torch.topk(logits, min(k + 1, V), dim=-1)  # (B, k+1) sorted descending
    if k < V and bool((vals[:, k] == vals[:, k - 1]).any()):
        kth = vals[:, k - 1:k]  # (B, 1)
        tied = logits == kth  # (B, V)
        n_above = (logits > kth).sum(-1, keepdim=True)  # (B, 1)
        surplus = tied & (tied.cumsum(-1) > k - n_above)  # tied tokens past the cut, by id
        ids = torch.topk(logits.masked_fill(surplus, float("-inf")), k, dim=-1).indices  # (B, k)
    return _canonical(logits, ids[:, :k])


def _nucleus_candidates(scaled: torch.Tensor, log_z: torch.Tensor, top_p: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates (B, K) for top_p alone, in canonical order: the first NUCLEUS_PREFIX tokens when
    those strictly above the next one already hold top_p of the mass (then the nucleus is among
    them, whatever the order of ties), else the whole sorted vocabulary."""
    V = scaled.shape[-1]
    k = NUCLEUS_PREFIX
    if k < V:
        vals, ids = torch.topk(scaled, k + 1, dim=-1)  # (B, k+1)
        above = vals[:, :k] > vals[:, k:]  # (B, k): ahead of every token outside, in any order
        mass = torch.exp(vals[:, :k] - log_z).masked_fill(~above, 0.0).sum(-1)
        if bool((mass >= top_p).all()):
            cand, ids = _canonical(scaled, ids[:, :k])
            return cand.masked_fill(cand <= vals[:, k:], float("-inf")), ids
    return torch.sort(scaled, dim=-1, descending=True, stable=True)  # ties by lower id


def _scale(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature (a new tensor): for usual values the division itself, bit for bit. Where
    that breaks down (one scalar read on the host tells), the same distribution, computed in `_scale_stably`: a
    temperature that rounds to 0 or inf in the logits' dtype (0/0, inf/inf), logits so large that
    the quotient overflows to +inf, or a row with no finite logit (every token banned)."""
    scaled = logits / temperature
    if math.isfinite(float(scaled.amax(dim=-1).abs().max())):  # every row max finite (NaN, +-inf are not)
        return scaled
    return _scale_stably(logits, temperature)


def _scale_stably(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(logits - row max) / temperature in float64 (float32 where the device has no float64), back in
    the logits' dtype: the top token gets 0 and the others -inf or what they are worth, whatever the
    temperature (1e-300 keeps exactly the tied maxima; 1e300 is uniform over the finite logits).
    A row with no finite logit gets 0 at its first candidate: no token is allowed, and the draw
    must still return an id of the vocabulary. +inf logits share the row's mass, NaN ones get none."""
    work = torch.float32 if logits.device.type == "mps" else torch.float64
    info = torch.finfo(work)
    x = logits.to(work)
    x = torch.where(torch.isnan(x), float("-inf"), x)
    posinf = x == float("inf")
    x = torch.where(posinf.any(dim=-1, keepdim=True), torch.where(posinf, 0.0, float("-inf")), x)
    top = x.amax(dim=-1, keepdim=True)  # (B, 1)
    dead = top == float("-inf")  # (B, 1)
    shifted = (x - torch.where(dead, 0.0, top)) / min(max(temperature, info.tiny), info.max)
    first = torch.arange(x.shape[-1], device=x.device) == 0  # (V,)
    shifted = torch.where(dead & first, 0.0, shifted)
    return shifted.to(logits.dtype)


def _support(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, min_p: float
             ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The candidates of a draw: logits at `temperature` (B, K) with dropped tokens at -inf, and
    their token ids (B, K), or None when K == V and candidate i is token i. Never writes into
    `logits`. Filters apply in the usual order, each on the survivors of the previous one:
      top_k: exactly k tokens (ties at the cut go to the lower token id), taken on the raw logits
             (dividing by a positive temperature keeps their order);
      top_p: the smallest set, in order of probability (ties by lower id), whose mass reaches
             top_p (at least the top token); after top_k, of the renormalised top-k distribution;
      min_p: tokens with p >= min_p * p(top token).
    """
    V = logits.shape[-1]
    log_z = None  # log normaliser of the top_p mass (None: the candidates' own softmax)
    if top_p < 1.0:  # as compared below: a top_p that would round to 0 in the logits' dtype still
        top_p = max(top_p, torch.finfo(logits.dtype).tiny)  # keeps the top token, and only it
    if 0 < top_k < V:
        cand, ids = _top_k_candidates(logits, top_k)  # sorted
        cand = _scale(cand, temperature)
    elif top_p < 1.0:
        scaled = _scale(logits, temperature)
        log_z = torch.logsumexp(scaled, dim=-1, keepdim=True)  # (B, 1) over the whole vocabulary
        cand, ids = _nucleus_candidates(scaled, log_z, top_p)
    else:
        cand, ids = _scale(logits, temperature), None
    if top_p < 1.0:  # cand is sorted: keep each token whose preceding mass is < top_p
        probs = torch.softmax(cand, dim=-1) if log_z is None else torch.exp(cand - log_z)
        mass_before = probs.cumsum(-1) - probs  # exactly 0 for the top token, which always stays
        cand = cand.masked_fill(mass_before >= top_p, float("-inf"))
    if min_p > 0.0:  # p >= min_p * p_max  <=>  logit >= max logit + log(min_p)
        threshold = cand.max(dim=-1, keepdim=True).values + math.log(min_p)
        cand = cand.masked_fill(cand < threshold, float("-inf"))
    return cand, ids


def filter_logits(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """A new (B, V) tensor: logits / temperature, with -inf at every token that `sample` with the
    same settings cannot draw (its support; see `_support` for the filters). temperature 0 keeps
    only the argmax. The caller's tensor is never modified. Where the plain quotient would not be
    finite (an extreme temperature or logit, see `_scale`) the row is shifted so that its maximum
    is 0: the same distribution, always with at least one finite entry."""
    assert logits.dim() == 2, "logits must be (B, V)"
    if temperature == 0:
        top = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        return torch.full_like(logits, float("-inf")).scatter_(-1, top, logits.gather(-1, top))
    cand, ids = _support(logits, temperature, top_k, top_p, min_p)
    if ids is None:
        return cand
    return torch.full_like(cand[:, :1].expand_as(logits), float("-inf")).scatter_(-1, ids, cand)


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    """(B, V) -> (B,) index of the first maximum. On the CPU through NumPy, whose vectorised
    argmax is ~10x faster than torch's for a 32k vocabulary (a sizeable part of a greedy step)."""
    if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(logits.numpy().argmax(axis=-1).astype(np.int64, copy=False))
    return logits.argmax(dim=-1)


def sample(logits: torch.Tensor, *, temperature: float, top_k: int = 0, top_p: float = 1.0,
           min_p: float = 0.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Draw one token id per row from (B, V) logits -> LongTensor (B,), always in [0, V). Pure:
    `logits` is not modified. temperature 0 = argmax (the lowest id among equal maxima; filters
    are moot). Logits are finite or -inf (a banned token); any positive temperature works, down to
    the smallest float (the tied maxima) and up to the largest (uniform). A row where every token
    is -inf has nothing to draw: it still gets an id in [0, V) (without top-k the lowest, as
    greedy decoding would).

    The draw inverts the cumulative distribution of the candidates of `_support` at one uniform
    number per row: one random number per row, and no host sync besides `_scale`'s one scalar
    read (whether the scaled logits are all usable).
    """
    assert logits.dim() == 2, "logits must be (B, V)"
    if temperature == 0:
        return _argmax(logits)
    cand, ids = _support(logits, temperature, top_k, top_p, min_p)
    cdf = torch.softmax(cand, dim=-1).cumsum(dim=-1)  # (B, K)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=cdf.dtype)  # [0, 1)
    u = (1.0 - u) * cdf[:, -1:]  # (0, total]: the first cdf >= u is a token with p > 0
    choice = torch.searchsorted(cdf, u).squeeze(-1)  # (B,) position among the candidates
    return choice if ids is None else ids.gather(-1, choice[:, None]).squeeze(-1)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """New (B, V) logits where every token already seen is penalised: a positive logit is divided
    by `penalty`, a negative one multiplied (so > 1 always lowers the probability). `seen` is
    either token ids (B, N) long (repeats count once) or a (B, V) bool mask. Pure; `penalty == 1`
    returns `logits` itself.

    Any positive penalty works: penalised logits stay finite (a quotient or product beyond the
    dtype's range is clamped to its largest value; -inf, a banned token, stays -inf), so an
    extreme penalty (1e-300, 1e300) gives the extreme distribution, never inf or NaN."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    if seen.dtype == torch.bool:
        return torch.where(seen, _penalised(logits, penalty), logits)
    return logits.scatter(-1, seen, _penalised(logits.gather(-1, seen), penalty))


def _penalised(x: torch.Tensor, penalty: float) -> torch.Tensor:
    """x / penalty where x > 0, else x * penalty, clamped to x's finite range (-inf stays -inf).
    The penalty is first brought into that range too: as a scalar it would round to 0 or inf in
    float32, and 0 * inf is NaN."""
    if x.is_floating_point():
        info = torch.finfo(x.dtype)
        penalty = min(max(penalty, info.tiny), info.max)
        out = torch.where(x > 0, (x / penalty).clamp(max=info.max), (x * penalty).clamp(min=-info.max))
        return torch.where(x == float("-inf"), x, out)
    return torch.where(x > 0, x / penalty, x * penalty)


def banned_ngram_tokens(tokens: Sequence[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already present in `tokens` (reference form of
    `_NgramBlocker`; n == 1 bans every token seen)."""
    if n <= 0 or len(tokens) < n - 1:
        return set()
    prefix = tuple(tokens[len(tokens) - (n - 1):]) if n > 1 else ()
    return {tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tuple(tokens[i:i + n - 1]) == prefix}


class _NgramBlocker:
    """Incremental no-repeat-ngram state of one row: (n-1)-gram -> tokens that followed it."""

    def __init__(self, n: int, tokens: Sequence[int]):
        self.n = n
        self.follow: dict[tuple, set] = {}
        self.tokens: list[int] = []
        for t in tokens:
            self.add(t)

    def add(self, token: int) -> None:
        self.tokens.append(token)
        if len(self.tokens) >= self.n:
            key = tuple(self.tokens[len(self.tokens) - self.n:-1])
            self.follow.setdefault(key, set()).add(token)

    def banned(self) -> set:
        if len(self.tokens) < self.n - 1:
            return set()
        key = tuple(self.tokens[len(self.tokens) - (self.n - 1):]) if self.n > 1 else ()
        return self.follow.get(key, set())
