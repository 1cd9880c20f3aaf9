"""TRPO: conjugate gradient, Fisher-vector products, the trust-region step,
the line search, and the adaptive step size of the on-policy core."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from tf_agents.environments import tf_py_environment
from tf_agents.specs import tensor_spec

from agents import A2CAgent, AcktrAgent, TrpoAgent, a2c_optimizer, trust_region
from agents.advantages import episode_masks
from agents.envs import GymnasiumEnvironment
from agents.networks import ActorCriticNetwork
from agents.rollout import RolloutCollector


def _spd(rng, n, condition=50.0):
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return (q * np.geomspace(1.0, condition, n)) @ q.T


def _matvec(a):
    a = tf.constant(a, tf.float64)
    return lambda v: tf.linalg.matvec(a, v)


def test_conjugate_gradient_solves_a_small_spd_system(rng):
    a, b = _spd(rng, 6), rng.normal(size=6)
    x = trust_region.conjugate_gradient(
        _matvec(a), tf.constant(b), max_iterations=6, residual_tolerance=1e-20
    )
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(a, b), rtol=1e-8)


def test_conjugate_gradient_stops_at_the_iteration_limit(rng):
    # One iteration from x = 0 is the exact line minimisation along b.
    a, b = _spd(rng, 6), rng.normal(size=6)
    x = trust_region.conjugate_gradient(_matvec(a), tf.constant(b), 1)
    np.testing.assert_allclose(x.numpy(), (b @ b) / (b @ a @ b) * b, rtol=1e-12)


def test_conjugate_gradient_stops_once_the_residual_is_small(rng):
    # b is an eigenvector: one iteration solves it exactly, the next would
    # divide 0 by 0.
    a = _spd(rng, 5)
    _, vectors = np.linalg.eigh(a)
    b = vectors[:, 2]
    x = trust_region.conjugate_gradient(_matvec(a), tf.constant(b), 10)
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(a, b), atol=1e-12)


def test_conjugate_gradient_rejects_zero_iterations():
    with pytest.raises(ValueError, match="max_iterations must be >= 1"):
        trust_region.conjugate_gradient(lambda v: v, tf.ones(3), 0)


def test_trust_region_step_lands_on_the_kl_boundary(rng):
    a, x = _spd(rng, 4), rng.normal(size=4)
    step = trust_region.trust_region_step(
        tf.constant(x), tf.constant(a @ x), max_kl=0.01
    ).numpy()
    assert 0.5 * step @ a @ step == pytest.approx(0.01, rel=1e-12)
    np.testing.assert_allclose(
        step / np.linalg.norm(step), x / np.linalg.norm(x)
    )


def test_flatten_and_unflatten_are_inverse():
    variables = [tf.Variable(tf.zeros([2, 3])), tf.Variable(tf.zeros([4]))]
    vector = tf.range(10, dtype=tf.float32)
    parts = trust_region.unflatten(vector, variables)
    assert [p.shape for p in parts] == [(2, 3), (4,)]
    np.testing.assert_array_equal(trust_region.flatten(parts), vector)
    with pytest.raises(ValueError, match="vector has 9 entries"):
        trust_region.unflatten(vector[:9], variables)


def test_fisher_vector_product_of_a_softmax_policy_is_the_dense_fisher(rng):
    # logits = s W: the Fisher of vec(W) (row-major) is
    # mean_s (s sᵀ) ⊗ (diag(p) - p pᵀ).
    states = tf.constant(rng.normal(size=(7, 3)), tf.float32)
    w = tf.Variable(rng.normal(size=(3, 4)).astype(np.float32))
    old = tfp.distributions.Categorical(logits=tf.constant(states @ w))

    def mean_kl():
        new = tfp.distributions.Categorical(logits=states @ w)
        return tf.reduce_mean(tfp.distributions.kl_divergence(old, new))

    s, p = states.numpy(), tf.nn.softmax(states @ w).numpy()
    dense = np.mean(
        [
            np.kron(np.outer(s[i], s[i]), np.diag(p[i]) - np.outer(p[i], p[i]))
            for i in range(len(s))
        ],
        axis=0,
    )
    v = rng.normal(size=12).astype(np.float32)
    product = trust_region.fisher_vector_product(mean_kl, [w], damping=0.0)
    np.testing.assert_allclose(product(tf.constant(v)), dense @ v, atol=1e-5)
    damped = trust_region.fisher_vector_product(mean_kl, [w], damping=0.3)
    np.testing.assert_allclose(
        damped(tf.constant(v)), dense @ v + 0.3 * v, atol=1e-5
    )


def test_fisher_vector_product_of_a_gaussian_policy_network(rng):
    # N(μ_θ(s), diag σ²) with σ = exp(log_std): the Fisher in (μ, log σ) is
    # diag(1/σ², 2), so F_θ = mean_s J_sᵀ diag(1/σ², 2) J_s with J_s the
    # Jacobian of (μ(s), log σ) in the policy's parameters.
    obs_spec = tensor_spec.BoundedTensorSpec([3], tf.float32, -1.0, 1.0)
    act_spec = tensor_spec.BoundedTensorSpec([2], tf.float32, -1.0, 1.0)
    net = ActorCriticNetwork(
        obs_spec, act_spec, hidden_units=(4,), shared_torso=False
    )
    states = tf.constant(rng.normal(size=(5, 3)), tf.float32)
    net(states)
    net._log_std.assign([0.3, -0.5])
    policy = [v for v in net.trainable_variables if "value" not in v.path]
    assert len(policy) == 5  # kernel, bias, kernel, bias, log σ
    (old, _), _ = net(states)

    def mean_kl():
        (new, _), _ = net(states)
        return tf.reduce_mean(tfp.distributions.kl_divergence(old, new))

    with tf.GradientTape(persistent=True) as tape:
        (new, _), _ = net(states)
        outputs = tf.concat(
            [new.mean(), tf.math.log(new.stddev())], axis=1
        )  # [5, 4]
    jacobian = tf.concat(
        [tf.reshape(j, [5, 4, -1]) for j in tape.jacobian(outputs, policy)],
        axis=2,
    ).numpy()
    sigma = np.exp([0.3, -0.5])
    metric = np.diag(np.concatenate([1 / sigma**2, [2.0, 2.0]]))
    dense = np.mean([j.T @ metric @ j for j in jacobian], axis=0)
    v = rng.normal(size=dense.shape[0]).astype(np.float32)
    product = trust_region.fisher_vector_product(mean_kl, policy, damping=0.0)
    np.testing.assert_allclose(product(tf.constant(v)), dense @ v, rtol=1e-4)


def _trpo(env_id="CartPole-v1", network_kwargs=None, **kwargs):
    py_env = GymnasiumEnvironment(env_id, num_envs=4, seed=0)
    env = tf_py_environment.TFPyEnvironment(py_env)
    net = ActorCriticNetwork(
        env.observation_spec(),
        env.action_spec(),
        hidden_units=(8,),
        **{"shared_torso": False, **(network_kwargs or {})},
    )
    kwargs.setdefault("gae_lambda", 0.97)
    agent = TrpoAgent(env.time_step_spec(), env.action_spec(), net, **kwargs)
    experience = RolloutCollector(env, agent.collect_policy, 32).collect()
    return agent, experience


def _values(variables):
    return [v.numpy().copy() for v in variables]


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_an_accepted_step_improves_the_surrogate_within_the_radius(graph):
    agent, experience = _trpo(max_kl=0.01)
    net = agent.actor_critic_network
    observation = tf.reshape(experience.observation[:, :-1], [-1, 4])
    (old, _), _ = net(observation)
    policy_before = _values(agent._policy_variables)
    train = tf.function(agent.train) if graph else agent.train
    info = train(experience)
    fraction = float(info.extra.clip_coefficient)
    assert fraction in [2.0**-k for k in range(10)]
    assert float(info.extra.step_fraction) == fraction
    assert 0 < float(info.extra.kl) <= 0.01
    # The full step sits on ½ Δᵀ(F + λI)Δ = δ; the kept one at fraction².
    assert float(info.extra.predicted_kl) == pytest.approx(
        fraction**2 * 0.01, rel=1e-4
    )
    (new, _), _ = net(observation)
    valid, _ = episode_masks(
        experience.step_type[:, :-1], experience.next_step_type[:, :-1]
    )
    valid = tf.reshape(valid, [-1])
    kl = tf.reduce_sum(
        valid * tfp.distributions.kl_divergence(old, new)
    ) / tf.reduce_sum(valid)
    assert float(info.extra.kl) == pytest.approx(float(kl), rel=1e-5)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(policy_before, _values(agent._policy_variables))
    )


def test_a_rejected_line_search_leaves_the_policy_unchanged():
    # No step can reach a million times its expected improvement.
    agent, experience = _trpo(accept_ratio=1e6)
    policy_before = _values(agent._policy_variables)
    value_before = _values(agent._value_variables)
    info = agent.train(experience)
    assert float(info.extra.clip_coefficient) == 0.0
    assert float(info.extra.kl) == 0.0
    for a, b in zip(policy_before, _values(agent._policy_variables)):
        np.testing.assert_array_equal(a, b)
    # The value function is fitted whatever the line search decides.
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(value_before, _values(agent._value_variables))
    )


def test_the_value_fit_lowers_the_value_loss():
    agent, experience = _trpo(
        value_optimizer=keras.optimizers.Adam(0.03), value_epochs=30
    )
    before = agent.train(experience).extra.value_loss
    after = agent.train(experience).extra.value_loss
    assert float(after) < 0.5 * float(before)


@pytest.mark.slow
def test_trpo_on_gaussian_actions():
    agent, experience = _trpo(
        "Pendulum-v1", network_kwargs=dict(normalize_observations=True)
    )
    info = tf.function(agent.train)(experience)
    assert 0 < float(info.extra.kl) <= agent.max_kl
    assert np.isfinite(float(info.loss))


def test_the_value_fit_takes_epochs_times_minibatches_steps():
    # 4 envs x 32 steps = 128 rows: 2 minibatches of 64 per epoch.
    agent, experience = _trpo(value_epochs=3)
    agent.train(experience)
    assert int(agent.value_optimizer.iterations) == 3 * 2


@pytest.mark.parametrize("algo", ["acktr", "a2c"])
def test_a_separate_value_fit_leaves_the_policy_step_to_the_optimizer(algo):
    py_env = GymnasiumEnvironment("CartPole-v1", num_envs=4, seed=0)
    env = tf_py_environment.TFPyEnvironment(py_env)
    net = ActorCriticNetwork(
        env.observation_spec(),
        env.action_spec(),
        hidden_units=(8,),
        shared_torso=False,
    )
    Agent = AcktrAgent if algo == "acktr" else A2CAgent
    agent = Agent(
        env.time_step_spec(),
        env.action_spec(),
        net,
        value_optimizer=keras.optimizers.Adam(1e-3),
        value_epochs=2,
        ent_coef=0.01,
    )
    experience = RolloutCollector(env, agent.collect_policy, 32).collect()
    policy = [v.path for v in agent._policy_variables]
    assert policy and all("value" not in p for p in policy)
    info = agent.train(experience)
    # The loss has no value term; the value optimizer took its own steps.
    expected = info.extra.policy_loss - 0.01 * info.extra.entropy
    assert float(info.loss) == pytest.approx(float(expected), rel=1e-6)
    assert int(agent.value_optimizer.iterations) == 2 * 2
    assert int(agent.optimizer.iterations) == 1


def test_trpo_needs_separate_policy_and_value_parameters():
    with pytest.raises(ValueError, match="must not share parameters"):
        _trpo(network_kwargs=dict(shared_torso=True))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_kl=0.0), "max_kl=0.0"),
        (dict(cg_iterations=0), "cg_iterations"),
        (dict(line_search_steps=2.5), "line_search_steps"),
        (dict(value_minibatch_size=0), "value_minibatch_size"),
        (dict(damping=-1.0), "damping"),
        (dict(target_kl=0.01), "target_kl=0.01"),
        (dict(value_optimizer="adam"), "Received: 'adam'"),
    ],
)
def test_bad_trpo_arguments_raise_with_what_was_received(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _trpo(**kwargs)


def _a2c(target_kl, learning_rate, **kwargs):
    py_env = GymnasiumEnvironment("CartPole-v1", num_envs=2, seed=0)
    env = tf_py_environment.TFPyEnvironment(py_env)
    net = ActorCriticNetwork(
        env.observation_spec(), env.action_spec(), hidden_units=(8,)
    )
    agent = A2CAgent(
        env.time_step_spec(),
        env.action_spec(),
        net,
        a2c_optimizer(learning_rate=learning_rate),
        target_kl=target_kl,
        **kwargs,
    )
    return agent, RolloutCollector(env, agent.collect_policy, 8).collect()


@pytest.mark.parametrize(
    "target_kl, factor", [(1e3, 1.5), (1e-12, 1 / 1.5)], ids=["up", "down"]
)
def test_target_kl_scales_the_learning_rate_by_1_5(target_kl, factor):
    agent, experience = _a2c(target_kl, 1e-3)
    kl = float(agent.train(experience).extra.kl)
    assert kl < 0.5 * target_kl or kl > 2 * target_kl
    assert float(agent.optimizer.learning_rate) == pytest.approx(1e-3 * factor)


def test_target_kl_keeps_the_rate_within_its_bounds():
    agent, experience = _a2c(1e3, 0.9)
    agent.train(experience)
    assert float(agent.optimizer.learning_rate) == pytest.approx(1.0)


def test_target_kl_needs_a_constant_learning_rate():
    schedule = keras.optimizers.schedules.PolynomialDecay(1e-3, 100)
    with pytest.raises(ValueError, match="needs a constant one"):
        _a2c(0.01, schedule)


def test_warm_start_scales_the_rate_by_the_root_of_the_kl_ratio():
    # KL grows as the square of a small step: √(κ / KL) aims the next
    # update's KL at κ, at most 10x at a time, until a KL reaches κ / 2.
    target_kl = 1.0
    agent, experience = _a2c(target_kl, 1e-4, warm_start=True)
    rate = 1e-4
    for _ in range(3):
        kl = float(agent.train(experience).extra.kl)
        assert 0 < kl < 0.5 * target_kl
        rate = min(rate * min(np.sqrt(target_kl / kl), 10.0), 1.0)
        assert float(agent.optimizer.learning_rate) == pytest.approx(
            rate, rel=1e-5
        )


def test_warm_start_ends_at_the_first_kl_near_the_target():
    # κ = the KL the first update reaches (measured on a twin agent): the
    # rate stays, the warm start ends, and a later KL far below κ / 2 gets
    # the usual 1.5x, not √(κ / KL).
    keras.utils.set_random_seed(0)
    twin, experience = _a2c(None, 1e-3)
    target_kl = float(twin.train(experience).extra.kl)
    keras.utils.set_random_seed(0)
    agent, experience = _a2c(target_kl, 1e-3, warm_start=True)
    kl = float(agent.train(experience).extra.kl)
    assert 0.5 * target_kl <= kl <= 2 * target_kl
    assert float(agent.optimizer.learning_rate) == pytest.approx(1e-3)
    agent.optimizer.learning_rate = 1e-7
    assert float(agent.train(experience).extra.kl) < 0.5 * target_kl
    assert float(agent.optimizer.learning_rate) == pytest.approx(1.5e-7)


def test_warm_start_needs_a_target_kl():
    with pytest.raises(ValueError, match="warm_start=True"):
        _a2c(None, 1e-3, warm_start=True)


def test_target_kl_follows_a_schedule_of_the_update_count():
    # κ(0) = 1e3 lies far above any KL (rate x 1.5), κ(1) = 1e-12 far below
    # (rate / 1.5).
    schedule = keras.optimizers.schedules.PolynomialDecay(
        1e3, decay_steps=1, end_learning_rate=1e-12
    )
    agent, experience = _a2c(schedule, 1e-3)
    agent.train(experience)
    assert float(agent.optimizer.learning_rate) == pytest.approx(1.5e-3)
    agent.train(experience)
    assert float(agent.optimizer.learning_rate) == pytest.approx(1e-3)


def test_a_target_kl_schedule_must_start_positive():
    schedule = keras.optimizers.schedules.PolynomialDecay(0.0, 10)
    with pytest.raises(ValueError, match=r"at update 0: 0.0"):
        _a2c(schedule, 1e-3)
