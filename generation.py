"""Generation: KV-cached decoding (single prompts, left-padded
batches, a sliding context), incremental UTF-8-safe decoding with stop strings, and the
`generate` stage's text-level driver.

Layers, bottom up:
  - `filter_logits` / `sample` (sampling.py): pure functions of a (B, V) logits tensor.
  - `generate_batch`: KV-cached decoding of B prompts (token ids) -> one list of B new ids per
    step; `generate_tokens` is its single-prompt, streaming form (nanochat style: streaming is
    iterating it). Each step runs model.TokenDecoder on a CPU (GPT.forward's logits without the
    modules' per-call overhead), else GPT.forward, or with `compile` the compiled step.
  - `IncrementalDecoder` / `TextStream`: ids -> text pieces that never split a character, cut
    before stop strings.
  - `generate_texts` / `complete`: prompts (str) -> results (str).

Notation: B batch (rows), T time (tokens fed this step), S cache slots, V vocabulary, K candidates.
"""
from __future__ import annotations

import json
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from common import UserError, atomic_path, log, refuse_same_file, require_file, resolve_device
import inference
from model import token_decoder
from tokenizer import as_identity, special_ids
from checkpoint import load_model
from sampling import SamplingConfig, _NgramBlocker, apply_repetition_penalty, sample

FINISH_LENGTH = "length"                    # max_new_tokens reached
FINISH_STOP = "stop"                        # a stop string appeared; the text ends before it
FINISH_END_OF_DOCUMENT = "end_of_document"  # the model produced <|doc|> or <|endoftext|>

# When prompt + output outgrow the model's context (block_size), decoding restarts from the
# most recent `SLIDE_KEEP_FRACTION * block_size` tokens (re-prefilled at positions 0..). Half the
# block keeps plenty of context while a re-prefill happens only every block_size / 2 tokens.
SLIDE_KEEP_FRACTION = 0.5


# =========================================================================== KV-cached decoding

def _unwrap(model):
    """The plain GPT under DDP / torch.compile wrappers (cached decoding calls its methods)."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


class _Batch:
    """Left-padded contexts in the cache: slot s of row i holds position s - pad[i].

    `fixed`: always tensors (`pad` (B, 1), `key_mask` (B, S)), even without padding, so a
    compiled decode step sees the same kinds of argument at every step and every call."""

    def __init__(self, contexts: list[list[int]], S: int, device, pad_id: int, fixed: bool = False):
        P = max(len(c) for c in contexts)
        pads = [P - len(c) for c in contexts]
        self.P = P
        self.idx = torch.tensor([[pad_id] * p + c for p, c in zip(pads, contexts)],
                                dtype=torch.long, device=device)  # (B, P)
        self.pad = torch.tensor(pads, device=device)[:, None]  # (B, 1)
        if any(pads) or fixed:
            slots = torch.arange(S, device=device)[None, :]  # (1, S)
            self.key_mask = slots >= self.pad  # (B, S) False = padding slot
            self.positions = (slots - self.pad).clamp(min=0)  # (B, S) RoPE position of each slot
        else:
            self.key_mask = self.positions = None  # plain causal, position = slot

    def positions_at(self, start: int, end: int) -> Optional[torch.Tensor]:
        return None if self.positions is None else self.positions[:, start:end]


def _prefill(model, contexts, S, slots, device, pad_id, fixed=False) -> tuple[_Batch, torch.Tensor]:
    batch = _Batch(contexts, S, device, pad_id, fixed)
    logits, _ = model(batch.idx, input_pos=slots[:batch.P], key_mask=batch.key_mask,
                      positions=batch.positions_at(0, batch.P), kv_len=batch.P, last_only=True)
    return batch, logits[:, -1]  # (B, V)


def _decode_step(model, idx: torch.Tensor, input_pos: torch.Tensor, key_mask: torch.Tensor,
                 pad: torch.Tensor) -> torch.Tensor:
    """One cached decoding step over the whole fixed-size cache: idx (B, 1) at slot input_pos (1,),
    RoPE position input_pos - pad per row -> next-token logits (B, V). Every argument is a tensor
    of the same shape at every step, so its compiled form is traced once."""
    positions = (input_pos[None, :] - pad).clamp(min=0)  # (B, 1)
    logits, _ = model(idx, input_pos=input_pos, key_mask=key_mask, positions=positions)
    return logits[:, -1]  # (B, V)


_compiled_steps: dict = {}  # compile mode -> the compiled _decode_step (compiled once per process)


def _compile_errors() -> tuple:
    """The exceptions of a torch.compile that failed to build its kernels (no compiler, ...)."""
    from torch._dynamo.exc import BackendCompilerFailed
    try:
        from torch._inductor.exc import InductorError
    except ImportError:
        return (BackendCompilerFailed,)
    return (BackendCompilerFailed, InductorError)


def compiled_decode_step(device: torch.device):
    """torch.compile(_decode_step): with CUDA graphs (mode "reduce-overhead") on CUDA, where a
    batch-1 step is launch-bound; inductor's default mode elsewhere. Traced once per batch size
    and dtype (the cache keeps its size: model.setup_cache reuses it)."""
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    if mode not in _compiled_steps:
        _compiled_steps[mode] = torch.compile(_decode_step, mode=mode, fullgraph=True, dynamic=False)
    return _compiled_steps[mode]


class _Penalties:
    """--repetition-penalty and --no-repeat-ngram on a batch's logits, with the tokens each row
    has seen (prompt and output; not the SEP/BOS or another stop id: they are markers, not text)."""

    def __init__(self, cfg: SamplingConfig, history: list[list[int]], stop: set, vocab_size: int, device):
        self.penalty, self.device = cfg.repetition_penalty, device
        self.seen = None
        if self.penalty != 1.0:
            self.seen = torch.zeros(len(history), vocab_size, dtype=torch.bool, device=device)  # (B, V)
            for i, h in enumerate(history):
                self.seen[i, [t for t in h if t not in stop]] = True
            self.rows = torch.arange(len(history), device=device)
        self.blockers = [_NgramBlocker(cfg.no_repeat_ngram, h) for h in history] if cfg.no_repeat_ngram else None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:  # (B, V) -> (B, V)
        if self.seen is not None:
            logits = apply_repetition_penalty(logits, self.seen, self.penalty)
        if self.blockers is not None:
            rows, cols = [], []
            for i, b in enumerate(self.blockers):
                ban = b.banned()
                rows += [i] * len(ban)
                cols += list(ban)
            if rows:
                index = (torch.tensor(rows, device=self.device), torch.tensor(cols, device=self.device))
                logits = logits.index_put(index, torch.tensor(float("-inf"), device=self.device))
        return logits

    def add(self, new: torch.Tensor, tokens: list[int]) -> None:
        """The ids sampled this step: `new` (B,) on the device and the same as a host list."""
        if self.seen is not None:
            self.seen[self.rows, new] = True
        if self.blockers is not None:
            for b, t in zip(self.blockers, tokens):
                b.add(t)


@torch.inference_mode()
def generate_batch(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, cfg: SamplingConfig, *,
                   generator: Optional[torch.Generator] = None, stop_ids: Sequence[int] = (0, 1),
                   pad_id: int = 0, compile: bool = False) -> Iterator[list[int]]:
    """KV-cached decoding of B prompts (lists of token ids, each starting with the SEP/BOS id).
    Yields, per step, a list of B new token ids; -1 marks a row that already ended (it produced
    one of `stop_ids`, which is yielded once). Stops after `max_new_tokens` steps or when every
    row has ended; the caller may simply stop iterating (rows cut by stop strings).

    Each prompt is prefilled once (left-padded to a common length: `key_mask` hides the padding
    slots and `positions` restarts RoPE at 0 on each row's first real token, so a row gets the
    same tokens as it would alone), then one token per step. A prompt longer than the model's
    block_size keeps its last block_size tokens; when a row's context outgrows the block, it keeps
    its most recent SLIDE_KEEP_FRACTION * block_size tokens, re-prefilled at positions 0.. (the
    shared cache is refilled when its last slot is used; rows that still fit keep their context).
    Per step on the host: one transfer of the B sampled ids, plus list bookkeeping.

    `compile`: the decoding step runs compiled (compiled_decode_step) over a cache of block_size
    slots kept between calls, with tensor arguments of fixed shapes, so it is traced once and,
    on CUDA, replayed as a CUDA graph; the prefill stays eager. Greedy tokens equal the eager ones.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (the SEP/BOS id)")
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    block = model.cfg.block_size
    device = model.tok_emb.weight.device
    B = len(prompts)
    keep = max(1, int(block * SLIDE_KEEP_FRACTION))
    history = [list(p) for p in prompts]  # all tokens of each row (prompt + output), on the host
    starts = [max(0, len(h) - block) for h in history]  # each row's context: history[i][starts[i]:]
    S = block if compile else min(block, max(len(h) - s for h, s in zip(history, starts)) + max_new_tokens)
    stop = set(stop_ids)
    finished = [False] * B

    processor = _Penalties(cfg, history, stop, model.cfg.vocab_size, device)

    def next_ids(logits: torch.Tensor) -> torch.Tensor:
        logits = processor(logits.float())  # (B, V); bf16/fp16 under autocast: sample in fp32
        return sample(logits, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                      min_p=cfg.min_p, generator=generator)

    model.setup_cache(B, S, reuse=compile)
    step_fn = compiled_decode_step(device) if compile else None
    decoder = None if compile else token_decoder(model)   # a CPU: the modules' operations in one loop
    try:
        slots = torch.arange(S, device=device)
        batch, logits = _prefill(model, [h[s:] for h, s in zip(history, starts)], S, slots, device, pad_id,
                                 compile)
        pos = batch.P  # next free cache slot
        for step in range(max_new_tokens):
            new = next_ids(logits)  # (B,)
            tokens = new.tolist()  # the one host sync per step
            out = []
            for i, t in enumerate(tokens):
                history[i].append(t)
                if finished[i]:
                    out.append(-1)
                else:
                    out.append(t)
                    finished[i] = t in stop
            processor.add(new, tokens)
            yield out
            if all(finished) or step == max_new_tokens - 1:
                return
            if pos == S:
                # the cache is full (S == block): every row whose own context outgrew the block
                # keeps its most recent `keep` tokens (exactly as it would alone), then all rows
                # are prefilled again, left-padded
                for i, h in enumerate(history):
                    if len(h) - starts[i] > block:
                        starts[i] = len(h) - keep
                batch, logits = _prefill(model, [h[s:] for h, s in zip(history, starts)], S, slots, device, pad_id,
                                         compile)
                pos = batch.P
            elif decoder is not None:
                logits = decoder(new[:, None], pos, batch.key_mask, batch.positions)
                pos += 1
            elif step_fn is not None:
                logits = step_fn(model, new[:, None], slots[pos:pos + 1].clone(), batch.key_mask, batch.pad)
                pos += 1
            else:
                logits, _ = model(new[:, None], input_pos=slots[pos:pos + 1], key_mask=batch.key_mask,
                                  positions=batch.positions_at(pos, pos + 1), kv_len=pos + 1)
                logits = logits[:, -1]
                pos += 1
    finally:
        if not compile:      # a compiled step keeps its cache (a new one would be traced again)
            model.clear_cache()
        model.train(was_training)


def generate_tokens(model, prompt_ids: Sequence[int], max_new_tokens: int, cfg: SamplingConfig, *,
                    generator: Optional[torch.Generator] = None, stop_ids: Sequence[int] = (0, 1)
                    ) -> Iterator[int]:
    """KV-cached generation for one prompt: yields new token ids as they are produced. A token in
    `stop_ids` (SEP or <|endoftext|>) ends the sample and is not yielded."""
    for (t,) in generate_batch(model, [prompt_ids], max_new_tokens, cfg, generator=generator,
                               stop_ids=stop_ids):
        if t in stop_ids:
            return
        yield t


# =========================================================================== ids -> text

class IncrementalDecoder:
    """Token ids in, text pieces out; a character split across tokens is never cut.

    Each call decodes only a short window: the ids since the last point where the text was
    complete (`prefix`), compared with the ids up to the last emitted token (`read`). A window
    whose text ends in U+FFFD is an incomplete UTF-8 sequence and is held back until the next
    token completes it (or `flush` at the end). Because the window always starts right after a
    complete character, the pieces concatenate to exactly `tokenizer.decode(all ids)`.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        new_text = self.tokenizer.decode(self.ids[self.prefix:])
        if new_text.endswith("\ufffd"):
            return ""
        prefix_text = self.tokenizer.decode(self.ids[self.prefix:self.read]) if self.read > self.prefix else ""
        self.prefix, self.read = self.read, len(self.ids)
        return new_text[len(prefix_text):]

    def flush(self) -> str:
        """The held-back rest (e.g. a truncated character, shown as U+FFFD)."""
        if self.read == len(self.ids):
            return ""
        new_text = self.tokenizer.decode(self.ids[self.prefix:])
        prefix_text = self.tokenizer.decode(self.ids[self.prefix:self.read]) if self.read > self.prefix else ""
        self.prefix = self.read = len(self.ids)
        return new_text[len(prefix_text):]


class TextStream:
    """The text of one sample as it grows: UTF-8-safe pieces, cut before the first stop string.

    `push(token)` returns the text that is now final (never part of a possible stop string);
    `end(reason)` returns the rest. `text` is the final output, `finish_reason` why it ended.
    """

    def __init__(self, tokenizer, stop_strings: Sequence[str] = ()):
        self.decoder = IncrementalDecoder(tokenizer)
        self.stops = [s for s in stop_strings if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""
        self.shown = 0  # characters of text already returned
        self.n_tokens = 0
        self.finish_reason: Optional[str] = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def push(self, token_id: int) -> str:
        assert not self.done
        self.n_tokens += 1
        return self._add(self.decoder.push(token_id))

    def end(self, reason: str) -> str:
        """Mark the sample finished (unless a stop string already did) and return the rest."""
        if not self.done:
            rest = self._add(self.decoder.flush())
            if not self.done:
                self.finish_reason = reason
                rest += self.text[self.shown:]
                self.shown = len(self.text)
            return rest
        return ""

    def _add(self, piece: str) -> str:
        if not piece:
            return ""
        start = max(0, len(self.text) - self.longest + 1)  # a stop string may straddle pieces
        self.text += piece
        if self.stops:
            cut = min((i for i in (self.text.find(s, start) for s in self.stops) if i >= 0), default=-1)
            if cut >= 0:
                self.text = self.text[:cut]
                self.finish_reason = FINISH_STOP
                out = self.text[self.shown:]
                self.shown = len(self.text)
                return out
        safe = len(self.text) - self._held()
        out = self.text[self.shown:safe]
        self.shown = max(self.shown, safe)
        return out

    def _held(self) -> int:
        """Length of the longest tail of `text` that could still grow into a stop string."""
        for n in range(min(len(self.text), self.longest - 1), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0


# =========================================================================== prompts -> results

@dataclass
class Generation:
    prompt: str
    text: str            # the continuation (without the prompt), cut before a stop string
    tokens: int          # new tokens generated (an end-of-document token not counted)
    finish_reason: str   # "length" | "stop" | "end_of_document"
    sample: int = 0      # sample number for this prompt (0-based)
    token_ids: list = field(default_factory=list)  # the `tokens` generated ids

    def to_dict(self) -> dict:
        """The JSON Lines record."""
        return {"prompt": self.prompt, "text": self.text, "tokens": self.tokens,
                "finish_reason": self.finish_reason, "sample": self.sample, "token_ids": self.token_ids}


def encode_prompt(tokenizer, prompt: str, sep_id: int = 0) -> list[int]:
    """Prompt ids as in the training stream: the SEP/BOS id, then the text (no special tokens added)."""
    return [sep_id] + tokenizer.encode(prompt, add_special_tokens=False).ids


def _as_trained(text: str, lowercase: bool) -> str:
    """`text` in the form prepare-corpus gives a corpus: lowercased where `lowercase`, then NFC."""
    return unicodedata.normalize("NFC", text.lower() if lowercase else text)


def generate_texts(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, cfg: SamplingConfig,
                   stop_strings: Sequence[str] = (), num_samples: int = 1, batch_size: int = 1,
                   generator: Optional[torch.Generator] = None, compile: bool = False,
                   on_start: Optional[Callable[[int], None]] = None,
                   on_text: Optional[Callable[[int, str], None]] = None,
                   lowercase: bool = False) -> list[Generation]:
    """Generate `num_samples` continuations of each prompt -> results, prompt-major
    (result r is prompt r // num_samples, sample r % num_samples).

    Prompts and stop strings are put in Unicode NFC, as prepare-corpus puts every corpus (a
    decomposed "ó", pasted from a PDF, would reach the model as a combining accent it never saw),
    and lowercased where `lowercase`: the model was trained on lowercased text
    (TokenizerIdentity.lowercase). A result keeps its prompt as given.

    batch_size 1: results one after another; `on_start(r)` is called before result r and
    `on_text(r, piece)` with each final piece of its text as it is produced (streaming).
    batch_size > 1: rows run in left-padded batches (similar prompt lengths together); the
    callbacks are not available. Greedy results do not depend on the batch size.
    `compile`: a compiled decoding step (generate_batch).
    """
    if (on_start or on_text) and batch_size != 1:
        raise ValueError("streaming callbacks need batch_size == 1")
    ids = special_ids(tokenizer)
    stop_ids = (ids["sep"], ids["eos"])
    rows = [(p, j) for p in prompts for j in range(num_samples)]
    encoded = {p: encode_prompt(tokenizer, _as_trained(p, lowercase), ids["sep"]) for p in prompts}
    stop_strings = [_as_trained(s, lowercase) for s in stop_strings]
    results: list[Optional[Generation]] = [None] * len(rows)

    # rows of similar prompt length together: less padding (results are put back in order)
    order = sorted(range(len(rows)), key=lambda r: len(encoded[rows[r][0]])) if batch_size > 1 \
        else list(range(len(rows)))
    for first in range(0, len(order), batch_size):
        chunk = order[first:first + batch_size]
        if on_start:
            on_start(chunk[0])
        streams = [TextStream(tokenizer, stop_strings) for _ in chunk]
        steps = generate_batch(model, [encoded[rows[r][0]] for r in chunk], max_new_tokens, cfg,
                               generator=generator, stop_ids=stop_ids, pad_id=ids["pad"], compile=compile)
        for step in steps:
            for r, s, t in zip(chunk, streams, step):
                if s.done or t < 0:
                    continue
                piece = s.end(FINISH_END_OF_DOCUMENT) if t in stop_ids else s.push(t)
                if piece and on_text:
                    on_text(r, piece)
            if all(s.done for s in streams):
                steps.close()
                break
        for r, s in zip(chunk, streams):
            piece = s.end(FINISH_LENGTH)
            if piece and on_text:
                on_text(r, piece)
            results[r] = Generation(rows[r][0], s.text, s.n_tokens, s.finish_reason, rows[r][1],
                                    s.decoder.ids[:s.n_tokens])
    return results


def complete(model, tokenizer, prompt: str, max_new_tokens: int = 40, temperature: float = 0.0,
             lowercase: bool = False) -> str:
    """The continuation of `prompt` (without the prompt), greedy by default. For training's
    per-evaluation sample: the model's train/eval mode is restored and its cache freed.
    `lowercase`: as generate_texts."""
    cfg = SamplingConfig(temperature=temperature, top_k=0, top_p=1.0)
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=_unwrap(model).tok_emb.weight.device).manual_seed(0)
    return generate_texts(model, tokenizer, [prompt], max_new_tokens=max_new_tokens, cfg=cfg,
                          generator=generator, lowercase=lowercase)[0].text


# =========================================================================== the generate stage

def read_prompts(path, separator: Optional[str] = None) -> list[str]:
    """Prompts from a UTF-8 file: one per line (blank lines skipped), or, with `separator`,
    blocks of lines between lines equal to the separator (surrounding blank lines trimmed)."""
    path = require_file(path, "prompt file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a leading byte-order mark is not prompt text
    except UnicodeDecodeError as e:
        raise UserError(f"prompt file {path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8")
    lines = text.splitlines()
    if separator is None:
        prompts = [l for l in lines if l.strip()]
    else:
        prompts, block = [], []
        for line in lines + [separator]:
            if line.strip() == separator.strip():
                body = "\n".join(block).strip("\n")
                if body.strip():
                    prompts.append(body)
                block = []
            else:
                block.append(line)
    if not prompts:
        raise UserError(f"prompt file {path} has no prompts (only blank lines); write one prompt per line")
    return prompts


def _plain_parts(prompt: str, prompt_no: int, n_prompts: int, sample: int, num_samples: int,
                single: bool) -> tuple[str, str]:
    """(header, footer) of one result in plain text: the result reads header + text + footer.
    `single` (one result on stdout): the prompt and its continuation as one running text."""
    if single:
        return prompt, "\n"
    title = f"=== prompt {prompt_no + 1}/{n_prompts}"
    if num_samples > 1:
        title += f", sample {sample + 1}/{num_samples}"
    return f"{title} ===\n{prompt}\n--- output ---\n", "\n\n"


def _write_results(output, results: list[Generation], n_prompts: int, num_samples: int) -> None:
    """--output: JSON Lines (.jsonl) or plain text with a header per result, written atomically."""
    jsonl = str(output).lower().endswith(".jsonl")
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r, g in enumerate(results):
            if jsonl:
                f.write(json.dumps(g.to_dict(), ensure_ascii=False) + "\n")
            else:
                header, footer = _plain_parts(g.prompt, r // num_samples, n_prompts, g.sample, num_samples,
                                              single=False)
                f.write(header + g.text + footer)
    log.info(f"wrote {len(results)} result(s) to {output}")


def _utf8_stdout():
    if (sys.stdout.encoding or "").lower().replace("-", "") != "utf8":
        sys.stdout.reconfigure(encoding="utf-8")
    return sys.stdout


def run_generate(*, tokenizer, ckpt_path, prompts: Sequence[str], max_new_tokens: int,
                 cfg: SamplingConfig, stop_strings: Sequence[str] = (), seed: Optional[int] = None,
                 num_samples: int = 1, stream: bool = False, batch_size: int = 1,
                 output=None, device: str = "auto", precision: str = "auto",
                 compile: bool = False, quantize: Optional[str] = None) -> list[Generation]:
    """The generate stage: load, generate, print (stdout) or write `output` (.jsonl = JSON Lines,
    else plain text), log tokens/s. Streaming prints each piece of text as soon as it is final;
    its stdout is byte for byte what the same run without streaming prints. `precision`: see
    precision.resolve_precision (measured on the decoding shapes: batch_size rows per step); on a
    CPU bf16 and `quantize` ("int8") run weight-only (inference.py).
    `compile`: torch.compile the decoding step (CUDA graphs on CUDA); the first step of each
    batch size pays the compilation (tens of seconds), so it pays off for long or many samples."""
    if any(s == "" for s in stop_strings):
        raise UserError("--stop: empty stop strings are not allowed; pass the text that ends a sample")
    if seed is not None and not 0 <= seed < 2**63:
        raise UserError(f"--seed {seed} must be in 0..2**63-1")
    if stream and batch_size > 1:
        raise UserError("--stream prints one sample at a time; drop --batch-generate (or --stream)")
    if output is not None:
        if Path(output).is_dir():
            raise UserError(f"--output {output} is a folder; pass a file name (.jsonl for JSON Lines)")
    identity = as_identity(tokenizer)            # a TokenizerIdentity, or the path of tokenizer.json
    if output is not None:
        refuse_same_file([identity.path, ckpt_path], output)
    dev = resolve_device(device)
    tokenizer = identity.tokenizer
    model, _ = load_model(ckpt_path, dev, identity)
    if identity.lowercase and any(t != t.lower() for t in (*prompts, *stop_strings)):
        log.info("the tokenizer was trained on lowercased text (prepare-corpus without --preserve-case): "
                 "prompts and --stop strings are lowercased to match")
    prec = inference.resolve_precision_for(precision, dev, quantize, n_embd=model.cfg.n_embd,
                                           vocab_size=model.cfg.vocab_size, rows=batch_size,
                                           inference_layers=model.cfg.n_layer)
    context = inference.prepare(model, prec, quantize, weight_only=True)
    inference.log_setup(prec, quantize, "generation", weight_only=True)
    generator = torch.Generator(device=dev).manual_seed(seed) if seed is not None else None

    n_results = len(prompts) * num_samples
    single = n_results == 1  # stdout shows one result as running text (files always get headers)

    def parts(r: int) -> tuple[str, str]:
        return _plain_parts(prompts[r // num_samples], r // num_samples, len(prompts),
                            r % num_samples, num_samples, single)

    out = _utf8_stdout() if stream or output is None else None

    def on_start(r: int) -> None:            # streaming: a result begins (the previous one ends)
        if r > 0:
            out.write(parts(r - 1)[1])
        out.write(parts(r)[0])
        out.flush()

    def on_text(r: int, piece: str) -> None:  # streaming: text that is final
        out.write(piece)
        out.flush()

    start = time.perf_counter()
    try:
        with context():
            results = generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, cfg=cfg,
                                     stop_strings=stop_strings, num_samples=num_samples, batch_size=batch_size,
                                     generator=generator, compile=compile, lowercase=identity.lowercase,
                                     **(dict(on_start=on_start, on_text=on_text) if stream else {}))
    except _compile_errors() as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"--compile: torch.compile failed on this machine ({first}); run without --compile "
                        f"(inductor needs a C++ compiler on CPU, Triton on GPU)")
    elapsed = time.perf_counter() - start
    if stream:
        out.write(parts(n_results - 1)[1])
        out.flush()
    elif output is None:
        for r, g in enumerate(results):
            header, footer = parts(r)
            out.write(header + g.text + footer)
        out.flush()
    if output is not None:
        _write_results(output, results, len(prompts), num_samples)
    n_tokens = sum(g.tokens for g in results)
    log.info(f"generated {n_tokens} tokens in {elapsed:.2f}s ({n_tokens / max(elapsed, 1e-9):.1f} tokens/s"
             f"{f', batches of {batch_size}' if batch_size > 1 else ''}, {dev.type}, {prec.name}"
             f"{f', {quantize} weights' if quantize else ''}"
             f"{', compiled, compilation included' if compile else ''})")
    return results
