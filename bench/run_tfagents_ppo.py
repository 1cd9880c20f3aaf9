"""Train tf-agents' PPOClipAgent with tf-agents' own PPO defaults.

    python bench/run_tfagents_ppo.py --env HalfCheetah-v5 --seed 0 \\
        --total-steps 1000000 --out runs/tfa-ppo-HalfCheetah-v5-seed0

Needs only `requirements.lock` and this project (`pip install -e .`): it
uses `agents.envs` for the environments.

Hyperparameters, the same for every environment, are the defaults of
`train_eval` in tf-agents' `examples/ppo/schulman17/train_eval_lib.py`
(the PPO paper's MuJoCo settings), listed in `HYPERPARAMETERS`: one
environment, 2048 steps per iteration, 10 epochs of minibatches of 64
single steps, a tanh 64-64 actor and a ReLU 64-64 value network
(`ValueNetwork`'s default activation) with orthogonal kernels, Adam
(epsilon 1e-5) at 3e-4 decaying linearly to 0 over the run, clipping 0.2,
GAE with lambda 0.95 and TD(lambda) value targets, gamma 0.99, no entropy
bonus, value loss weight 0.5, gradient norm clipping 0.5, and the agent's
own running normalization of observations and rewards (rewards clipped at
10 after scaling).

Where this runner differs from that example, and why:

- Environments are Gymnasium's, through `agents.envs.GymnasiumEnvironment`
  (which keeps terminations and time-limit truncations apart), in place of
  `suite_mujoco`'s old `gym` ones.
- No Reverb server: a `DynamicStepDriver` collects each iteration into a
  `TFUniformReplayBuffer`, and the loop of tf-agents' `PPOLearner` is
  written out here: update the normalizers from the batch, compute
  advantages with `agent.preprocess_sequence`, then take `num_epochs`
  shuffled passes of `[64, 1]` minibatches (a partial last minibatch is
  dropped, as there). The example stores fixed 2048-item sequences in which
  episode boundaries take up items, dropping the steps past them; here
  every collected item is trained on, so an iteration is 2048 environment
  steps exactly.
- The actor is an `ActorDistributionNetwork` set up as the example's
  `PPOActorNetwork` (tanh 64-64 with orthogonal kernels, tanh-squashed
  Normal means, a state-independent softplus scale starting at 0.35),
  because `PPOActorNetwork` does not build under Keras 3 (its `BiasLayer`
  passes `add_weight` a positional name). The scale's bias here is a
  `BiasLayer` that builds under Keras 3. Discrete actions get the
  network's Categorical head (the example is for continuous control).
- Adam is Keras's, as `tf.compat.v1.train.AdamOptimizer` cannot update
  Keras 3 variables (same update rule and epsilon placement). The
  learning rate decays over `ceil(total_steps / 2048)` iterations, the
  run's own length (the example decays over `num_iterations`).
- The networks' variables are renamed by their unique paths so that a
  seed gives the same run in every process (see
  `_name_variables_uniquely`).

TensorFlow runs with one intra-op and one inter-op thread, so that two
runs can share the machine's two cores. See `runner_common.py` for the
output files; `train_seconds` is the wall time of the collect-and-train
loop. An episode's `env_steps` in `episodes.csv` is exact (read off the
collected trajectory); its `wall_seconds` is the time at the end of the
collect it finished in.
"""

import argparse
import math
import time

import keras
import numpy as np
import tensorflow as tf
import tf_agents
from runner_common import (
    new_episode_log,
    one_thread,
    parse_run_arguments,
    summary_line,
    write_summary,
)
from tf_agents.agents.ppo import ppo_clip_agent
from tf_agents.drivers import dynamic_step_driver
from tf_agents.environments import tf_py_environment
from tf_agents.keras_layers import bias_layer
from tf_agents.networks import (
    actor_distribution_network,
    normal_projection_network,
    value_network,
)
from tf_agents.replay_buffers import tf_uniform_replay_buffer
from tf_agents.trajectories import time_step as ts
from tf_agents.utils import common

from agents.envs import GymnasiumEnvironment, check_env_id

SOURCE = (
    "tensorflow/agents tf_agents/examples/ppo/schulman17/train_eval_lib.py: "
    "train_eval defaults"
)

HYPERPARAMETERS = {
    "num_envs": 1,
    "collect_sequence_length": 2048,
    "minibatch_size": 64,
    "num_epochs": 10,
    "actor_fc_layers": [64, 64],
    "value_fc_layers": [64, 64],
    "actor_activation": "tanh",
    "value_activation": "relu",
    "initial_action_std": 0.35,
    "learning_rate": 3e-4,
    "learning_rate_schedule": "linear to 0 over the run",
    "adam_epsilon": 1e-5,
    "importance_ratio_clipping": 0.2,
    "lambda_value": 0.95,
    "discount_factor": 0.99,
    "entropy_regularization": 0.0,
    "value_pred_loss_coef": 0.5,
    "use_gae": True,
    "use_td_lambda_return": True,
    "gradient_clipping": 0.5,
    "value_clipping": None,
    "normalize_observations": True,
    "normalize_rewards": True,
    "reward_norm_clipping": 10.0,
}

ACTIVATIONS = {"tanh": tf.nn.tanh, "relu": tf.nn.relu}


class _BiasLayer(bias_layer.BiasLayer):
    """tf-agents' `BiasLayer`, building with Keras 3's keyword-only
    `add_weight(name=...)`."""

    def build(self, input_shape):
        units = 1 if len(input_shape) == 1 else int(input_shape[-1])
        self.bias = self.add_weight(
            name="bias",
            shape=(units,),
            initializer=self.bias_initializer,
            trainable=True,
        )
        self.built = True


class _NormalProjection(normal_projection_network.NormalProjectionNetwork):
    """tf-agents' state-independent Normal head with `_BiasLayer`."""

    def __init__(self, sample_spec, initial_std: float):
        std_bias = float(np.log(np.expm1(initial_std)))  # softplus⁻¹
        super().__init__(
            sample_spec,
            init_means_output_factor=0.1,
            std_bias_initializer_value=std_bias,
        )
        self._bias = _BiasLayer(
            bias_initializer=keras.initializers.Constant(std_bias)
        )


def env_id_type(text: str) -> str:
    """`argparse` type: a registered Gymnasium id."""
    try:
        check_env_id(text)
    except (ValueError, ImportError) as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return text


def _name_variables_uniquely(variables) -> None:
    """Names each variable by its unique path, for reproducible runs.

    `PPOAgent` sorts the variables it clips and updates by name, but Keras 3
    names are short ("kernel", "bias"): ties keep an order that changes from
    process to process, so the global-norm sum rounds differently and two
    runs with the same seed part ways after the first update.
    """
    for variable in variables:
        variable._name = variable.path


def build_agent(tf_env, learning_rate_fn, hp: dict):
    """The PPOClipAgent of the schulman17 example on `tf_env`'s specs."""
    observation_spec = tf_env.observation_spec()
    action_spec = tf_env.action_spec()
    actor_net = actor_distribution_network.ActorDistributionNetwork(
        observation_spec,
        action_spec,
        fc_layer_params=tuple(hp["actor_fc_layers"]),
        activation_fn=ACTIVATIONS[hp["actor_activation"]],
        kernel_initializer=keras.initializers.Orthogonal(),
        continuous_projection_net=lambda spec: _NormalProjection(
            spec, hp["initial_action_std"]
        ),
    )
    value_net = value_network.ValueNetwork(
        observation_spec,
        fc_layer_params=tuple(hp["value_fc_layers"]),
        activation_fn=ACTIVATIONS[hp["value_activation"]],
        kernel_initializer=keras.initializers.Orthogonal(),
    )
    agent = ppo_clip_agent.PPOClipAgent(
        tf_env.time_step_spec(),
        action_spec,
        optimizer=keras.optimizers.Adam(
            learning_rate=learning_rate_fn, epsilon=hp["adam_epsilon"]
        ),
        actor_net=actor_net,
        value_net=value_net,
        importance_ratio_clipping=hp["importance_ratio_clipping"],
        lambda_value=hp["lambda_value"],
        discount_factor=hp["discount_factor"],
        entropy_regularization=hp["entropy_regularization"],
        value_pred_loss_coef=hp["value_pred_loss_coef"],
        num_epochs=1,  # the epochs are the minibatch loop's
        use_gae=hp["use_gae"],
        use_td_lambda_return=hp["use_td_lambda_return"],
        normalize_rewards=hp["normalize_rewards"],
        reward_norm_clipping=hp["reward_norm_clipping"],
        normalize_observations=hp["normalize_observations"],
        gradient_clipping=hp["gradient_clipping"],
        value_clipping=hp["value_clipping"],
        compute_value_and_advantage_in_train=False,
        update_normalizers_in_train=False,
    )
    agent.initialize()
    _name_variables_uniquely(actor_net.trainable_weights)
    _name_variables_uniquely(value_net.trainable_weights)
    return agent


def episode_end_steps(experience, steps_before: int):
    """Environment steps (all copies) at the end of each episode that ends
    in `experience` (`[copies, time]`), in the order
    `GymnasiumEnvironment.pop_completed_episodes` reports them (by time,
    then copy); and the steps at the end of `experience`.

    Boundary items (a `LAST` step followed by the reset) are not steps.
    """
    taken = ~experience.is_boundary().numpy()
    ended = experience.next_step_type.numpy() == ts.StepType.LAST
    steps_after = steps_before + np.cumsum(taken.sum(axis=0))
    times, _ = np.nonzero(ended.T)
    return steps_after[times], int(steps_before + taken.sum())


def minibatch_trainer(agent):
    """`train(steps, indices)`: `agent.train` on `steps[indices]`, as one
    `tf.function` (the number of steps varies between iterations)."""

    def train(steps, indices):
        return agent.train(
            tf.nest.map_structure(lambda t: tf.gather(t, indices), steps)
        )

    return tf.function(train, autograph=False, reduce_retracing=True)


def train_on_batch(agent, train, experience, hp: dict, rng) -> None:
    """One iteration of tf-agents' `PPOLearner` on `experience`."""
    agent.update_observation_normalizer(experience.observation)
    agent.update_reward_normalizer(experience.reward)
    processed = agent.preprocess_sequence(experience)
    steps = tf.nest.map_structure(  # [copies, time, ...] -> [n, 1, ...]
        lambda t: tf.reshape(t, [-1, 1] + t.shape[2:].as_list()), processed
    )
    count = int(steps.reward.shape[0])
    size = hp["minibatch_size"]
    for _ in range(hp["num_epochs"]):
        order = rng.permutation(count)
        for start in range(0, count - size + 1, size):
            train(steps, order[start : start + size])


def collector(tf_env, agent, hp: dict):
    """`(replay_buffer, collect)`: `collect(time_step, policy_state)` runs
    `agent.collect_policy` for one iteration's steps into `replay_buffer`."""
    num_envs = hp["num_envs"]
    collect_steps = hp["collect_sequence_length"]
    # Every item a collect can add per copy: `collect_steps / num_envs`
    # steps, at most as many boundaries, one more carried over.
    capacity = 2 * math.ceil(collect_steps / num_envs) + 2
    replay_buffer = tf_uniform_replay_buffer.TFUniformReplayBuffer(
        agent.collect_data_spec, batch_size=num_envs, max_length=capacity
    )
    driver = dynamic_step_driver.DynamicStepDriver(
        tf_env,
        agent.collect_policy,
        observers=[replay_buffer.add_batch],
        num_steps=collect_steps,
    )
    return replay_buffer, common.function(driver.run)


def log_episodes(experience, py_env, log, steps_before: int, seconds) -> int:
    """Appends the episodes that ended in `experience` to `log`, each at
    the exact environment steps of its end; returns the steps at the end
    of `experience`."""
    ends, steps_after = episode_end_steps(experience, steps_before)
    finished = py_env.pop_completed_episodes()
    if len(finished) != len(ends):
        raise RuntimeError(
            f"{len(finished)} episodes finished but the collected "
            f"data holds {len(ends)} episode ends."
        )
    log.append(
        (steps, episode_return, length, seconds)
        for steps, (episode_return, length) in zip(ends, finished, strict=True)
    )
    return steps_after


def run(env_id: str, seed: int, total_steps: int, out: str) -> dict:
    """Trains one run and writes its files; returns the summary."""
    hp = HYPERPARAMETERS
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    iterations = math.ceil(total_steps / hp["collect_sequence_length"])
    py_env = GymnasiumEnvironment(env_id, hp["num_envs"], seed=seed)
    tf_env = tf_py_environment.TFPyEnvironment(py_env)
    log = new_episode_log(out)
    try:
        iteration = tf.Variable(0, dtype=tf.int64, trainable=False)
        agent = build_agent(
            tf_env,
            lambda: (
                hp["learning_rate"]
                * (1.0 - tf.cast(iteration, tf.float32) / iterations)
            ),
            hp,
        )
        replay_buffer, collect = collector(tf_env, agent, hp)
        train = minibatch_trainer(agent)

        env_steps = 0
        start, cpu_start = time.perf_counter(), time.process_time()
        time_step = tf_env.reset()
        policy_state = agent.collect_policy.get_initial_state(hp["num_envs"])
        while env_steps < total_steps:
            time_step, policy_state = collect(
                time_step=time_step, policy_state=policy_state
            )
            experience = replay_buffer.gather_all()
            replay_buffer.clear()
            env_steps = log_episodes(
                experience,
                py_env,
                log,
                env_steps,
                time.perf_counter() - start,
            )
            train_on_batch(agent, train, experience, hp, rng)
            iteration.assign_add(1)
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
    finally:
        tf_env.close()
    return write_summary(
        out,
        library="tf-agents",
        algo="ppo",
        env=env_id,
        seed=seed,
        env_steps=env_steps,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        episodes=len(log.rows),
        hyperparameters=hp,
        source=SOURCE,
        versions={
            "tf_agents": tf_agents.__version__,
            "tensorflow": tf.__version__,
        },
    )


def main(argv=None) -> None:
    """Parses the command line, trains, prints a one-line result."""
    _, args = parse_run_arguments(__doc__, env_id_type, argv)
    one_thread()
    summary = run(args.env, args.seed, args.total_steps, args.out)
    print(summary_line(summary))


if __name__ == "__main__":
    main()
