"""PPO: its two surrogate losses against hand-computed values and
gradients, the penalty's adaptation rule, and its first step as A2C's."""

import csv
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tf_agents.environments import tf_py_environment

from agents import A2CAgent, PpoAgent, losses, train
from agents.envs import GymnasiumEnvironment
from agents.minibatches import shuffled_rows
from agents.networks import ActorCriticNetwork
from agents.ppo import adapted_kl_coef
from agents.rollout import RolloutCollector

TINY = ["--num-envs", "2", "--n-steps", "20", "--hidden-units", "8"]
TINY += ["--no-progress"]


def _env(num_envs=4):
    py_env = GymnasiumEnvironment("CartPole-v1", num_envs=num_envs, seed=0)
    return tf_py_environment.TFPyEnvironment(py_env)


def _sgd():
    return keras.optimizers.SGD(0.1)


def _network(env):
    return ActorCriticNetwork(
        env.observation_spec(), env.action_spec(), hidden_units=(8,)
    )


def test_clipped_surrogate_loss_and_its_gradient_by_hand():
    # ε = 0.2; per row min(r Â, clip(r) Â):
    #   r 0.5, Â  1: min(0.5, 0.8) = 0.5, unclipped: ∂/∂r = Â = 1
    #   r 1.0, Â -2: -2 either way, inside the range: ∂/∂r = -2
    #   r 1.5, Â  2: min(3, 2.4) = 2.4, clipped: ∂/∂r = 0
    #   r 1.5, Â -1: min(-1.5, -1.2) = -1.5, unclipped: ∂/∂r = -1
    #   r 0.7, Â -1: weight 0
    # loss = -(0.5 - 2 + 2.4 - 1.5) / 4 = 0.15, ∂loss/∂r = -∂/∂r / 4.
    ratio = tf.constant([0.5, 1.0, 1.5, 1.5, 0.7])
    advantages = tf.constant([1.0, -2.0, 2.0, -1.0, -1.0])
    weights = tf.constant([1.0, 1.0, 1.0, 1.0, 0.0])
    with tf.GradientTape() as tape:
        tape.watch(ratio)
        loss = losses.clipped_surrogate_loss(ratio, advantages, 0.2, weights)
    np.testing.assert_allclose(loss.numpy(), 0.15, rtol=1e-6)
    np.testing.assert_allclose(
        tape.gradient(loss, ratio).numpy(),
        [-0.25, 0.5, 0.0, 0.25, 0.0],
        rtol=1e-6,
    )


def test_penalized_surrogate_loss_and_its_gradient_by_hand():
    # loss = -mean_w(r Â) + β mean_w(KL), β = 3, weights (1, 1, 2):
    # -(1.2·1 + 0.9·(-1) + 2·1.0·0.5) / 4 + 3 (0.01 + 0.02 + 2·0.04) / 4
    ratio = tf.constant([1.2, 0.9, 1.0])
    advantages = tf.constant([1.0, -1.0, 0.5])
    kl = tf.constant([0.01, 0.02, 0.04])
    weights = tf.constant([1.0, 1.0, 2.0])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([ratio, kl])
        loss = losses.penalized_surrogate_loss(
            ratio, advantages, kl, tf.constant(3.0), weights
        )
    np.testing.assert_allclose(loss.numpy(), -1.3 / 4 + 3 * 0.11 / 4, rtol=1e-6)
    np.testing.assert_allclose(
        tape.gradient(loss, ratio).numpy(),
        [-0.25, 0.25, -0.25],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        tape.gradient(loss, kl).numpy(), [0.75, 0.75, 1.5], rtol=1e-6
    )


@pytest.mark.parametrize(
    "kl, expected",
    [
        (0.005, 0.5),  # below d_targ / 1.5: halved
        (0.01 / 1.5, 1.0),  # at the bound: kept
        (0.01, 1.0),
        (0.015, 1.0),  # at the upper bound: kept
        (0.02, 2.0),  # above 1.5 d_targ: doubled
    ],
)
def test_the_penalty_coefficient_follows_the_papers_rule(kl, expected):
    beta = adapted_kl_coef(tf.constant(1.0), tf.constant(kl), 0.01)
    assert float(beta) == expected


def test_each_pass_orders_every_row_once_and_differently():
    orders = [
        shuffled_rows(tf.constant(50), 3, tf.constant(step), 4, epoch).numpy()
        for step in (0, 1)
        for epoch in (0, 1)
    ]
    for order in orders:
        assert sorted(order) == list(range(50))
    assert len({tuple(order) for order in orders}) == 4
    again = shuffled_rows(tf.constant(50), 3, tf.constant(1), 4, 1).numpy()
    np.testing.assert_array_equal(again, orders[3])


def test_one_pass_of_one_minibatch_is_the_a2c_step():
    # At θ_old the ratio is 1 and ∇r = ∇ log π: PPO's first step is A2C's
    # on the same loss weights, standardized advantages and optimizer.
    env = _env()
    rows = 4 * 16
    network = _network(env)
    twin = network.copy(name="twin")
    specs = (env.time_step_spec(), env.action_spec())
    settings = dict(
        gae_lambda=0.95, ent_coef=0.01, vf_coef=0.5, normalize_advantages=True
    )
    ppo = PpoAgent(
        *specs,
        network,
        _sgd(),
        n_epochs=1,
        minibatch_size=rows,
        value_optimizer=None,
        **settings,
    )
    a2c = A2CAgent(*specs, twin, _sgd(), value_optimizer=None, **settings)
    twin.create_variables()
    for source, target in zip(network.variables, twin.variables):
        target.assign(source)
    experience = RolloutCollector(env, ppo.collect_policy, 16).collect()
    before = [v.numpy().copy() for v in network.variables]
    ppo.train(experience)
    a2c.train(experience)
    moved = False
    for start, p, a in zip(before, network.variables, twin.variables):
        step = p.numpy() - start
        # float32: the two sum the batch in different orders.
        np.testing.assert_allclose(
            step, a.numpy() - start, rtol=1e-4, atol=1e-6 * np.abs(step).max()
        )
        moved = moved or np.abs(step).max() > 0
    assert moved


def test_the_penalty_adapts_to_the_kl_the_update_realized():
    env = _env()
    agent = PpoAgent(
        env.time_step_spec(),
        env.action_spec(),
        _network(env),
        objective="kl_penalty",
        kl_penalty_target=0.001,
        n_epochs=2,
        minibatch_size=32,
    )
    experience = RolloutCollector(env, agent.collect_policy, 16).collect()
    info = agent.train(experience).extra
    expected = adapted_kl_coef(tf.constant(1.0), info.kl, 0.001)
    assert float(info.kl) > 0.0
    assert float(agent.kl_coef) == float(info.kl_coef) == float(expected)


def test_the_clipped_update_reports_its_clip_fraction():
    env = _env()
    agent = PpoAgent(
        env.time_step_spec(),
        env.action_spec(),
        _network(env),
        clip_range=0.01,
        n_epochs=4,
        minibatch_size=16,
    )
    experience = RolloutCollector(env, agent.collect_policy, 16).collect()
    info = agent.train(experience).extra
    # The first minibatch starts at θ_old (r = 1); later ones have moved.
    assert 0.0 < float(info.clip_fraction) < 1.0
    assert float(info.clip_coefficient) == 1.0


@pytest.mark.parametrize(
    "argument, value, message",
    [
        ("objective", "trust_region", "objective must be one of"),
        ("clip_range", 0.0, "clip_range must be > 0"),
        ("clip_range", float("inf"), "clip_range must be > 0"),
        ("kl_penalty_target", -1.0, "kl_penalty_target must be > 0"),
        ("initial_kl_coef", float("nan"), "initial_kl_coef must be > 0"),
        ("n_epochs", 0, "n_epochs must be an integer >= 1"),
        ("minibatch_size", 2.5, "minibatch_size must be an integer >= 1"),
        ("optimizer", "adam", "optimizer must be a keras.optimizers"),
    ],
)
def test_bad_arguments_name_what_was_received(argument, value, message):
    env = _env(num_envs=1)
    with pytest.raises(ValueError, match=message) as error:
        PpoAgent(
            env.time_step_spec(),
            env.action_spec(),
            _network(env),
            **{argument: value},
        )
    assert "Received" in str(error.value)


def _episode_rows(logdir) -> list:
    """`episodes.csv` without its wall-clock column."""
    with open(os.path.join(logdir, "episodes.csv")) as f:
        return [row[:3] for row in csv.reader(f)]


@pytest.mark.slow
def test_a_resumed_run_repeats_the_uninterrupted_one(tmp_path):
    # The minibatch orders, β and the reward scaler's running returns
    # and moments all come back from the checkpoint.
    argv = TINY + ["--algo", "ppo", "--objective", "kl_penalty"]
    argv += ["--scale-rewards", "--minibatch-size", "16"]
    whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
    assert train.main(argv + ["--total-steps", "400", "--logdir", whole]) == 0
    assert train.main(argv + ["--total-steps", "200", "--logdir", parts]) == 0
    resume = ["--total-steps", "400", "--logdir", parts, "--resume"]
    assert train.main(argv + resume) == 0
    rows = _episode_rows(whole)
    assert len(rows) > 10
    assert _episode_rows(parts) == rows
