"""torchrun (DDP, gloo on CPU) runs as a user starts them: two ranks equal one process with the
same global batch, a signal to one rank stops both, a run moves between 1 and 2 ranks and
continues from its data position, and two launchers with --nnodes 2 over 127.0.0.1 train together."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, assert_user_error, corpus_and_tokenizer, run_cli

SHAPE = ["--config", "custom", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32",
         "--batch-size", "2", "--eval-every", "10", "--json"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return corpus_and_tokenizer(tmp_path_factory.mktemp("ddp"), n_chars=30_000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, nproc: int = 2, extra=()) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *(extra or ["--standalone"]),
            f"--nproc_per_node={nproc}", str(ROOT / "main.py"), *map(str, args)]


def train_args(data, outdir: Path, steps: int, *more) -> list:
    return ["train", "--tokenizer", data["tok"], "--corpus", data["corpus"], "--outdir", outdir, *SHAPE,
            "--max-steps", steps, *more]


def weights(outdir: Path, name: str = "ckpt_last.pt") -> dict:
    return torch.load(outdir / name, weights_only=True)


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    wa, wb = weights(a)["model"], weights(b)["model"]
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst <= atol, worst


def reference(data, tmp_path, steps: int) -> Path:
    """One process, 2 micro-batches per step: the global batch of 2 ranks x 1."""
    out = tmp_path / "one"
    proc = run_cli(*train_args(data, out, steps, "--accumulation-steps", "2"), env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The PID of torchrun's worker with RANK=rank."""
    for _ in range(600):
        for child in Path("/proc").glob("[0-9]*"):
            try:
                status = (child / "status").read_text()
                env = (child / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"PPid:\t{launcher.pid}\n" in status and f"RANK={rank}".encode() in env:
                return int(child.name)
        time.sleep(0.05)
    raise AssertionError(f"no worker with RANK={rank}")


def signal_after_first_checkpoint(cmd: list[str], outdir: Path, pid_of) -> subprocess.CompletedProcess:
    """Start cmd, SIGTERM the process pid_of(launcher) once ckpt_last.pt exists, wait for the end."""
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        target = pid_of(launcher)
        deadline = time.monotonic() + 300
        while not (outdir / "ckpt_last.pt").exists() and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(target, signal.SIGTERM)
        out, err = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    return subprocess.CompletedProcess(cmd, launcher.returncode, out, err)


def test_two_ranks_equal_one_process_with_the_same_global_batch_and_write_one_set_of_outputs(data, tmp_path):
    one = reference(data, tmp_path, 20)
    two = tmp_path / "two"
    proc = subprocess.run(torchrun(*train_args(data, two, 20)), cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)                                    # rank 0 alone prints the summary
    assert summary["steps"] == 20 and summary["tokens_seen"] == json.loads((one / "history.json").read_text()
                                                                           )[-1]["tokens_seen"]
    assert_same_weights(one, two)
    h1, h2 = (json.loads((d / "history.json").read_text()) for d in (one, two))
    for a, b in zip(h1, h2):                                              # losses reduced over both ranks
        assert a["tokens_seen"] == b["tokens_seen"]
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-6)
    ckpt = weights(two)
    assert ckpt["state"]["world_size"] == 2 and len(ckpt["state"]["rng"]["ranks"]) == 2
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    log = (two / "train.log").read_text(encoding="utf-8")
    assert log.count("model: custom") == 1                               # rank 0 writes the log, once
    assert "DDP over 2 processes (gloo): global batch 2 x 1 x 2 = 4 windows" in log


def test_signal_to_one_rank_stops_both_and_the_run_moves_between_1_and_2_ranks(data, tmp_path):
    steps = 100       # inside the first epoch: at its end 2 ranks leave out an odd last batch, 1 process does not
    one = reference(data, tmp_path, steps)
    assert steps < json.loads((one / "config.json").read_text())["data"]["steps_per_epoch"]

    two_then_one = tmp_path / "2to1"                                      # SIGTERM to rank 1 only
    proc = signal_after_first_checkpoint(torchrun(*train_args(data, two_then_one, steps)), two_then_one,
                                         lambda launcher: rank_pid(launcher, 1))
    assert proc.returncode != 0                                           # both ranks stopped (143), no hang
    stopped = weights(two_then_one)["state"]
    assert 10 <= stopped["step"] < steps and stopped["world_size"] == 2
    assert "terminated: saved" in (two_then_one / "train.log").read_text(encoding="utf-8")
    proc = run_cli(*train_args(data, two_then_one, steps, "--accumulation-steps", "2"), env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resumed on 1 process(es), the run was on 2" in proc.stderr
    assert_same_weights(one, two_then_one)

    one_then_two = tmp_path / "1to2"
    cmd = [sys.executable, str(ROOT / "main.py"), *map(str, train_args(data, one_then_two, steps,
                                                                         "--accumulation-steps", "2"))]
    proc = signal_after_first_checkpoint(cmd, one_then_two, lambda launcher: launcher.pid)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert weights(one_then_two)["state"]["step"] < steps
    proc = subprocess.run(torchrun(*train_args(data, one_then_two, steps)), cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(one, one_then_two)


def test_two_launchers_with_nnodes_2_over_localhost_train_together(data, tmp_path):
    one = reference(data, tmp_path, 20)
    out, port = tmp_path / "nodes", free_port()
    nodes = [subprocess.Popen(torchrun(*train_args(data, out, 20), nproc=1,
                                       extra=["--nnodes=2", f"--node_rank={rank}", "--master_addr=127.0.0.1",
                                              f"--master_port={port}"]),
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    results = [n.communicate(timeout=600) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    assert json.loads(results[0][0])["steps"] == 20 and results[1][0] == ""   # node 1's rank prints nothing
    assert_same_weights(one, out)


def test_no_rank_keeps_the_process_group_alive_past_main(data, tmp_path):
    """A finished run's ranks must not hold the gloo group after main() returns: the DDP wrapper
    sat in a reference cycle, and its group, torn down during interpreter shutdown, could abort
    one rank (SIGABRT) and make torchrun report a finished run as failed."""
    probe = tmp_path / "probe.py"
    probe.write_text(f"""import gc, sys
sys.path.insert(0, {str(ROOT)!r})
import main
rc = main.main(sys.argv[1:])
held = [type(o).__name__ for o in gc.get_objects() if type(o).__name__ in ("Trainer", "DistributedDataParallel")]
print("still held:", held, file=sys.stderr)
sys.exit(rc or (3 if held else 0))
""", encoding="utf-8")
    cmd = torchrun(*train_args(data, tmp_path / "run", 2))
    cmd[cmd.index(str(ROOT / "main.py"))] = str(probe)
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("still held: []") == 2


def test_bad_input_under_torchrun_is_an_error_line_and_exit_2_with_nothing_written(data, tmp_path):
    proc = subprocess.run(torchrun(*train_args(data, tmp_path / "bad", 20, "--lr", "-1")), cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0                  # (torchrun then reports the failed workers in its own words)
    assert "error: invalid" in proc.stderr and "lr" in proc.stderr
    assert not (tmp_path / "bad").exists()
    lone = run_cli("train", "--tokenizer", data["tok"], "--corpus", data["corpus"], "--outdir", tmp_path / "x",
                   *SHAPE, "--max-steps", "2", env={"WORLD_SIZE": "2", "RANK": "5"})
    assert_user_error(lone)


def test_time_budget_under_torchrun_follows_rank_0s_plan_on_every_rank(data, tmp_path):
    out = tmp_path / "budget"
    args = ["train", "--tokenizer", data["tok"], "--corpus", data["corpus"], "--outdir", out, *SHAPE,
            "--time-budget", "15s", "--patience", "0"]   # the budget, not early stopping, ends it
    proc = subprocess.run(torchrun(*args), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["stopped_reason"] == "time_budget"
    cfg = json.loads((out / "config.json").read_text())["train"]
    assert summary["steps"] == cfg["total_steps"] and cfg["decay_start"] is not None
    assert weights(out)["state"]["budget_fixed"] is True


def _together_worker(rank: int, port: int, out: str) -> None:
    import distributed
    from common import UserError
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    distributed.init(torch.device("cpu"))
    result = {}
    try:
        with distributed.together("opening the corpus"):
            if rank == 1:
                raise UserError("corpus file /data/x.txt not found", code=2)
        result["raised"] = None
    except UserError as e:
        result = {"raised": str(e), "code": e.code, "shared": getattr(e, "shared", False)}
    result["sum"] = distributed.all_sum([rank + 1.0, 1.0])        # the group still works afterwards
    distributed.shutdown()
    Path(out, f"{rank}.json").write_text(json.dumps(result))


def test_an_error_on_one_rank_is_raised_on_every_rank_and_printed_by_rank_0_only(tmp_path):
    torch.multiprocessing.spawn(_together_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    assert r0 == {"raised": "rank 1 failed opening the corpus: corpus file /data/x.txt not found", "code": 2,
                  "shared": False, "sum": [3.0, 2.0]}
    assert r1 == {"raised": "corpus file /data/x.txt not found", "code": 2, "shared": True, "sum": [3.0, 2.0]}
