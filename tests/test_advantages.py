"""GAE and n-step returns against forward sums over each episode."""

import numpy as np
import pytest
from tf_agents.trajectories import time_step as ts

from agents import advantages

F, M, L = ts.StepType.FIRST, ts.StepType.MID, ts.StepType.LAST

# Two rows of T + 1 = 9 time steps: terminated (discount 0) and truncated
# (discount 1) episode ends, boundaries, and episodes cut by the batch end.
STEP_TYPES = np.array(
    [[F, M, M, L, F, M, L, F, M], [M, M, L, F, M, M, M, L, F]], np.int32
)
TERMINATED = np.array(  # of the LAST time steps above
    [[0, 0, 0, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 1, 0]], bool
)


def _batch(rng):
    rewards = rng.normal(size=(2, 8)).astype(np.float32)
    values = rng.normal(size=(2, 9)).astype(np.float32)
    discounts = np.where(TERMINATED[:, 1:], 0.0, 1.0).astype(np.float32)
    return rewards, discounts, values


def _forward_sums(rewards, values, gamma, lambda_):
    """`Â_t = Σ_k (γλ)^k δ_{t+k}` and `R_t = Σ_k γ^k r_{t+k} (+ bootstrap)`,
    walking forward from `t` to its episode's end or the batch's."""
    B, T = rewards.shape
    gae, nstep = np.zeros((B, T)), np.zeros((B, T))
    for b in range(B):
        for t in range(T):
            if STEP_TYPES[b, t] == L:  # boundary: trains nothing
                continue
            for k in range(t, T):
                terminal = TERMINATED[b, k + 1]
                next_value = 0.0 if terminal else values[b, k + 1]
                delta = rewards[b, k] + gamma * next_value - values[b, k]
                gae[b, t] += (gamma * lambda_) ** (k - t) * delta
                nstep[b, t] += gamma ** (k - t) * rewards[b, k]
                if STEP_TYPES[b, k + 1] == L:
                    nstep[b, t] += gamma ** (k - t + 1) * next_value
                    break
            else:
                nstep[b, t] += gamma ** (T - t) * values[b, T]
    return gae, nstep


def _masks():
    return advantages.episode_masks(STEP_TYPES[:, :-1], STEP_TYPES[:, 1:])


def test_masks():
    valid, continues = (np.asarray(m) for m in _masks())
    np.testing.assert_array_equal(valid, STEP_TYPES[:, :-1] != L)
    np.testing.assert_array_equal(continues, STEP_TYPES[:, 1:] != L)


@pytest.mark.parametrize("lambda_", [0.0, 0.95, 1.0])
def test_gae_matches_forward_sums(rng, lambda_):
    rewards, discounts, values = _batch(rng)
    valid, continues = _masks()
    got = advantages.generalized_advantages(
        rewards, discounts, values, valid, continues, 0.9, lambda_
    )
    expected, _ = _forward_sums(rewards, values, 0.9, lambda_)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_nstep_returns_match_forward_sums(rng):
    rewards, discounts, values = _batch(rng)
    valid, continues = _masks()
    got = advantages.nstep_returns(
        rewards, discounts, values, valid, continues, 0.9
    )
    _, expected = _forward_sums(rewards, values, 0.9, 1.0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_truncation_bootstraps_and_termination_does_not():
    # One transition into a LAST step, reward 1, V(final observation) = 10.
    step_types = np.array([[M, L]], np.int32)
    values = np.array([[0.0, 10.0]], np.float32)
    valid, continues = advantages.episode_masks(
        step_types[:, :1], step_types[:, 1:]
    )
    for discount, expected in ((1.0, 1.0 + 0.5 * 10.0), (0.0, 1.0)):
        returns = advantages.nstep_returns(
            np.ones((1, 1), np.float32),
            np.full((1, 1), discount, np.float32),
            values,
            valid,
            continues,
            0.5,
        )
        np.testing.assert_allclose(returns, [[expected]])
