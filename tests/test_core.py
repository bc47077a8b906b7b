"""The pure PPO functions against numbers produced by trl 0.11.4 itself (tests/fixtures/make_trl_parity.py)."""

import json
import math
from pathlib import Path

import pytest
import torch

from rlhf import core

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "trl_0114_parity.json").read_text())
INP = {k: torch.tensor(v, dtype=torch.float64) for k, v in FIXTURE["inputs"].items()}
OUT = FIXTURE["outputs"]
CFG = FIXTURE["config"]
TOL = dict(atol=1e-5, rtol=1e-5)


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def close_on_mask(actual, expected, mask):
    torch.testing.assert_close(actual * mask, t(expected) * mask, **TOL)


@pytest.mark.parametrize("kind", ["kl", "abs", "mse"])
def test_compute_rewards_matches_trl(kind):
    rewards, non_score, kl = core.compute_rewards(
        INP["scores"], INP["old_logprobs"], INP["ref_logprobs"], INP["masks"], CFG["kl_coef"], kind
    )
    exp = OUT["compute_rewards"][kind]
    torch.testing.assert_close(rewards, t(exp["rewards"]), **TOL)
    torch.testing.assert_close(non_score, t(exp["non_score_rewards"]), **TOL)
    torch.testing.assert_close(kl, t(exp["kls"]), **TOL)


def test_score_lands_on_last_response_token_only():
    mask = INP["masks"]
    rewards, non_score, _ = core.compute_rewards(INP["scores"], INP["old_logprobs"], INP["ref_logprobs"], mask, 0.2)
    diff = rewards - non_score
    last = core.last_token_index(mask)
    assert last.tolist() == [6, 4, 5, 0]
    for row in range(4):
        expected = torch.zeros(7, dtype=torch.float64)
        expected[last[row]] = INP["scores"][row]
        torch.testing.assert_close(diff[row], expected)


def test_gae_matches_trl():
    rewards = t(OUT["compute_rewards"]["kl"]["rewards"])
    values, adv, ret = core.gae(INP["values"], rewards, INP["masks"], CFG["gamma"], CFG["lam"], whiten_rewards=False)
    exp = OUT["compute_advantages"]["whiten_rewards_false"]
    mask = INP["masks"]
    torch.testing.assert_close(values, t(exp["values_out"]), **TOL)
    close_on_mask(adv, exp["advantages"], mask)
    close_on_mask(ret, exp["returns"], mask)


def test_whitened_rewards_differ_from_trl_only_through_its_padding_leak():
    """Deliberate difference: trl 0.11.4 whitens rewards but leaves (0 - mean) / std on padded positions, which
    leaks into the advantages of the last real tokens of padded rows. We re-mask, so rows without trailing
    padding (row 0: the full length) match trl and padded rows do not."""
    rewards = t(OUT["compute_rewards"]["kl"]["rewards"])
    mask = INP["masks"]
    _, adv, ret = core.gae(INP["values"], rewards, mask, CFG["gamma"], CFG["lam"], whiten_rewards=True)
    exp = OUT["compute_advantages"]["whiten_rewards_true"]
    # returns are pre-whitening advantages + values; compare the unpadded row exactly
    torch.testing.assert_close(ret[0], t(exp["returns"])[0], **TOL)
    assert not torch.allclose(ret[1] * mask[1], t(exp["returns"])[1] * mask[1], atol=1e-3)
    # with the leak removed, padded positions carry no reward at all
    whitened = core.masked_whiten(rewards * mask, mask, shift_mean=False) * mask
    assert torch.all(whitened[mask == 0] == 0)


@pytest.mark.parametrize("case,threshold", [("ratio_threshold_10", 10.0), ("ratio_threshold_0_5_triggered", 0.5)])
def test_ppo_loss_matches_trl(case, threshold):
    adv = OUT["compute_advantages"]["whiten_rewards_false"]
    out = core.ppo_loss(
        INP["old_logprobs"],
        t(adv["values_out"]),
        INP["logits"],
        INP["vpreds"],
        INP["new_logprobs"],
        INP["masks"],
        t(adv["advantages"]),
        t(adv["returns"]),
        cliprange=CFG["cliprange"],
        cliprange_value=CFG["cliprange_value"],
        vf_coef=CFG["vf_coef"],
        ratio_threshold=threshold,
    )
    exp = OUT["loss"][case]
    assert out.pg_loss.item() == pytest.approx(exp["pg_loss"], abs=1e-5)
    assert (CFG["vf_coef"] * out.vf_loss).item() == pytest.approx(exp["vf_loss_times_vf_coef"], abs=1e-5)
    for key in (
        "loss/policy",
        "loss/value",
        "loss/total",
        "policy/entropy",
        "policy/approxkl",
        "policy/policykl",
        "policy/clipfrac",
        "policy/advantages_mean",
        "returns/mean",
        "returns/var",
        "val/vpred",
        "val/error",
        "val/clipfrac",
        "val/mean",
    ):
        assert out.stats[key] == pytest.approx(exp["stats"][key], abs=1e-5), key
    if threshold < 1:
        assert out.loss.item() == 0.0


def test_ppo_loss_reports_the_ratio_extremes_over_response_tokens():
    old = torch.tensor([[-1.0, 1.0, -5.0]])  # ratios e, 1/e, and e^5 on a padded position
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    zeros = torch.zeros(1, 3)
    out = core.ppo_loss(
        old, zeros, torch.zeros(1, 3, 4), zeros, zeros, mask, torch.tensor([[1.0, -1.0, 0.0]]), zeros,
        cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, ratio_threshold=10.0,
    )  # fmt: skip
    assert out.stats["policy/ratio_max"] == pytest.approx(math.e)
    assert out.stats["policy/ratio_min"] == pytest.approx(1 / math.e)
    assert out.stats["policy/clipfrac"] == 1.0


def test_masked_statistics_match_trl():
    exp = OUT["core"]
    v, m = INP["values"], INP["masks"]
    assert core.masked_mean(v, m).item() == pytest.approx(exp["masked_mean_values"], abs=1e-8)
    torch.testing.assert_close(core.masked_mean(v, m, dim=1), t(exp["masked_mean_values_axis1"]), **TOL)
    assert core.masked_var(v, m).item() == pytest.approx(exp["masked_var_values_unbiased"], abs=1e-8)
    assert core.masked_var(v, m, unbiased=False).item() == pytest.approx(exp["masked_var_values_biased"], abs=1e-8)
    torch.testing.assert_close(core.masked_whiten(v, m), t(exp["masked_whiten_values_shift_mean_true"]), **TOL)
    torch.testing.assert_close(
        core.masked_whiten(v, m, shift_mean=False), t(exp["masked_whiten_values_shift_mean_false"]), **TOL
    )
    torch.testing.assert_close(core.entropy_from_logits(INP["logits"]), t(exp["entropy_from_logits"]), **TOL)


def test_adaptive_kl_controller_matches_trl():
    exp = OUT["adaptive_kl_controller"]
    ctl = core.AdaptiveKLController(exp["init_kl_coef"], exp["target"], exp["horizon"])
    got = []
    for kl in exp["current_kl_sequence"]:
        ctl.update(kl, exp["n_steps"])
        got.append(ctl.value)
    assert got == pytest.approx(exp["value_after_each_update"], rel=1e-9)


def test_masked_var_refuses_a_single_token():
    with pytest.raises(ValueError, match="at least 2"):
        core.masked_var(torch.ones(1, 3), torch.tensor([[1.0, 0.0, 0.0]]))


def test_last_token_index_rejects_empty_rows():
    with pytest.raises(ValueError, match="at least one token"):
        core.last_token_index(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))


def test_gae_by_hand_gamma_lambda():
    """One row, 3 tokens, zero values: advantages are discounted sums of rewards before whitening."""
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.zeros(1, 3)
    mask = torch.ones(1, 3)
    _, _, returns = core.gae(values, rewards, mask, gamma=0.9, lam=0.5, whiten_rewards=False)
    # delta = r; A_t = r_t + 0.45 * A_{t+1}
    a2 = 2.0
    a1 = 0.0 + 0.45 * a2
    a0 = 1.0 + 0.45 * a1
    torch.testing.assert_close(returns, torch.tensor([[a0, a1, a2]]))


def test_clipped_policy_loss_clips_large_ratios():
    logp = torch.tensor([[0.0, 0.0]])
    old = torch.tensor([[-1.0, 1.0]])  # ratios e and 1/e
    adv = torch.tensor([[1.0, -1.0]])
    loss, ratio, clipfrac = core.clipped_policy_loss(logp, old, adv, torch.ones(1, 2), cliprange=0.2)
    # pessimistic bound per token: max(-A * r, -A * clip(r)) -> -1.2 and +0.8
    assert loss.item() == pytest.approx(-(1.2 + -0.8) / 2)
    assert clipfrac.item() == 1.0
