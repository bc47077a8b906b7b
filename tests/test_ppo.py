"""PPO on tiny T5 and Llama-like policies built in a temp dir and loaded through from_pretrained."""

import dataclasses
import math

import pytest
import torch

from rlhf.config import GenerationConfig, LoRAConfig, PolicyConfig, PPOConfig
from rlhf.core import logprobs_from_logits
from rlhf.models import load_policy
from rlhf.ppo import PPOTrainer, generate, rollout
from rlhf.prompts import encode_prompt

TARGETS = {
    "t5": ["q", "k", "v", "o", "wi", "wo", "lm_head"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"],
}
DIALOGUES = [
    "#Person1#: hello, how are you?\n#Person2#: good, thanks.",
    "#Person1#: I hate mondays.\n#Person2#: me too, they are bad.",
    "#Person1#: do you love music?\n#Person2#: yes, I love it.",
    "#Person1#: what a bad day.\n#Person2#: tomorrow will be good.",
]


@pytest.fixture(params=["t5", "llama"])
def arch(request, tiny_t5, tiny_llama):
    return request.param, (tiny_t5 if request.param == "t5" else tiny_llama)


def make_policy(path, kind, seed=0, r=8):
    torch.manual_seed(seed)
    cfg = PolicyConfig(
        name_or_path=str(path), lora=LoRAConfig(r=r, alpha=2 * r, dropout=0.05, target_modules=TARGETS[kind])
    )
    return load_policy(cfg, device="cpu")


def queries_for(policy, n):
    tmpl = "Summarize the following conversation.\n\n{dialogue}\n\nSummary:\n"
    return [encode_prompt(policy.tokenizer, DIALOGUES[i % len(DIALOGUES)], tmpl, None) for i in range(n)]


GEN = GenerationConfig(min_new_tokens=8, max_new_tokens=8, batch_size=16)


def test_seq2seq_mask_keeps_the_first_generated_token(tiny_t5):
    """trl 0.11.4 masks the log-prob of the first generated token of encoder-decoder responses
    (tests/fixtures: seq2seq_batched_forward_pass.masks has a 0 in column 0). We keep it."""
    policy = make_policy(tiny_t5, "t5")
    q = queries_for(policy, 2)
    responses = [torch.tensor([5, 6, 7, 1]), torch.tensor([8, 9, 1])]
    batch = policy.collate(q, responses)
    assert batch.response_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    logits, _ = policy(batch)
    ours = logprobs_from_logits(logits, batch.responses)
    # the first token's log-prob, computed directly: decoder sees only the start token
    direct = policy.model(
        input_ids=q[0][None], decoder_input_ids=torch.tensor([[policy.model.config.decoder_start_token_id]])
    ).logits.log_softmax(-1)[0, 0, 5]
    assert ours[0, 0].item() == pytest.approx(direct.item(), abs=1e-5)


def test_causal_logprobs_do_not_depend_on_left_padding(tiny_llama):
    policy = make_policy(tiny_llama, "llama")
    short, long = queries_for(policy, 1)[0], queries_for(policy, 2)[1]
    assert len(long) != len(short)
    resp = torch.tensor([10, 11, 12])
    alone, _ = policy(policy.collate([short], [resp]))
    padded, _ = policy(policy.collate([long, short], [resp, resp]))
    torch.testing.assert_close(
        logprobs_from_logits(alone, resp[None])[0],
        logprobs_from_logits(padded, torch.stack([resp, resp]))[1],
        atol=1e-4,
        rtol=1e-4,
    )


def test_chat_template_is_applied_for_instruct_models(tiny_llama, tiny_t5):
    llama = make_policy(tiny_llama, "llama")
    text = llama.tokenizer.decode(encode_prompt(llama.tokenizer, "#Person1#: hi", "Summarize: {dialogue}", None))
    assert text.startswith("<|im_start|>user\nSummarize: #Person1#: hi")
    assert text.endswith("<|im_start|>assistant\n")
    plain = llama.tokenizer.decode(encode_prompt(llama.tokenizer, "#Person1#: hi", "Summarize: {dialogue}", False))
    assert "<|im_start|>" not in plain
    t5 = make_policy(tiny_t5, "t5")
    t5_text = t5.tokenizer.decode(encode_prompt(t5.tokenizer, "#Person1#: hi", "Summarize: {dialogue}", None))
    assert t5_text.startswith("Summarize: #Person1#: hi")


def test_generation_truncates_after_first_eos(arch):
    kind, path = arch
    policy = make_policy(path, kind)
    torch.manual_seed(0)
    responses = generate(policy, queries_for(policy, 8), GenerationConfig(min_new_tokens=20, max_new_tokens=20))
    eos = policy.tokenizer.eos_token_id
    for r in responses:
        assert 1 <= len(r) <= 20
        hits = (r == eos).nonzero().flatten().tolist()
        assert hits in ([], [len(r) - 1]), "EOS may only be the last token"
        if kind == "t5":
            assert r[0].item() != policy.model.config.decoder_start_token_id or len(r) == 1


def test_step_changes_lora_and_value_head_but_not_base_weights(arch):
    kind, path = arch
    policy = make_policy(path, kind)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    trainer = PPOTrainer(policy, PPOConfig(learning_rate=1e-2, batch_size=4, mini_batch_size=2))
    q = queries_for(policy, 4)
    torch.manual_seed(0)
    responses = generate(policy, q, GEN)
    trainer.step(q, responses, [1.0, 0.0, 0.5, 0.2])
    changed = {n for n, p in policy.named_parameters() if not torch.equal(p, before[n])}
    lora = {n for n in before if "lora_" in n}
    assert lora and lora <= changed, "every LoRA weight moves"
    assert {n for n in before if n.startswith("value_head.")} <= changed
    assert changed <= lora | {n for n in before if n.startswith("value_head.")}, "base weights stay frozen"


def test_reference_is_the_untrained_model(arch):
    """Inside reference() the network computes exactly what the model loaded from disk computes
    (peft's test_disable_adapters), also after training has moved the adapter."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    kind, path = arch
    policy = make_policy(path, kind)
    plain = (AutoModelForSeq2SeqLM if kind == "t5" else AutoModelForCausalLM).from_pretrained(path).eval()
    q = queries_for(policy, 4)
    torch.manual_seed(0)
    responses = generate(policy, q, GEN)
    trainer = PPOTrainer(policy, PPOConfig(learning_rate=5e-2, batch_size=4, mini_batch_size=4))
    trainer.step(q, responses, [1.0, -1.0, 1.0, -1.0])
    batch = policy.collate(q, responses)
    with torch.no_grad():
        with policy.reference():
            ref_logits, _ = policy(batch)
        pol_logits, _ = policy(batch)
        if kind == "t5":
            want = plain(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                decoder_input_ids=batch.decoder_input_ids,
                decoder_attention_mask=batch.decoder_attention_mask,
            ).logits
        else:
            pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
            T = batch.responses.shape[1]
            want = plain(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos).logits[
                :, -(T + 1) : -1
            ]
    m = batch.response_mask.bool()
    torch.testing.assert_close(ref_logits[m], want[m], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(pol_logits[m], want[m], atol=1e-3), "the trained policy differs from the reference"


def test_step_rejects_a_wrong_batch(tiny_llama):
    policy = make_policy(tiny_llama, "llama")
    trainer = PPOTrainer(policy, PPOConfig(batch_size=4, mini_batch_size=2))
    q = queries_for(policy, 3)
    with pytest.raises(ValueError, match="exactly ppo.batch_size=4"):
        trainer.step(q, [torch.tensor([3, 4])] * 3, [0.0] * 3)
    with pytest.raises(ValueError, match="finite"):
        trainer.step(queries_for(policy, 4), [torch.tensor([3, 4])] * 4, [0.0, float("nan"), 0.0, 0.0])
    with pytest.raises(ValueError, match="not divisible"):
        PPOTrainer(policy, PPOConfig(batch_size=6, mini_batch_size=4))


def _even_share(responses):
    """Synthetic reward: the share of response tokens with an even id (a chosen half of the vocabulary)."""
    return [float((r % 2 == 0).float().mean()) for r in responses]


SHORT = GenerationConfig(min_new_tokens=4, max_new_tokens=4, batch_size=16)


def _measure(policy, q):
    vals = []
    for k in range(4):
        torch.manual_seed(100 + k)
        vals += _even_share(generate(policy, q, SHORT))
    return sum(vals) / len(vals)


def _run_ppo(policy, steps, reward_fn, **ppo):
    cfg = PPOConfig(batch_size=16, mini_batch_size=4, **ppo)
    trainer = PPOTrainer(policy, cfg, seed=0)
    q = queries_for(policy, 16)
    history = []
    for step in range(steps):
        torch.manual_seed(step)
        responses = generate(policy, q, SHORT)
        history.append(trainer.step(q, responses, reward_fn(responses)))
    return history


@pytest.mark.slow
def test_ppo_raises_a_synthetic_reward(arch):
    """PPO must clearly raise the share of chosen tokens (about 0.5 for the untrained policy)."""
    kind, path = arch
    policy = make_policy(path, kind)
    q = queries_for(policy, 16)
    before = _measure(policy, q)
    history = _run_ppo(policy, 20, _even_share, learning_rate=1e-2, ppo_epochs=4, init_kl_coef=0.01, adaptive_kl=False)
    after = _measure(policy, q)
    assert after > before + 0.25, (before, after)
    assert history[-1]["objective/kl"] > 0.5, "the policy moved away from the reference"


def test_zero_reward_keeps_kl_near_zero(arch):
    """With no score the only reward is the KL penalty: the policy stays at the reference."""
    kind, path = arch
    policy = make_policy(path, kind)
    history = _run_ppo(policy, 10, lambda rs: [0.0] * len(rs), learning_rate=1e-2, ppo_epochs=4)
    kls = [h["objective/kl"] for h in history]
    assert max(abs(k) for k in kls) < 0.05, kls


# different lengths, one of a single token: micro-batches pad differently and weigh their tokens differently
MIXED_RESPONSES = [
    torch.tensor([5, 6, 7, 8, 9, 10]),
    torch.tensor([11]),
    torch.tensor([12, 13, 14]),
    torch.tensor([7, 8]),
]


def _step_with_micro_batches(path, kind, micro, **ppo):
    policy = make_policy(path, kind)
    q = queries_for(policy, 4)
    responses = MIXED_RESPONSES
    cfg = PPOConfig(batch_size=4, mini_batch_size=4, micro_batch_size=micro, max_grad_norm=None, **ppo)
    trainer = PPOTrainer(policy, cfg, seed=0)
    # plain SGD: the new weights are linear in the gradient (Adam's first steps would hide its scale)
    trainer.optimizer = torch.optim.SGD(policy.trainable_parameters(), lr=0.5)
    stats = [trainer.step(q, responses, [1.0, -1.0, 0.5, 0.2]) for _ in range(2)]
    return {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}, stats


@pytest.mark.parametrize("micro", [1, 3])
def test_micro_batches_give_the_whole_mini_batch_update(arch, micro):
    """Summing token-weighted micro-batch gradients is the mini-batch's gradient: same weights, same stats."""
    kind, path = arch
    whole, whole_stats = _step_with_micro_batches(path, kind, None)
    split, split_stats = _step_with_micro_batches(path, kind, micro)
    for name, value in whole.items():
        torch.testing.assert_close(split[name], value, atol=1e-6, rtol=1e-5, msg=name)
    for a, b in zip(whole_stats, split_stats, strict=True):
        assert a.keys() == b.keys()
        for key in (k for k in a if not k.startswith("time/")):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


def test_ratio_guard_judges_the_whole_mini_batch(tiny_llama):
    """Past ratio_threshold nothing is learnt from the mini-batch, however it is split (as trl 0.11.4)."""
    before = {n: p.detach().clone() for n, p in make_policy(tiny_llama, "llama").named_parameters() if p.requires_grad}
    for micro in (1, None):
        after, stats = _step_with_micro_batches(tiny_llama, "llama", micro, ratio_threshold=0.5)
        assert all(torch.equal(after[n], before[n]) for n in before)
        assert all(s["loss/total"] == 0.0 and s["policy/ratio_mean"] == pytest.approx(1.0) for s in stats)
    with pytest.raises(ValueError, match="micro_batch_size must be at least 1"):
        PPOTrainer(make_policy(tiny_llama, "llama"), PPOConfig(batch_size=4, mini_batch_size=2, micro_batch_size=0))


def _trainable_state(trainer):
    """Every trainable weight (LoRA and value head) and every tensor of Adam's state, cloned."""
    weights = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
    adam = {
        f"adam.{i}.{k}": v.clone() for i, s in trainer.optimizer.state_dict()["state"].items() for k, v in s.items()
    }
    return weights | adam


def test_a_guarded_mini_batch_leaves_weights_and_adam_untouched(arch):
    """Deliberately unlike trl 0.11.4, which multiplies the loss by zero and still steps: Adam then moves every
    weight on its moments from earlier mini-batches (1.4e-2 here). A guarded mini-batch skips the step."""
    kind, path = arch
    policy = make_policy(path, kind)
    q = queries_for(policy, 4)
    responses = MIXED_RESPONSES
    cfg = PPOConfig(learning_rate=1e-2, batch_size=4, mini_batch_size=2, max_grad_norm=0.5)
    trainer = PPOTrainer(policy, cfg, seed=0)
    trainer.step(q, responses, [1.0, -1.0, 0.5, 0.2])  # Adam has moments and a step count from here on
    before = _trainable_state(trainer)
    assert any(n.startswith("value_head.") for n in before) and any("lora_" in n for n in before)
    assert any(n.startswith("adam.") for n in before)

    trainer.cfg = dataclasses.replace(cfg, ratio_threshold=0.5)  # every mini-batch's mean ratio is about 1
    guarded = trainer.step(q, responses, [1.0, -1.0, 0.5, 0.2])
    after = _trainable_state(trainer)
    assert guarded["ppo/skipped_minibatches"] == 2 and guarded["loss/total"] == 0.0
    assert [n for n in before if not torch.equal(after[n], before[n])] == [], "bit-identical"

    trainer.cfg = cfg  # the control: the same step unguarded moves every weight and Adam's state
    control = trainer.step(q, responses, [1.0, -1.0, 0.5, 0.2])
    after = _trainable_state(trainer)
    assert control["ppo/skipped_minibatches"] == 0
    assert [n for n in before if torch.equal(after[n], before[n])] == []
    # norms before clipping: together they exceed the clip, which bounds the norm after it
    assert control["policy/grad_norm"] > 0 and control["val/grad_norm"] > 0
    assert math.hypot(control["policy/grad_norm"], control["val/grad_norm"]) > cfg.max_grad_norm
    assert control["policy/ratio_min"] <= control["policy/ratio_mean"] <= control["policy/ratio_max"]
    assert 0.0 <= control["policy/clipfrac"] <= 1.0


def test_rollout_records_the_log_probs_and_values_a_forward_pass_computes(arch):
    kind, path = arch
    policy = make_policy(path, kind)
    torch.nn.init.normal_(policy.value_head.summary.weight)  # zero-initialised heads would agree trivially
    q = queries_for(policy, 4)
    torch.manual_seed(0)
    ro = rollout(policy, q, GenerationConfig(min_new_tokens=2, max_new_tokens=12, batch_size=3))
    torch.manual_seed(0)
    assert [r.tolist() for r in ro.responses] == [
        r.tolist() for r in generate(policy, q, GenerationConfig(min_new_tokens=2, max_new_tokens=12, batch_size=3))
    ]
    batch = policy.collate(q, ro.responses)
    with torch.no_grad():
        logits, values = policy(batch)
    want_lp = logprobs_from_logits(logits, batch.responses)
    for i, r in enumerate(ro.responses):
        assert len(ro.logprobs[i]) == len(ro.values[i]) == len(r)
        torch.testing.assert_close(ro.logprobs[i], want_lp[i, : len(r)], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ro.values[i], values[i, : len(r)], atol=1e-4, rtol=1e-4)


def test_step_on_recorded_log_probs_and_values_skips_nothing_but_the_recomputation(tiny_llama):
    """Stored generations (human-rated ones) carry their rollout log-probs, a fresh rollout its values too: passing
    either gives the update that recomputing them gives."""
    results = []
    for recorded in ((), ("old_logprobs",), ("old_logprobs", "old_values")):
        policy = make_policy(tiny_llama, "llama")
        torch.nn.init.normal_(policy.value_head.summary.weight)
        q = queries_for(policy, 4)
        torch.manual_seed(0)
        ro = rollout(policy, q, GEN)
        trainer = PPOTrainer(policy, PPOConfig(learning_rate=1e-2, batch_size=4, mini_batch_size=2), seed=0)
        extra = {"old_logprobs": ro.logprobs, "old_values": ro.values}
        results.append(trainer.step(q, ro.responses, [1.0, 0.0, 0.5, 0.2], **{k: extra[k] for k in recorded}))
    for given in results[1:]:
        for key in ("loss/total", "loss/value", "val/mean", "objective/kl", "returns/mean"):
            assert given[key] == pytest.approx(results[0][key], abs=1e-4), key
    with pytest.raises(ValueError, match="old_logprobs shape"):
        trainer.step(q, ro.responses, [0.0] * 4, old_logprobs=[torch.zeros(1)] * 4)
    with pytest.raises(ValueError, match="old_values shape"):
        trainer.step(q, ro.responses, [0.0] * 4, old_logprobs=ro.logprobs, old_values=[torch.zeros(1)] * 4)


def test_generation_over_several_batches_answers_in_input_order(tiny_llama):
    """Prompts are batched by length; each response (and what was recorded with it) must stay with its prompt:
    the log-prob of a response depends on its prompt, so a forward pass over each pair must agree."""
    policy = make_policy(tiny_llama, "llama")
    q = [torch.cat([x] * (1 + i % 3)) for i, x in enumerate(queries_for(policy, 6))]  # mixed lengths
    torch.manual_seed(0)
    ro = rollout(policy, q, GenerationConfig(min_new_tokens=3, max_new_tokens=6, batch_size=2))
    for i, (query, response) in enumerate(zip(q, ro.responses, strict=True)):
        batch = policy.collate([query], [response])
        with torch.no_grad():
            logits, _ = policy(batch)
        torch.testing.assert_close(ro.logprobs[i], logprobs_from_logits(logits, batch.responses)[0], atol=1e-4, rtol=0)


def _with_generation_settings(src, dst, eos_id):
    """A copy of a tiny model whose generation_config.json asks for every kind of logits processor."""
    import shutil

    from transformers import GenerationConfig as HFGenerationConfig

    shutil.copytree(src, dst)
    HFGenerationConfig(
        do_sample=True,
        temperature=0.7,
        top_k=5,
        repetition_penalty=1.3,
        no_repeat_ngram_size=2,
        min_length=4,
        min_new_tokens=6,
        bad_words_ids=[[5], [6, 7]],
        sequence_bias=[[[8], -4.0]],
        suppress_tokens=list(range(10, 200)),
        begin_suppress_tokens=[200, 201],
        forced_eos_token_id=eos_id,
        exponential_decay_length_penalty=(2, 1.5),
        typical_p=0.9,
        epsilon_cutoff=3e-4,
        renormalize_logits=True,
    ).save_pretrained(dst)
    return dst


def test_rollout_samples_from_the_distribution_it_records_whatever_the_model_ships(arch, tmp_path):
    """A model's own generation config (repetition penalty, suppressed and bad words, forced EOS, ...) must not
    reach the sampler: the log-probs of what was sampled equal the policy's forward-pass log-probs. Before the
    neutral settings the two differed by up to 6-7 nats on these models."""
    from rlhf.ppo import response_logprobs

    kind, path = arch
    policy = make_policy(path, kind)
    noisy = make_policy(_with_generation_settings(path, tmp_path / kind, policy.tokenizer.eos_token_id), kind)
    assert noisy.model.generation_config.repetition_penalty == 1.3
    q = queries_for(noisy, 4)
    gen = GenerationConfig(min_new_tokens=2, max_new_tokens=12, temperature=0.8, batch_size=4)
    torch.manual_seed(0)
    ro = rollout(noisy, q, gen)
    forward = response_logprobs(noisy, q, ro.responses, gen.temperature)
    for recorded, want in zip(ro.logprobs, forward, strict=True):
        torch.testing.assert_close(recorded, torch.tensor(want), atol=1e-4, rtol=0)
    assert noisy.model.generation_config.repetition_penalty == 1.3, "the model's own settings are put back"
    torch.manual_seed(0)
    plain = rollout(policy, q, gen)
    assert [r.tolist() for r in plain.responses] == [r.tolist() for r in ro.responses], "same network, same samples"


def test_decoded_responses_drop_nul_characters(tiny_llama):
    """A byte-level tokenizer can emit byte 0; PostgreSQL cannot store it, and a refill chunk holding one failed."""
    from rlhf.prompts import decode_responses

    policy = make_policy(tiny_llama, "llama")
    ids = torch.tensor(policy.tokenizer(" hello\x00there ")["input_ids"])
    assert "\x00" in policy.tokenizer.decode(ids)
    assert decode_responses(policy.tokenizer, [ids]) == ["hellothere"]
