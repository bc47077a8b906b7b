"""Seeded sampling in a process where other threads sample too (the app's pool refill beside an evaluation)."""

import copy
import threading

import torch

from rlhf.config import GenerationConfig, LoRAConfig, PolicyConfig
from rlhf.models import load_policy
from rlhf.ppo import generate, rollout


def test_a_seeded_draw_is_what_manual_seed_gives_whatever_other_threads_sample(tiny_llama):
    policy = load_policy(
        PolicyConfig(name_or_path=str(tiny_llama), lora=LoRAConfig(r=4, target_modules=["q_proj", "v_proj"])), "cpu"
    )
    tok = policy.tokenizer
    queries = [torch.tensor(tok(t)["input_ids"]) for t in ("hello there", "a b c d", "how are you", "ok")]
    gen = GenerationConfig(min_new_tokens=4, max_new_tokens=8, batch_size=2)  # two generation calls
    torch.manual_seed(7)
    want = generate(policy, queries, gen)  # one thread: the stream runs on from the first call into the second

    before = torch.get_rng_state()
    assert all(torch.equal(a, b) for a, b in zip(generate(policy, queries, gen, seed=7), want, strict=True))
    assert torch.equal(torch.get_rng_state(), before), "a seeded call leaves the global stream as it was"

    other, stop, drawn = copy.deepcopy(policy), threading.Event(), []

    def sample_meanwhile():  # a second model, as the app's pool copy, sampling from the global stream
        while not stop.is_set():
            drawn.append(generate(other, queries[:2], gen))

    thread = threading.Thread(target=sample_meanwhile)
    thread.start()
    try:
        got = [generate(policy, queries, gen, seed=7) for _ in range(4)]
        logged = rollout(policy, queries, gen, seed=7)
    finally:
        stop.set()
        thread.join()
    assert drawn, "the other thread sampled while the seeded calls ran"
    for answers in [*got, logged.responses]:
        assert all(torch.equal(a, b) for a, b in zip(answers, want, strict=True))


def test_one_token_per_row_is_drawn_from_the_row_distribution():
    """The draw that sampling a token makes (`torch.multinomial(probs, 1)`, one uniform number per row through the
    cumulative distribution) hits each entry as often as its probability says, and never an entry without mass."""
    probs = torch.tensor([[0.5, 0.0, 0.2, 0.3], [0.0, 0.0, 1.0, 0.0], [2.0, 0.0, 0.0, 6.0]])  # the last unnormalised
    torch.manual_seed(0)
    n = 20_000
    drawn = torch.cat([torch.multinomial(probs, 1) for _ in range(n)], dim=1)
    assert drawn.shape == (3, n)
    freq = torch.stack([(drawn == i).float().mean(1) for i in range(4)], dim=1)
    want = probs / probs.sum(1, keepdim=True)
    assert freq[want == 0].sum() == 0, "an entry without mass is never drawn"
    # 4.5 binomial standard deviations at n = 20,000 is under 0.016 for any probability
    torch.testing.assert_close(freq, want, atol=0.016, rtol=0)


def test_invalid_weights_still_raise_torchs_own_error():
    import pytest

    for bad in ([float("nan"), 1.0], [-0.5, 1.0], [float("inf"), 1.0], [0.0, 0.0]):
        with pytest.raises(RuntimeError):
            torch.multinomial(torch.tensor([bad]), 1)
    assert torch.multinomial(torch.tensor([[1.0, 3.0]]), 2).shape == (1, 2), "more samples per row go to torch"
