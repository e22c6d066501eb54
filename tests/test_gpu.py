"""CUDA paths (marker `gpu`: skipped without a CUDA GPU; bench/gpu.sh runs them with
`pytest -m gpu`): AMP bf16 and fp16 (with a GradScaler) optimizer steps lower the loss, a
training step never waits for the GPU, a torch.compile'd training model gives the eager model's
losses, and a run resumed on CUDA ends with the weights of an uninterrupted one, bit for bit."""
from __future__ import annotations

import copy

import pytest
import torch

import optimizers
import training
from config import ModelConfig, TrainConfig
from conftest import corpus_and_tokenizer, run_cli
from model import GPT
from precision import Precision

pytestmark = pytest.mark.gpu

SEP = 0
CUDA = torch.device("cuda")


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=256, block_size=32, n_layer=2, n_head=2, n_embd=32, sep_token_id=SEP)
    return GPT(cfg).to(CUDA).train()


def fixed_batch(B: int = 4, T: int = 32, vocab: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) on the host, as the data loader gives them: windows holding several documents."""
    g = torch.Generator().manual_seed(1)
    seq = torch.randint(3, vocab, (B, T + 1), generator=g)   # ids 0..2 are the special tokens
    seq[:, 0] = SEP
    seq[0, 9] = seq[1, 17] = seq[3, 5] = SEP
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


def losses(model, train_model, precision: Precision, steps: int, lr: float = 1e-2) -> list[float]:
    """`steps` optimizer steps (training.optimizer_step, AdamW) on one fixed batch; the loss of each."""
    optimizer = optimizers.make_optimizer(model, TrainConfig(lr=lr, optimizer="adamw"))
    scaler = torch.amp.GradScaler("cuda", enabled=precision.use_scaler)
    batch = fixed_batch()
    out = []
    for _ in range(steps):
        loss, _, _ = training.read_step(training.optimizer_step(model, train_model, optimizer, scaler, [batch], lr=lr,
                                                                grad_clip=1.0, device=CUDA, autocast=precision.autocast))
        assert loss is not None                    # no step skipped for a non-finite loss
        out.append(loss)
    return out


@pytest.mark.parametrize("optimizer,precision", [("adamw", "bf16"), ("muon", "bf16"), ("muon", "fp16")])
def test_a_training_step_never_waits_for_the_gpu(optimizer, precision):
    """optimizer_step leaves its loss, token count, gradient norm and skip flag on the device and
    decides the update there: CUDA's sync debug mode raises on any host sync inside the step."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model = tiny_model()
    prec = Precision(precision, "cuda", precision)
    opt = optimizers.make_optimizer(model, TrainConfig(lr=1e-3, optimizer=optimizer))
    scaler = torch.amp.GradScaler("cuda", enabled=prec.use_scaler)
    batch = tuple(t.pin_memory() for t in fixed_batch())

    def step() -> torch.Tensor:
        return training.optimizer_step(model, model, opt, scaler, [batch], lr=1e-3, grad_clip=1.0, device=CUDA,
                                       autocast=prec.autocast)

    step()                                         # the first step allocates and compiles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        stats = [step() for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    read = [training.read_step(s) for s in stats]
    assert all(loss is not None and tokens == batch[1].numel() for loss, _, tokens in read)


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_amp_steps_lower_the_loss(name):
    if name == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    precision = Precision(name, "cuda", name)
    assert precision.use_scaler == (name == "fp16")     # fp16 steps go through the GradScaler
    model = tiny_model()
    seen = losses(model, model, precision, steps=10)
    assert all(torch.isfinite(torch.tensor(seen))), seen
    assert seen[-1] < 0.9 * seen[0], seen
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_compiled_and_eager_training_give_the_same_losses(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)   # fp32 on both sides
    fp32 = Precision("fp32", "cuda", "fp32")
    eager = tiny_model()
    compiled = copy.deepcopy(eager)                     # the same weights
    want = losses(eager, eager, fp32, steps=4)
    got = losses(compiled, torch.compile(compiled), fp32, steps=4)
    assert got == pytest.approx(want, rel=1e-3)


def test_resume_on_cuda_is_exact(tmp_path):
    """8 steps in one go against 4, then `--resume` to 8: the same ckpt_last.pt weights, bit for bit.
    The learning rate is constant (no warmup, min-lr = lr), so the schedule does not depend on
    --max-steps; dropout makes the CUDA RNG state part of what must be restored."""
    data = corpus_and_tokenizer(tmp_path)
    args = ["train", "--tokenizer", data["tok"], "--corpus", data["corpus"], "--device", "cuda",
            "--config", "custom", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32",
            "--batch-size", "4", "--eval-batches", "2", "--eval-every", "2", "--lr", "3e-3", "--min-lr", "3e-3",
            "--warmup-steps", "0", "--dropout", "0.1", "--family", "neox", "--optimizer", "adamw"]
    env = {"OMP_NUM_THREADS": "1"}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for proc in (run_cli(*args, "--outdir", whole, "--max-steps", "8", env=env),
                 run_cli(*args, "--outdir", cut, "--max-steps", "4", env=env)):
        assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli(*args, "--outdir", cut, "--max-steps", "8", "--resume", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and "at step 4" in proc.stderr, proc.stderr[-3000:]
    a, b = (torch.load(d / "ckpt_last.pt", map_location="cpu", weights_only=True) for d in (whole, cut))
    assert a["state"]["step"] == b["state"]["step"] == 8
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), (k, (a["model"][k] - b["model"][k]).abs().max())


def test_cuda_graph_decoding_gives_the_eager_greedy_tokens():
    """generate_batch(compile=True) on CUDA (torch.compile mode "reduce-overhead": the decode step
    replayed as a CUDA graph) gives the eager greedy tokens, alone and in a padded batch with a
    sliding context, and a second call reuses the captured step."""
    import generation as G
    from sampling import SamplingConfig
    model = tiny_model(seed=3).eval()
    with torch.no_grad():                             # sharper logits than the default init: no near-ties
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    greedy = SamplingConfig(temperature=0.0)
    for prompts in ([[0, 5, 6]], [[0, 5], [0] + list(range(20, 45)), [0, 7, 8, 9]]):
        want = list(G.generate_batch(model, prompts, 40, greedy, stop_ids=()))
        for _ in range(2):
            assert list(G.generate_batch(model, prompts, 40, greedy, stop_ids=(), compile=True)) == want
        model.clear_cache()
