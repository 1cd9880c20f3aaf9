"""The environment and agent a `Config` describes (`build`)."""

from agents.config import TARGET_KL_END, Config


def _value_optimizer(config: Config):
    """The optimizer of a critic fitted apart, or `None` for "joint"."""
    import keras

    from agents.optimizers import kfac_value_optimizer

    if config.critic == "joint":
        return None
    if config.critic == "kfac":
        return kfac_value_optimizer(learning_rate=config.value_learning_rate)
    return keras.optimizers.Adam(config.value_learning_rate)


def build(config: Config):
    """`(py_env, tf_env, agent)` for `config`; raises on bad input."""
    import keras
    import tensorflow as tf
    from tf_agents.environments import tf_py_environment

    from agents.a2c import A2CAgent, a2c_optimizer
    from agents.acktr import AcktrAgent, acktr_optimizer
    from agents.envs import GymnasiumEnvironment
    from agents.networks import ActorCriticNetwork
    from agents.trpo import TrpoAgent

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
        network = ActorCriticNetwork(
            tf_env.observation_spec(),
            tf_env.action_spec(),
            torso="atari"
            if len(tf_env.observation_spec().shape) == 3
            else "mlp",
            hidden_units=config.hidden_units,
            shared_torso=config.shared_torso,
            normalize_observations=config.normalize_observations,
            initial_log_std=config.initial_log_std,
        )
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
        common = dict(
            gamma=config.gamma,
            gae_lambda=config.gae_lambda,
            ent_coef=config.ent_coef,
            normalize_advantages=config.normalize_advantages,
            value_optimizer=_value_optimizer(config),
            value_epochs=config.value_epochs,
            value_minibatch_size=config.value_minibatch_size,
            seed=config.seed,
            train_step_counter=tf.Variable(
                0, dtype=tf.int64, name="train_step"
            ),
        )
        specs = (tf_env.time_step_spec(), tf_env.action_spec(), network)
        if config.algo == "acktr":
            optimizer = acktr_optimizer(
                learning_rate=learning_rate,
                kl_clip=config.kl_clip,
                damping=config.damping,
                inverse_update_freq=config.inverse_update_freq,
                cold_steps=config.cold_steps,
                momentum=config.momentum,
                stats_decay=config.stats_decay,
                max_grad_norm=config.max_grad_norm,
            )
            agent = AcktrAgent(
                *specs,
                optimizer,
                vf_fisher_coef=config.vf_fisher_coef,
                vf_coef=config.vf_coef,
                target_kl=target_kl,
                warm_start=config.warm_start,
                max_kl_ratio=config.max_kl_ratio,
                **common,
            )
        elif config.algo == "a2c":
            optimizer = a2c_optimizer(
                learning_rate=learning_rate, max_grad_norm=config.max_grad_norm
            )
            agent = A2CAgent(
                *specs,
                optimizer,
                vf_coef=config.vf_coef,
                target_kl=target_kl,
                warm_start=config.warm_start,
                **common,
            )
        else:
            agent = TrpoAgent(
                *specs,
                max_kl=config.max_kl,
                damping=config.damping,
                **common,
            )
    except BaseException:
        py_env.close()
        raise
    return py_env, tf_env, agent
