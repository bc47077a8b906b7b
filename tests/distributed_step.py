"""One PPO step of a tiny policy in each process of a launcher's group (`torchrun` / `accelerate launch`), for
tests/test_distributed.py: each process steps on its shard of the saved samples; rank 0 saves the weights.

    python tests/distributed_step.py SAMPLES OUT KIND MODEL BATCH MINI_BATCH EPOCHS
"""

import sys
from pathlib import Path

import torch

from rlhf.config import LoRAConfig, PolicyConfig, PPOConfig
from rlhf.distributed import join
from rlhf.models import load_policy
from rlhf.ppo import PPOTrainer

TARGETS = {"t5": ["q", "v", "wi"], "llama": ["q_proj", "v_proj", "up_proj"]}


def trainable(policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}


def one_step(samples: dict, kind: str, model: str, cfg: PPOConfig, group=None) -> tuple[dict, dict]:
    """The step on this process's shard -> the trainable weights after it, and the step's statistics."""
    from rlhf.distributed import SINGLE

    group = group or SINGLE
    torch.manual_seed(0)
    lora = LoRAConfig(r=4, alpha=8, dropout=0.0, target_modules=TARGETS[kind])
    policy = load_policy(PolicyConfig(name_or_path=model, lora=lora), device="cpu")
    trainer = PPOTrainer(policy, cfg, seed=0, group=group)
    rows = {k: group.shard(v) for k, v in samples.items()}
    stats = trainer.step(
        rows["queries"], rows["responses"], rows["scores"], old_logprobs=rows["logprobs"], old_values=rows["values"]
    )
    return trainable(policy), stats


if __name__ == "__main__":
    samples_file, out, kind, model, batch, mini, epochs = sys.argv[1:]
    group, _ = join()
    torch.set_num_threads(1)
    cfg = PPOConfig(
        batch_size=int(batch), mini_batch_size=int(mini), ppo_epochs=int(epochs), micro_batch_size=1, learning_rate=1e-2
    )
    weights, stats = one_step(torch.load(samples_file), kind, model, cfg, group)
    if group.is_main:
        torch.save({"weights": weights, "stats": stats, "world": group.world}, Path(out))
