"""The environment and agent a `Config` describes (`build`)."""

import keras
import tensorflow as tf
from tf_agents.environments import tf_py_environment

# The agent modules, not their classes: bench/natural_direction.py swaps
# `agents.acktr.AcktrAgent` for a measuring subclass before calling build.
from agents import a2c, acktr, npg, ppo, reinforce, trpo
from agents.config import TARGET_KL_END, Config, resolve
from agents.envs import GymnasiumEnvironment
from agents.networks import ActorCriticNetwork, torso_for
from agents.optimizers import (
    a2c_optimizer,
    acktr_optimizer,
    ppo_optimizer,
    reinforce_optimizer,
    value_optimizer,
)


def build(config: Config):
    """`(py_env, tf_env, agent)` for `config`, resolved first
    (`agents.config.resolve`); raises on bad input."""
    config = resolve(config)
    keras.utils.set_random_seed(config.seed)
    py_env = GymnasiumEnvironment(
        config.env,
        config.num_envs,
        seed=config.seed,
        processes=config.processes,
        time_feature=config.time_feature,
        previous_observation=config.previous_observation,
    )
    try:
        tf_env = tf_py_environment.TFPyEnvironment(py_env)
        agent = _agent(config, tf_env, _network(config, tf_env))
    except BaseException:
        py_env.close()
        raise
    return py_env, tf_env, agent


def _network(config: Config, tf_env) -> ActorCriticNetwork:
    """The actor-critic network, its torso `config.network`
    (`agents.networks.torso_for`)."""
    observation_spec = tf_env.observation_spec()
    return ActorCriticNetwork(
        observation_spec,
        tf_env.action_spec(),
        torso=torso_for(observation_spec.shape, config.network),
        hidden_units=config.hidden_units,
        shared_torso=config.shared_torso,
        normalize_observations=config.normalize_observations,
        initial_log_std=config.initial_log_std,
        weight_sharing=config.weight_sharing,
    )


def _step_sizes(config: Config) -> tuple:
    """`(learning_rate, target_kl)`: with `lr_schedule="linear"`, the
    target KL decays to `TARGET_KL_END` of itself if there is one, else
    the learning rate to 0."""
    learning_rate, target_kl = config.learning_rate, config.target_kl
    if config.lr_schedule == "linear" and target_kl is not None:
        target_kl = keras.optimizers.schedules.PolynomialDecay(
            target_kl,
            config.total_updates,
            end_learning_rate=target_kl * TARGET_KL_END,
        )
    elif config.lr_schedule == "linear" and learning_rate is not None:
        learning_rate = keras.optimizers.schedules.PolynomialDecay(
            config.learning_rate,
            config.total_updates,
            end_learning_rate=0.0,
        )
    return learning_rate, target_kl


def _agent(config: Config, tf_env, network: ActorCriticNetwork):
    """The agent of `config.algo`, every setting from `config`."""
    learning_rate, target_kl = _step_sizes(config)
    common = dict(
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        ent_coef=config.ent_coef,
        normalize_advantages=config.normalize_advantages,
        scale_rewards=config.scale_rewards,
        value_optimizer=value_optimizer(
            config.critic, config.value_learning_rate
        ),
        value_epochs=config.value_epochs,
        value_minibatch_size=config.value_minibatch_size,
        seed=config.seed,
        train_step_counter=tf.Variable(0, dtype=tf.int64, name="train_step"),
    )
    specs = (tf_env.time_step_spec(), tf_env.action_spec(), network)
    return _AGENTS[config.algo](config, specs, common, learning_rate, target_kl)


# Each builder takes `(config, specs, common, learning_rate, target_kl)`:
# the agent's specs and network, the arguments every agent takes, and the
# step sizes of `_step_sizes`.


def _acktr(config, specs, common, learning_rate, target_kl):
    optimizer = acktr_optimizer(
        learning_rate=learning_rate,
        kl_clip=config.kl_clip,
        damping=config.damping,
        inverse_update_freq=config.inverse_update_freq,
        cold_steps=config.cold_steps,
        momentum=config.momentum,
        stats_decay=config.stats_decay,
        max_grad_norm=config.max_grad_norm,
        damping_mode=config.damping_mode,
    )
    return acktr.AcktrAgent(
        *specs,
        optimizer,
        vf_fisher_coef=config.vf_fisher_coef,
        vf_coef=config.vf_coef,
        target_kl=target_kl,
        warm_start=config.warm_start,
        max_kl_ratio=config.max_kl_ratio,
        fisher_rows=config.fisher_rows,
        **common,
    )


def _a2c(config, specs, common, learning_rate, target_kl):
    optimizer = a2c_optimizer(
        learning_rate=learning_rate, max_grad_norm=config.max_grad_norm
    )
    return a2c.A2CAgent(
        *specs,
        optimizer,
        vf_coef=config.vf_coef,
        target_kl=target_kl,
        warm_start=config.warm_start,
        **common,
    )


def _reinforce(config, specs, common, learning_rate, target_kl):
    del target_kl  # not a setting of reinforce
    optimizer = reinforce_optimizer(
        learning_rate=learning_rate, max_grad_norm=config.max_grad_norm
    )
    if not config.baseline:
        common = dict(common, value_optimizer=None)
    return reinforce.ReinforceAgent(
        *specs, optimizer, baseline=config.baseline, **common
    )


def _ppo(config, specs, common, learning_rate, target_kl):
    optimizer = ppo_optimizer(
        learning_rate=learning_rate, max_grad_norm=config.max_grad_norm
    )
    return ppo.PpoAgent(
        *specs,
        optimizer,
        objective=config.objective,
        clip_range=config.clip_range,
        kl_penalty_target=config.kl_penalty_target,
        n_epochs=config.n_epochs,
        minibatch_size=config.minibatch_size,
        vf_coef=config.vf_coef,
        target_kl=target_kl,
        warm_start=config.warm_start,
        **common,
    )


def _natural(config, specs, common, learning_rate, target_kl):
    """TRPO or NPG: no learning rate, no target KL."""
    del learning_rate, target_kl
    natural = trpo.TrpoAgent if config.algo == "trpo" else npg.NpgAgent
    return natural(
        *specs, max_kl=config.max_kl, damping=config.damping, **common
    )


_AGENTS = {
    "acktr": _acktr,
    "a2c": _a2c,
    "reinforce": _reinforce,
    "ppo": _ppo,
    "trpo": _natural,
    "npg": _natural,
}
