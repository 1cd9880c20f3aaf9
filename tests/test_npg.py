"""The natural policy gradient: its step against a dense `(F + λI)⁻¹g`,
and TRPO as the same step with a line search."""

import numpy as np
import pytest
import tensorflow as tf
from tf_agents.environments import tf_py_environment

from agents import NpgAgent, TrpoAgent, trust_region
from agents.envs import GymnasiumEnvironment
from agents.networks import ActorCriticNetwork
from agents.rollout import RolloutCollector


def _env():
    py_env = GymnasiumEnvironment("CartPole-v1", num_envs=4, seed=0)
    return tf_py_environment.TFPyEnvironment(py_env)


def _network(env):
    return ActorCriticNetwork(
        env.observation_spec(),
        env.action_spec(),
        hidden_units=(8,),
        shared_torso=False,
    )


def _values(variables):
    return [v.numpy().copy() for v in variables]


class _Recorder:
    """Wraps `trust_region.conjugate_gradient` to keep what the update
    solved: the Fisher-vector product and `g`."""

    def __init__(self, monkeypatch):
        self.calls = []
        solve = trust_region.conjugate_gradient

        def recorded(product, g, *args, **kwargs):
            self.calls.append((product, g))
            return solve(product, g, *args, **kwargs)

        monkeypatch.setattr(trust_region, "conjugate_gradient", recorded)


def test_the_step_is_the_natural_gradient_scaled_to_the_kl(monkeypatch):
    # Δ = sqrt(2δ / gᵀ(F + λI)⁻¹g) · (F + λI)⁻¹g, with F + λI assembled
    # densely from the update's own products (tested against a dense
    # Fisher in test_trpo.py) and solved by NumPy; CG runs to convergence.
    recorder = _Recorder(monkeypatch)
    env = _env()
    agent = NpgAgent(
        env.time_step_spec(),
        env.action_spec(),
        _network(env),
        max_kl=0.02,
        damping=0.1,
        cg_iterations=200,
        cg_residual_tolerance=0.0,
        gae_lambda=0.97,
    )
    experience = RolloutCollector(env, agent.collect_policy, 32).collect()
    parameters = agent._policy_variables
    before = _values(parameters)
    info = agent.train(experience)
    after = _values(parameters)
    ((product, g),) = recorder.calls
    # The products are the KL's Hessian at θ_old: evaluate them there.
    for variable, value in zip(parameters, before):
        variable.assign(value)
    n = int(g.shape[0])
    dense = np.stack(
        [product(tf.one_hot(i, n)).numpy() for i in range(n)], axis=1
    ).astype(np.float64)
    dense = 0.5 * (dense + dense.T)
    x = np.linalg.solve(dense, g.numpy().astype(np.float64))
    expected = np.sqrt(2 * 0.02 / (g.numpy() @ x)) * x
    moved = np.concatenate([(a - b).ravel() for a, b in zip(after, before)])
    # float32 CG on this system (condition about 7) and the float32 update:
    # errors of order κ·ε₃₂ relative to the step, 1e-4 leaves a margin.
    assert np.linalg.cond(dense) < 100
    np.testing.assert_allclose(
        moved, expected, rtol=0, atol=1e-4 * np.abs(expected).max()
    )
    assert float(info.extra.step_fraction) == 1.0
    # The quadratic model of the KL of the step taken is δ.
    assert float(info.extra.predicted_kl) == pytest.approx(0.02, rel=1e-4)
    assert 0.5 * moved @ dense @ moved == pytest.approx(0.02, rel=1e-4)


def test_trpo_takes_the_npg_step_when_its_line_search_accepts_it():
    env = _env()
    npg_net, trpo_net = _network(env), _network(env)
    npg = NpgAgent(
        env.time_step_spec(), env.action_spec(), npg_net, gae_lambda=0.97
    )
    trpo = TrpoAgent(
        env.time_step_spec(), env.action_spec(), trpo_net, gae_lambda=0.97
    )
    trpo_net.set_weights(npg_net.get_weights())
    experience = RolloutCollector(env, npg.collect_policy, 32).collect()
    npg_info, trpo_info = npg.train(experience), trpo.train(experience)
    assert float(trpo_info.extra.step_fraction) == 1.0
    for a, b in zip(
        _values(npg._policy_variables), _values(trpo._policy_variables)
    ):
        np.testing.assert_array_equal(a, b)
    assert float(npg_info.extra.kl) == float(trpo_info.extra.kl)


def test_npg_takes_the_step_a_line_search_would_reject():
    # TRPO with an unreachable accept ratio keeps θ_old; NPG has no such
    # check and moves.
    env = _env()
    agent = NpgAgent(
        env.time_step_spec(), env.action_spec(), _network(env), max_kl=0.01
    )
    experience = RolloutCollector(env, agent.collect_policy, 32).collect()
    before = _values(agent._policy_variables)
    info = tf.function(agent.train)(experience)
    assert float(info.extra.clip_coefficient) == 1.0
    assert 0 < float(info.extra.kl)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(before, _values(agent._policy_variables))
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_kl=0.0), "max_kl=0.0"),
        (dict(cg_iterations=0), "cg_iterations"),
        (dict(damping=-1.0), "damping"),
        (dict(target_kl=0.01), "NpgAgent .*target_kl=0.01"),
        (dict(line_search_steps=3), "line_search_steps"),
    ],
)
def test_bad_npg_arguments_raise_with_what_was_received(kwargs, message):
    env = _env()
    with pytest.raises((ValueError, TypeError), match=message):
        NpgAgent(
            env.time_step_spec(), env.action_spec(), _network(env), **kwargs
        )


def test_npg_needs_separate_policy_and_value_parameters():
    env = _env()
    net = ActorCriticNetwork(
        env.observation_spec(),
        env.action_spec(),
        hidden_units=(8,),
        shared_torso=True,
    )
    with pytest.raises(ValueError, match="must not share parameters"):
        NpgAgent(env.time_step_spec(), env.action_spec(), net)
