"""ACKTR and A2C as tf-agents agents: losses, Fisher pass, KL clip,
pipelines, export and resume."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from tf_agents.drivers import dynamic_step_driver
from tf_agents.environments import tf_py_environment
from tf_agents.networks import network
from tf_agents.policies import policy_saver
from tf_agents.replay_buffers import tf_uniform_replay_buffer
from tf_agents.trajectories import time_step as ts

import keras_kfac
from agents import A2CAgent, AcktrAgent, acktr_optimizer, minibatches
from agents.envs import GymnasiumEnvironment
from agents.networks import ActorCriticNetwork, ObservationNormalizer
from agents.rollout import RolloutCollector

L = ts.StepType.LAST


def _setup(
    env_id="CartPole-v1",
    num_envs=4,
    algo="acktr",
    network_kwargs=None,
    **agent_kwargs,
):
    py_env = GymnasiumEnvironment(env_id, num_envs=num_envs, seed=0)
    env = tf_py_environment.TFPyEnvironment(py_env)
    net = ActorCriticNetwork(
        env.observation_spec(),
        env.action_spec(),
        hidden_units=(8,),
        **(network_kwargs or {}),
    )
    Agent = AcktrAgent if algo == "acktr" else A2CAgent
    agent = Agent(env.time_step_spec(), env.action_spec(), net, **agent_kwargs)
    return py_env, env, agent


def _rollout(env, agent, n_steps=6):
    return RolloutCollector(env, agent.collect_policy, n_steps).collect()


def _weights(agent):
    return [
        v.numpy().copy() for v in agent.actor_critic_network.trainable_variables
    ]


def test_loss_info_matches_formulas_on_the_batch():
    py_env, env, agent = _setup(
        "toy_envs:Countdown-v0",
        algo="a2c",
        gamma=0.9,
        ent_coef=0.1,
        vf_coef=0.5,
    )
    experience = _rollout(env, agent, n_steps=7)
    net = agent.actor_critic_network
    (dist, values), _ = net(experience.observation, training=False)
    logits, values = dist.logits.numpy(), values.numpy()
    step_types = experience.step_type.numpy()
    rewards = experience.reward.numpy()[:, :-1]
    actions = experience.action.numpy()[:, :-1]
    # n-step returns by a forward walk (Countdown only terminates).
    B, T = rewards.shape
    returns = np.zeros((B, T))
    for b in range(B):
        for t in range(T):
            if step_types[b, t] == L:
                continue
            for k in range(t, T):
                returns[b, t] += 0.9 ** (k - t) * rewards[b, k]
                if step_types[b, k + 1] == L:
                    break
            else:
                returns[b, t] += 0.9 ** (T - t) * values[b, T]
    valid = step_types[:, :-1] != L
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    p = np.exp(log_p)
    log_prob = np.take_along_axis(log_p[:, :-1], actions[..., None], -1)[..., 0]
    advantages = returns - values[:, :-1]
    expected_pg = -(advantages * log_prob)[valid].mean()
    expected_vf = ((returns - values[:, :-1]) ** 2)[valid].mean()
    expected_entropy = (-(p * log_p).sum(-1))[:, :-1][valid].mean()
    # The gradient of that loss (advantages and returns held fixed).
    mask = tf.constant(valid, tf.float32)
    with tf.GradientTape() as tape:
        (dist_t, values_t), _ = net(experience.observation, training=False)
        log_p_t = tf.nn.log_softmax(dist_t.logits)[:, :-1]
        log_prob_t = tf.gather(log_p_t, actions, batch_dims=2)
        entropy_t = -tf.reduce_sum(tf.exp(log_p_t) * log_p_t, -1)
        squared = tf.square(returns - values_t[:, :-1])

        def mean(x):
            return tf.reduce_sum(mask * tf.cast(x, tf.float32)) / valid.sum()

        total = (
            -mean(advantages * log_prob_t)
            - 0.1 * mean(entropy_t)
            + 0.5 * mean(squared)
        )
    expected_norm = tf.linalg.global_norm(
        tape.gradient(total, net.trainable_variables)
    )

    info = agent.train(experience)
    np.testing.assert_allclose(
        info.extra.policy_loss, expected_pg, rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(info.extra.value_loss, expected_vf, rtol=1e-4)
    np.testing.assert_allclose(info.extra.entropy, expected_entropy, rtol=1e-5)
    np.testing.assert_allclose(
        info.loss,
        expected_pg - 0.1 * expected_entropy + 0.5 * expected_vf,
        rtol=1e-4,
    )
    # Before the optimizer's clipping (max_grad_norm) shortens it.
    np.testing.assert_allclose(
        info.extra.gradient_norm, expected_norm, rtol=1e-4
    )
    py_env.close()


def _factors_after_one_train(fisher_rows=None):
    """`(factors by layer id, network, rows, sampled, p, actions)` of a
    first ACKTR update with seed 7 (so the running factors equal the batch
    ones, ε = 0) in the joint step (so the value head has a block):
    `sampled` the rows the Fisher pass took, `p` the policy's
    probabilities and `actions` the actions at those rows."""
    optimizer = acktr_optimizer(cold_steps=0)
    py_env, env, agent = _setup(
        optimizer=optimizer,
        value_optimizer=None,
        seed=7,
        fisher_rows=fisher_rows,
    )
    experience = _rollout(env, agent)
    net = agent.actor_critic_network
    rows = tf.reshape(experience.observation[:, :-1], (-1, 4))
    sampled = np.arange(rows.shape[0])
    if fisher_rows is not None:
        seed = tf.random.experimental.stateless_fold_in(
            tf.constant([7, 0], tf.int64), 1
        )
        sampled = minibatches.sampled_rows(
            rows.shape[0], fisher_rows, seed
        ).numpy()
    (dist, _), _ = net(tf.gather(rows, sampled), training=False)
    actions = tf.reshape(experience.action[:, :-1], (-1,)).numpy()[sampled]
    p = tf.nn.softmax(dist.logits).numpy()
    agent.train(experience)
    py_env.close()
    factors = {
        id(b.layer): f
        for b, f in zip(optimizer.estimator.blocks, optimizer.estimator.states)
    }
    return factors, net, rows.numpy(), sampled, p, actions


def _assert_head_factors(factors, net, p, actions):
    """The heads' `G` over the rows of `p` and `actions`."""
    n = len(actions)
    # Policy head: g = ∇_logits log π(a|s) = onehot(a) - p, G = E[g gᵀ].
    g = np.eye(2)[actions] - p
    G_policy = factors[id(net._policy_head)].G.numpy()
    np.testing.assert_allclose(G_policy, g.T @ g / n, rtol=1e-4, atol=1e-7)
    # Value head: g = 2ε with the agent's noise for train step 0 drawn
    # for the n rows, G = E[4ε²].
    noise = tf.random.stateless_normal(
        (n,), tf.constant([7, 0], tf.int64)
    ).numpy()
    G_value = factors[id(net._value_head)].G.numpy()
    np.testing.assert_allclose(G_value, [[np.mean(4 * noise**2)]], rtol=1e-4)


def test_factors_come_from_the_fisher_pass_only():
    factors, net, _, _, p, actions = _factors_after_one_train()
    _assert_head_factors(factors, net, p, actions)


def test_fisher_rows_take_the_factors_from_the_sampled_rows():
    # As above, with the Fisher pass over m = 5 of the 24 rows: the
    # factors are those of the rows `sampled_rows` draws from the seed
    # the agent derives, with the critic's noise drawn for those m rows.
    m = 5
    factors, net, rows, sampled, p, actions = _factors_after_one_train(m)
    assert len(set(sampled)) == m < len(rows)
    _assert_head_factors(factors, net, p, actions)
    # The A of each layer on the observations: [x; 1][x; 1]ᵀ over the
    # sampled rows (the layers after them see 8 units, not 4).
    x = np.concatenate([rows[sampled], np.ones((m, 1))], axis=1)
    on_inputs = [f.A.numpy() for f in factors.values() if f.A.shape == (5, 5)]
    assert on_inputs
    for A in on_inputs:
        np.testing.assert_allclose(A, x.T @ x / m, rtol=1e-5, atol=1e-6)


def test_sampled_rows_are_distinct_and_uniform():
    # Each of 10 rows is among 3 drawn with probability 0.3: over 2000
    # seeds its frequency is within 4 standard deviations of it.
    counts = np.zeros(10)
    for k in range(2000):
        drawn = minibatches.sampled_rows(10, 3, tf.constant([k, 1])).numpy()
        assert len(set(drawn)) == 3 and set(drawn) <= set(range(10))
        counts[drawn] += 1
    np.testing.assert_allclose(
        counts / 2000, 0.3, atol=4 * np.sqrt(0.3 * 0.7 / 2000)
    )
    # More rows asked for than there are: every row, once.
    every = minibatches.sampled_rows(4, 9, tf.constant([0, 1])).numpy()
    assert sorted(every) == [0, 1, 2, 3]


def test_fisher_rows_must_be_a_positive_integer():
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match=f"fisher_rows={bad!r}"):
            _setup(fisher_rows=bad)


def test_loss_pass_alone_records_no_statistics():
    py_env, env, agent = _setup()
    experience = _rollout(env, agent)
    layers = [b.layer for b in agent.optimizer.estimator.blocks]
    for layer in layers:
        layer.statistics.fresh.assign(0.0)
    rows = tf.reshape(experience.observation[:, :-1], (-1, 4))
    variables = agent.actor_critic_network.trainable_variables
    with tf.GradientTape() as tape:
        (dist, values), _ = agent.actor_critic_network(rows, training=True)
        loss = tf.reduce_mean(values) + tf.reduce_mean(dist.logits)
    with keras_kfac.collecting_statistics(False):
        tape.gradient(loss, variables)
    assert all(float(layer.statistics.fresh) == 0.0 for layer in layers)
    py_env.close()


def test_one_train_changes_the_weights_within_the_kl_clip():
    delta = 1e-3
    kls = {}
    for kl_clip in (delta, None):
        keras.utils.set_random_seed(0)
        optimizer = acktr_optimizer(
            learning_rate=10.0,
            kl_clip=kl_clip,
            momentum=0.0,
            cold_steps=0,
            max_grad_norm=None,
        )
        # The KL clip alone, without the guard that would backtrack.
        py_env, env, agent = _setup(
            optimizer=optimizer, ent_coef=0.0, max_kl_ratio=None
        )
        experience = _rollout(env, agent, n_steps=16)
        before = _weights(agent)
        info = agent.train(experience)
        after = _weights(agent)
        assert all(np.isfinite(w).all() for w in after)
        assert any(not np.allclose(a, b) for a, b in zip(before, after))
        kls[kl_clip] = float(info.extra.kl)
        if kl_clip is not None:
            assert float(info.extra.clip_coefficient) < 1.0
        py_env.close()
    # ½ Δᵀ F̂ Δ = δ bounds the policy's share; the realized KL is a
    # second-order match of it, so it stays near δ, far below the unclipped.
    assert 0.0 < kls[delta] <= 2 * delta
    assert kls[None] > 20 * kls[delta]


def test_a2c_uses_its_first_order_optimizer():
    py_env, env, agent = _setup(algo="a2c")
    assert isinstance(agent.optimizer, keras.optimizers.RMSprop)
    before = _weights(agent)
    info = agent.train(_rollout(env, agent))
    assert float(info.extra.clip_coefficient) == 1.0
    assert any(not np.allclose(a, b) for a, b in zip(before, _weights(agent)))
    py_env.close()


@pytest.mark.slow
def test_driver_and_replay_buffer_pipeline():
    py_env, env, agent = _setup(num_envs=2)
    buffer = tf_uniform_replay_buffer.TFUniformReplayBuffer(
        agent.collect_data_spec, batch_size=env.batch_size, max_length=9
    )
    driver = dynamic_step_driver.DynamicStepDriver(
        env, agent.collect_policy, observers=[buffer.add_batch], num_steps=2 * 9
    )
    train = tf.function(agent.train)
    before = _weights(agent)
    for _ in range(3):
        driver.run()
        info = train(buffer.gather_all())
        buffer.clear()
        assert np.isfinite(info.loss)
    assert int(agent.train_step_counter) == 3
    assert any(not np.allclose(a, b) for a, b in zip(before, _weights(agent)))
    py_env.close()


class _UserNetwork(network.Network):
    """A user's own network: one shared K-FAC torso, Categorical head."""

    def __init__(self, observation_spec):
        super().__init__(
            input_tensor_spec=observation_spec,
            state_spec=(),
            name="user_network",
        )
        self.torso = keras_kfac.layers.Dense(16, activation="relu")
        self.logits = keras_kfac.layers.Dense(2)
        self.value = keras_kfac.layers.Dense(1)

    def call(
        self, observation, step_type=None, network_state=(), training=False
    ):
        h = self.torso(observation, training=training)
        distribution = tfp.distributions.Categorical(
            logits=self.logits(h, training=training), dtype=tf.int64
        )
        return (
            distribution,
            self.value(h, training=training)[:, 0],
        ), network_state


def test_a_users_network_trains_with_kfac_on_all_its_layers():
    py_env = GymnasiumEnvironment("CartPole-v1", num_envs=2, seed=0)
    env = tf_py_environment.TFPyEnvironment(py_env)
    net = _UserNetwork(env.observation_spec())
    # The joint step: the value head is K-FAC's too.
    agent = AcktrAgent(
        env.time_step_spec(), env.action_spec(), net, value_optimizer=None
    )
    assert len(agent.optimizer.estimator.blocks) == 3
    info = agent.train(_rollout(env, agent))
    assert np.isfinite(info.loss)
    py_env.close()


def test_bad_arguments_raise_with_what_was_received():
    py_env = GymnasiumEnvironment("CartPole-v1")
    env = tf_py_environment.TFPyEnvironment(py_env)
    specs = (env.time_step_spec(), env.action_spec())
    net = ActorCriticNetwork(env.observation_spec(), env.action_spec())
    with pytest.raises(ValueError, match="KFAC optimizer.*Adam"):
        AcktrAgent(*specs, net, optimizer=keras.optimizers.Adam())
    with pytest.raises(ValueError, match="gamma=1.5"):
        AcktrAgent(*specs, net, gamma=1.5)
    with pytest.raises(ValueError, match="gae_lambda=-0.1"):
        A2CAgent(*specs, net, gae_lambda=-0.1)
    with pytest.raises(ValueError, match="vf_fisher_coef=0"):
        AcktrAgent(*specs, net, vf_fisher_coef=0)
    with pytest.raises(ValueError, match="must return"):
        AcktrAgent(*specs, _NotActorCritic(env.observation_spec()))
    with pytest.raises(ValueError, match="torso='resnet'"):
        ActorCriticNetwork(
            env.observation_spec(), env.action_spec(), torso="resnet"
        )
    py_env.close()


class _NotActorCritic(network.Network):
    def __init__(self, observation_spec):
        super().__init__(
            input_tensor_spec=observation_spec,
            state_spec=(),
            name="not_actor_critic",
        )
        self.dense = keras_kfac.layers.Dense(2)

    def call(
        self, observation, step_type=None, network_state=(), training=False
    ):
        return self.dense(observation), network_state


def test_a_trajectory_with_the_wrong_spec_is_rejected():
    py_env, env, agent = _setup()
    experience = _rollout(env, agent)
    wrong = experience._replace(observation=experience.observation[..., :3])
    with pytest.raises(
        ValueError, match=r"experience.observation.*\[4, 7, 3\]"
    ):
        agent.train(wrong)
    with pytest.raises(ValueError, match="at least 2 time steps"):
        agent.train(tf.nest.map_structure(lambda x: x[:, :1], experience))
    with pytest.raises(ValueError, match="collect_data_spec"):
        agent.train(experience.observation)
    py_env.close()


def test_gaussian_policy_on_box_actions():
    py_env, env, agent = _setup("Pendulum-v1", num_envs=2)
    net = agent.actor_critic_network
    assert isinstance(net._log_std, keras.Variable)
    experience = _rollout(env, agent)
    assert experience.action.dtype == tf.float32
    before = net._log_std.numpy().copy()
    info = agent.train(experience)
    assert np.isfinite(info.loss)
    assert not np.allclose(before, net._log_std.numpy())
    py_env.close()


def test_nature_torso_on_frames():
    from tf_agents.specs import tensor_spec

    observation_spec = tensor_spec.BoundedTensorSpec(
        (84, 84, 4), tf.uint8, 0, 255
    )
    action_spec = tensor_spec.BoundedTensorSpec((), tf.int64, 0, 5)
    net = ActorCriticNetwork(observation_spec, action_spec, torso="nature")
    frames = tf.zeros((3, 84, 84, 4), tf.uint8)
    (dist, value), _ = net(frames)
    assert dist.logits.shape == (3, 6) and value.shape == (3,)
    kfac_layers = [
        layer
        for layer in net._policy_torso
        if isinstance(layer, keras_kfac.layers.KFACLayer)
    ]
    assert (
        len(kfac_layers) == 4 and net._value_torso is None
    )  # shared, as in the paper


def test_observation_normalizer_matches_the_moments_of_all_data(rng):
    normalizer = ObservationNormalizer()
    batches = [
        rng.normal(3.0, 2.0, size=(n, 2)).astype(np.float32) for n in (5, 1, 17)
    ]
    normalizer.build((None, 2))
    for batch in batches:
        normalizer.update(batch)
    data = np.concatenate(batches)
    np.testing.assert_allclose(normalizer.mean, data.mean(0), rtol=1e-5)
    np.testing.assert_allclose(normalizer.variance, data.var(0), rtol=1e-4)
    np.testing.assert_allclose(
        normalizer(data[:2]),
        (data[:2] - data.mean(0)) / np.sqrt(data.var(0) + 1e-8),
        rtol=1e-4,
    )


_LOAD_WITHOUT_OUR_PACKAGES = textwrap.dedent(
    """
    import sys
    sys.modules["keras_kfac"] = None  # any import of them now fails
    sys.modules["agents"] = None
    import numpy as np
    from tf_agents.policies import py_tf_eager_policy
    from tf_agents.trajectories import time_step as ts
    policy = py_tf_eager_policy.SavedModelPyTFEagerPolicy(
        sys.argv[1], load_specs_from_pbtxt=True, batch_time_steps=False)
    observation = np.load(sys.argv[2])
    n = len(observation)
    step = ts.TimeStep(np.zeros(n, np.int32), np.zeros(n, np.float32),
                       np.ones(n, np.float32), observation)
    np.save(sys.argv[3], policy.action(step).action)
    assert not any(m.split(".")[0] in ("keras_kfac", "agents")
                   for m, v in sys.modules.items() if v is not None)
    """
)


@pytest.mark.parametrize(
    "env_id, normalize", [("CartPole-v1", False), ("Pendulum-v1", True)]
)
@pytest.mark.slow
def test_policy_saver_round_trip_without_our_packages(
    tmp_path, env_id, normalize
):
    py_env, env, agent = _setup(
        env_id, num_envs=2, network_kwargs={"normalize_observations": normalize}
    )
    agent.train(_rollout(env, agent))
    normalizer = agent.actor_critic_network.observation_normalizer
    assert (normalizer is not None) == normalize
    if normalize:
        assert float(normalizer.count) == 2 * 6
    policy_saver.PolicySaver(agent.policy, batch_size=None).save(
        str(tmp_path / "policy")
    )
    observation = (
        np.random.default_rng(0)
        .normal(size=(5,) + env.observation_spec().shape)
        .astype(np.float32)
    )
    np.save(tmp_path / "obs.npy", observation)
    script = tmp_path / "load.py"
    script.write_text(_LOAD_WITHOUT_OUR_PACKAGES)
    subprocess.run(
        [
            sys.executable,
            str(script),
            str(tmp_path / "policy"),
            str(tmp_path / "obs.npy"),
            str(tmp_path / "actions.npy"),
        ],
        check=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""},
    )
    step = ts.TimeStep(
        tf.zeros(5, tf.int32), tf.zeros(5), tf.ones(5), tf.constant(observation)
    )
    expected = agent.policy.action(step).action.numpy()
    np.testing.assert_allclose(
        np.load(tmp_path / "actions.npy"), expected, rtol=1e-5
    )
    py_env.close()


@pytest.mark.slow
def test_checkpoint_resume_gives_the_same_next_update(tmp_path):
    def make():
        keras.utils.set_random_seed(1)
        return _setup(
            optimizer=acktr_optimizer(cold_steps=1, inverse_update_freq=2)
        )

    py_env, env, agent = make()
    batches = [_rollout(env, agent) for _ in range(4)]
    for batch in batches[:3]:
        agent.train(batch)
    path = tf.train.Checkpoint(agent=agent).save(str(tmp_path / "ckpt"))
    agent.train(batches[3])
    expected = _weights(agent)
    py_env.close()

    keras.utils.set_random_seed(2)  # different initial weights
    py_env, env, resumed = make()
    tf.train.Checkpoint(agent=resumed).restore(
        path
    ).assert_existing_objects_matched()
    resumed.train(batches[3])
    for got, want in zip(_weights(resumed), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    py_env.close()


def test_the_collector_chains_batches_without_losing_a_transition():
    # Countdown (length 3) is deterministic: observations 3, 2, 1, then a
    # reset to 3 on the step after the terminal one (NEXT_STEP autoreset).
    py_env, env, agent = _setup("toy_envs:Countdown-v0", num_envs=2)
    collector = RolloutCollector(env, agent.collect_policy, 5)
    first, second = collector.collect(), collector.collect()
    assert first.observation.shape == (2, 6, 1)
    walk = np.concatenate(
        [first.observation[0, :-1, 0], second.observation[0, :, 0]]
    )
    np.testing.assert_array_equal(walk, [3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1])
    # The last entry of a batch is the first of the next.
    np.testing.assert_array_equal(
        first.observation[:, -1], second.observation[:, 0]
    )
    np.testing.assert_array_equal(
        first.next_step_type[:, :-2], first.step_type[:, 1:-1]
    )
    np.testing.assert_array_equal(first.reward[0, :-1], [1, 2, 3, 0, 1])
    np.testing.assert_array_equal(first.action[:, -1], [0, 0])


def test_networks_of_another_shape_get_a_clear_error():
    from tf_agents.networks import actor_distribution_network, value_network

    py_env = GymnasiumEnvironment("CartPole-v1", num_envs=2, seed=0)
    env = tf_py_environment.TFPyEnvironment(py_env)
    specs = (env.time_step_spec(), env.action_spec())
    actor = actor_distribution_network.ActorDistributionNetwork(
        env.observation_spec(), env.action_spec()
    )
    with pytest.raises(ValueError) as error:
        AcktrAgent(*specs, actor)
    message = str(error.value)
    assert "agents.networks.ActorCriticNetwork" in message
    assert "ActorDistributionNetwork(observations) raised" in message
    assert "step_type" in message
    critic = value_network.ValueNetwork(env.observation_spec())
    with pytest.raises(ValueError, match=r"must return \(\(distribution"):
        A2CAgent(*specs, critic)
    py_env.close()


@pytest.mark.slow
def test_an_image_smaller_than_the_nature_cnn_trains_with_the_small_cnn(
    tmp_path,
):
    """A 10 x 10 x 4 image, too small for the Nature CNN's 36 x 36:
    `network="auto"` builds the small CNN, and ACKTR learns to tell a
    bright image from a dark one (a blind policy's mean return is 10, the
    best 20)."""
    import toy_envs  # noqa: F401  (registers the environments)

    from agents.build import build
    from agents.config import Config, resolve
    from agents.training import run

    config = Config(
        env="toy_envs:BrightOrDark-v0",
        total_steps=3000,
        num_envs=2,
        n_steps=32,
        gamma=0.0,
        seed=0,
        logdir=str(tmp_path / "run"),
    )
    py_env, _, agent = build(resolve(config))
    py_env.close()
    strides = [
        layer.strides
        for layer in agent._network._policy_torso
        if isinstance(layer, keras.layers.Conv2D)
    ]
    assert strides == [(1, 1), (2, 2), (2, 2)]
    summary = run(config, progress=False)
    assert summary.mean_return_last_100 >= 17.0
