"""Data-parallel PPO (rlhf.distributed): two processes on gloo take the step one process takes on the same samples."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf.config import GenerationConfig, PPOConfig
from rlhf.ppo import rollout

sys.path.insert(0, str(Path(__file__).parent))
from distributed_step import one_step  # noqa: E402
from test_ppo import make_policy, queries_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _samples(kind, path, n, file):
    policy = make_policy(path, kind)
    queries = queries_for(policy, n)
    torch.manual_seed(1)
    ro = rollout(policy, queries, GenerationConfig(min_new_tokens=3, max_new_tokens=9, batch_size=n), max_new_tokens=9)
    scores = torch.linspace(-1.0, 1.5, n).tolist()
    samples = {"queries": queries, "responses": ro.responses, "scores": scores, "logprobs": ro.logprobs}
    samples["values"] = ro.values
    torch.save(samples, file)
    return samples


@pytest.mark.parametrize(
    "kind,batch,mini,epochs",
    [("llama", 8, 4, 2), ("t5", 4, 1, 1)],  # t5: mini-batches of 1, so one process holds none of each
)
def test_two_processes_take_the_one_process_step(kind, batch, mini, epochs, tiny_llama, tiny_t5, tmp_path):
    path = str(tiny_llama if kind == "llama" else tiny_t5)
    samples = _samples(kind, path, batch, tmp_path / "samples.pt")
    cfg = PPOConfig(batch_size=batch, mini_batch_size=mini, ppo_epochs=epochs, micro_batch_size=1, learning_rate=1e-2)
    before = one_step(samples, kind, path, PPOConfig(batch_size=batch, mini_batch_size=mini, learning_rate=0.0))[0]
    want, want_stats = one_step(samples, kind, path, cfg)

    out = tmp_path / "two.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    args = [str(ROOT / "tests" / "distributed_step.py"), str(tmp_path / "samples.pt"), str(out), kind, path]
    done = subprocess.run(
        [*cmd, *args, str(batch), str(mini), str(epochs)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = torch.load(out)
    assert got["world"] == 2
    moved = max((want[n] - before[n]).abs().max().item() for n in want)
    assert moved > 1e-3, "the step moved the weights (else equality would prove nothing)"
    for name, value in want.items():
        # float32 sums taken in another order: 1e-5 is ~1% of the smallest change the step makes here
        torch.testing.assert_close(got["weights"][name], value, atol=1e-5, rtol=1e-4, msg=name)
    for key in (k for k in want_stats if not k.startswith("time/")):
        assert got["stats"][key] == pytest.approx(want_stats[key], rel=1e-4, abs=1e-5), key


def test_accelerate_launch_trains_over_two_processes_and_only_the_first_writes(
    tiny_llama, tiny_classifier, chitchat_jsonl, tmp_path
):
    from test_engine import tiny_args

    out = tmp_path / "run"
    args = tiny_args(tiny_llama, tiny_classifier, chitchat_jsonl, out)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # --multi_gpu is accelerate's torchrun launcher; on a machine without GPUs its processes join over gloo on the
    # CPU (`--cpu` would start one process: accelerate's multi-CPU mode goes through mpirun)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "-m", "rlhf"]
    done = subprocess.run([*launch, *args], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "data-parallel over 2 processes (cpu): each step's 4 samples are 2 shards of 2" in done.stdout
    assert done.stdout.count("saved ") == 1, "one process wrote the checkpoint"
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    assert (out / "eval.json").exists() and (out / "adapter" / "adapter_config.json").exists()
