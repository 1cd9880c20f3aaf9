"""The on-policy actor-critic core that ACKTR and A2C share.

One `train(experience)` call is one update from a batch of trajectories
shaped `[B, T + 1]` (tf-agents' layout: the last time step only supplies
`V(s_T)` to bootstrap from):

1. `V(s_T)` of the last time steps, then, under one `GradientTape`, the
   network on the `B·T` earlier observations with `training=True`;
2. advantages `Â` and returns `R` (`agents.advantages`: GAE when
   `gae_lambda` is set, n-step returns otherwise), masking episode
   boundaries;
3. the loss terms (`agents.losses`) and, for agents that want them, the
   Fisher losses;
4. `_update(tape, terms, batch, variables)`: where the agents differ;
5. the realized `KL(π_old || π_new)` on the batch, the observation
   normalizer's moments and, with `target_kl`, the step size.

Adaptive step size (Schulman et al. 2016, used by the ACKTR paper for
continuous control): with `target_kl = κ`, the optimizer's learning rate is
divided by 1.5 after an update whose realized KL exceeds `2κ` and
multiplied by 1.5 after one below `κ / 2`, within `[1e-8, 1]`. `κ` may
follow a schedule of the update count (a Keras `LearningRateSchedule`),
e.g. a linear decay that makes the late steps smaller, as a decaying
learning rate does for a fixed-rate optimizer. With
`warm_start`, until the first update whose KL reaches `κ / 2` the rate is
instead multiplied by `min(sqrt(κ / KL), 10)`: the KL of a small step grows
as the square of its size, so the first steps reach the target in one or
two updates instead of climbing by 1.5x per update from a KL of 1e-6.
"""

import collections

import keras
import tensorflow as tf
import tensorflow_probability as tfp
from tf_agents.agents import tf_agent
from tf_agents.networks import network
from tf_agents.policies import greedy_policy
from tf_agents.specs import tensor_spec
from tf_agents.trajectories import time_step as ts
from tf_agents.utils import nest_utils

import keras_kfac
from agents import advantages as advantages_lib
from agents import losses
from agents.checks import (
    check_non_negative,
    check_positive_integer,
    check_unit_interval,
)
from agents.policies import ActorCriticPolicy
from keras_kfac import linalg

ActorCriticLossInfo = collections.namedtuple(
    "ActorCriticLossInfo",
    ("policy_loss", "value_loss", "entropy", "clip_coefficient", "kl"),
)
ActorCriticLossInfo.__doc__ = """`LossInfo.extra` of the actor-critic agents.

`clip_coefficient` is `η / η_max` of the K-FAC step (1 for first-order
agents, which have no trust region); `kl` is the mean
`KL(π_old(·|s) || π_new(·|s))` over the batch's states, measured after the
update."""

TrustRegionLossInfo = collections.namedtuple(
    "TrustRegionLossInfo",
    ActorCriticLossInfo._fields + ("predicted_kl", "step_fraction"),
)
TrustRegionLossInfo.__doc__ = """`LossInfo.extra` of the trust-region agents.

The fields of `ActorCriticLossInfo`, and: `predicted_kl`, the quadratic
model `½ Δθᵀ F̂ Δθ` of the KL of the policy step that was kept (momentum
included), to compare with the measured `kl`; `step_fraction`, the
fraction `2⁻ᵏ` of the step that the backtracking kept (1: the step as
computed; 0: none, the policy did not change)."""

LossTerms = collections.namedtuple(
    "LossTerms", ("total", "policy", "value", "entropy", "fisher")
)

UpdateBatch = collections.namedtuple(
    "UpdateBatch",
    (
        "observation",
        "actions",
        "advantages",
        "returns",
        "weights",
        "distribution",
    ),
)
UpdateBatch.__doc__ = """The `B·T` rows an update trains on.

`weights` is zero on rows that train nothing; `distribution` is `π_old`,
the policy's distribution at the rows before the update."""


def _rows(x: tf.Tensor) -> tf.Tensor:
    """`[B, T, ...]` -> `[B·T, ...]`."""
    shape = tf.shape(x)
    return tf.reshape(x, tf.concat([[shape[0] * shape[1]], shape[2:]], 0))


class OnPolicyActorCriticAgent(tf_agent.TFAgent):
    """Base class of the actor-critic agents; subclasses define `_update`
    and may set `_loss_info_type`, the namedtuple of `LossInfo.extra`.

    Args:
        time_step_spec: The environment's `TimeStep` spec.
        action_spec: The environment's action spec (one scalar integer or
            one float vector).
        actor_critic_network: A `tf_agents.networks.Network` mapping
            observations to `((distribution, value), state)`, for example
            `agents.networks.ActorCriticNetwork`.
        optimizer: The Keras optimizer of the update: of the policy, and of
            the value function too unless `value_optimizer` is given.
        gamma: Discount `γ`. Defaults to `0.99`.
        gae_lambda: `λ` of GAE; `None` uses n-step returns. Defaults to
            `None`.
        ent_coef: Weight of the entropy bonus. Defaults to `0.01`.
        vf_coef: Weight of the value loss. Defaults to `0.5`.
        normalize_advantages: Standardize `Â` over the batch. Defaults to
            `False`.
        target_kl: Adapt the learning rate toward this realized KL per
            update (see above): a float, or a callable of the update count
            (`train_step_counter`) returning it, such as a
            `keras.optimizers.schedules.PolynomialDecay`; `None` keeps the
            rate fixed. Needs an optimizer with a constant learning rate.
            Defaults to `None`.
        warm_start: Reach `target_kl` from the first updates by the
            square-root rule above. Defaults to `False`.
        value_optimizer: A Keras optimizer that fits the value function
            separately after each update (`value_epochs` passes of
            minibatch steps on `mean_w((R - V(s))²)`), as the ACKTR paper
            does with separate policy and value networks; then `optimizer`
            trains only the policy, the network's policy and value must not
            share parameters, and `vf_coef` is unused. A `keras_kfac.KFAC`
            here takes Gauss-Newton steps: before each step the backward
            pass of `losses.value_gauss_newton_loss` records its factors,
            so `F̂` approximates `2 E[∇V ∇Vᵀ]`, the Gauss-Newton matrix of
            the value loss (`agents.acktr.kfac_value_optimizer`). `None`
            trains both with `optimizer` on the joint loss. Defaults to
            `None`.
        value_epochs: Passes over the batch of the separate value fit.
            Defaults to `5`.
        value_minibatch_size: Rows per step of the separate value fit;
            `None` takes the whole batch in every step. Defaults to `64`.
        seed: Seed of the agent's own random draws. Defaults to `0`.
        train_step_counter: The agent's update counter. Defaults to a new
            `tf.Variable` of its own.
        debug_summaries, summarize_grads_and_vars, name: As in
            `tf_agents.agents.TFAgent`.
    """

    _loss_info_type = ActorCriticLossInfo

    def __init__(
        self,
        time_step_spec: ts.TimeStep,
        action_spec,
        actor_critic_network: network.Network,
        optimizer,
        gamma: float = 0.99,
        gae_lambda: float | None = None,
        ent_coef: float = 0.01,
        vf_coef: float = 0.5,
        normalize_advantages: bool = False,
        target_kl: float | None = None,
        warm_start: bool = False,
        value_optimizer=None,
        value_epochs: int = 5,
        value_minibatch_size: int | None = 64,
        seed: int = 0,
        debug_summaries: bool = False,
        summarize_grads_and_vars: bool = False,
        train_step_counter: tf.Variable | None = None,
        name: str | None = None,
    ):
        tf.Module.__init__(self, name=name)
        check_unit_interval("gamma", gamma)
        if gae_lambda is not None:
            check_unit_interval("gae_lambda", gae_lambda)
        check_non_negative("ent_coef", ent_coef)
        check_non_negative("vf_coef", vf_coef)
        if not isinstance(actor_critic_network, network.Network):
            raise ValueError(
                "actor_critic_network must be a tf_agents.networks.Network. "
                f"Received: {actor_critic_network!r}"
            )
        self._network = actor_critic_network
        self._check_network(time_step_spec, action_spec)
        self._optimizer = optimizer
        if target_kl is not None:
            if optimizer is None:
                raise ValueError(
                    "target_kl adapts the optimizer's learning rate; this "
                    f"agent has none. Received: target_kl={target_kl}"
                )
            first = target_kl(0) if callable(target_kl) else target_kl
            if not float(first) > 0:
                raise ValueError(
                    f"target_kl must be > 0. Received: target_kl={target_kl!r}"
                    + (
                        f" (at update 0: {float(first)})"
                        if callable(target_kl)
                        else ""
                    )
                )
            schedule = keras.optimizers.schedules.LearningRateSchedule
            if isinstance(getattr(optimizer, "_learning_rate", None), schedule):
                raise ValueError(
                    "target_kl adapts the learning rate, so the optimizer "
                    "needs a constant one. Received a schedule: "
                    f"{optimizer._learning_rate!r}"
                )
        self._target_kl = (
            target_kl
            if target_kl is None or callable(target_kl)
            else float(target_kl)
        )
        if warm_start and target_kl is None:
            raise ValueError(
                "warm_start scales the learning rate toward target_kl, "
                "which is None. Received: warm_start=True"
            )
        # 1 until an update reaches κ / 2; saved with the agent.
        self._warming = tf.Variable(
            1.0 if warm_start else 0.0, trainable=False, name="warming"
        )
        self._gamma = float(gamma)
        self._gae_lambda = None if gae_lambda is None else float(gae_lambda)
        self._ent_coef = float(ent_coef)
        self._vf_coef = float(vf_coef)
        self._normalize_advantages = bool(normalize_advantages)
        self._seed = int(seed)
        self._value_optimizer = value_optimizer
        if value_optimizer is None:
            self._policy_variables = list(self._network.trainable_variables)
            self._value_variables = []
        else:
            if not isinstance(value_optimizer, keras.optimizers.Optimizer):
                raise ValueError(
                    "value_optimizer must be a keras.optimizers.Optimizer. "
                    f"Received: {value_optimizer!r}"
                )
            check_positive_integer("value_epochs", value_epochs)
            if value_minibatch_size is not None:
                check_positive_integer(
                    "value_minibatch_size", value_minibatch_size
                )
            self._value_epochs = int(value_epochs)
            self._value_minibatch_size = value_minibatch_size
            self._policy_variables, self._value_variables = (
                self._split_variables(time_step_spec)
            )
            value_optimizer.build(self._value_variables)
        if optimizer is not None:
            optimizer.build(self._policy_variables)
        if train_step_counter is None:  # one per agent, not a global step
            train_step_counter = tf.Variable(
                0, dtype=tf.int64, name="train_step"
            )

        # Seeds the collect policy's samples; saved with the agent, so a
        # restored agent samples the actions the original would have.
        self._sampling_generator = tf.random.Generator.from_seed(self._seed)
        # Updates skipped because their batch held NaN or Inf.
        self._skipped_updates = tf.Variable(
            0, dtype=tf.int64, trainable=False, name="skipped_updates"
        )
        collect_policy = ActorCriticPolicy(
            time_step_spec,
            action_spec,
            self._network,
            clip=False,
            seed_generator=self._sampling_generator,
        )
        policy = greedy_policy.GreedyPolicy(
            ActorCriticPolicy(
                time_step_spec, action_spec, self._network, clip=True
            )
        )
        super().__init__(
            time_step_spec,
            action_spec,
            policy,
            collect_policy,
            train_sequence_length=None,
            debug_summaries=debug_summaries,
            summarize_grads_and_vars=summarize_grads_and_vars,
            train_step_counter=train_step_counter,
        )

    @property
    def actor_critic_network(self) -> network.Network:
        return self._network

    @property
    def optimizer(self):
        return self._optimizer

    @property
    def value_optimizer(self):
        return self._value_optimizer

    def _split_variables(self, time_step_spec):
        """`(policy, value)` variables; raises if the two share any."""
        # Zeros rather than samples: tf-agents cannot sample a uint8 spec
        # bounded by [0, 255] (its exclusive upper bound overflows).
        observation = tensor_spec.zero_spec_nest(
            time_step_spec.observation, outer_dims=(2,)
        )
        variables = self._network.trainable_variables
        with tf.GradientTape(persistent=True) as tape:
            (distribution, value), _ = self._network(
                observation, training=False
            )
            actions = tf.stop_gradient(distribution.sample(seed=0))
            policy_output = tf.reduce_sum(
                distribution.log_prob(actions)
            ) + tf.reduce_sum(distribution.entropy())
        policy_gradients = tape.gradient(policy_output, variables)
        value_gradients = tape.gradient(value, variables)
        del tape
        policy, value = [], []
        for variable, p, v in zip(variables, policy_gradients, value_gradients):
            if p is not None and v is not None:
                raise ValueError(
                    f"{type(self).__name__} fits the value function "
                    "separately, so the network's policy and value must not "
                    "share parameters (e.g. ActorCriticNetwork(..., "
                    f"shared_torso=False)). Received a network whose "
                    f"{variable.path} feeds both"
                )
            (policy if p is not None else value).append(variable)
        return policy, value

    def _fit_value(self, batch) -> None:
        """`value_epochs` passes of minibatch steps of the value optimizer
        on `mean_w((R - V(s))²)`, minibatches reshuffled every pass; with a
        K-FAC value optimizer, each step's factors come from the backward
        pass of `losses.value_gauss_newton_loss` on its minibatch."""
        gauss_newton = isinstance(self._value_optimizer, keras_kfac.KFAC)
        variables = self._value_variables
        rows = tf.shape(batch.returns)[0]
        size = (
            rows
            if self._value_minibatch_size is None
            else tf.minimum(self._value_minibatch_size, rows)
        )
        for epoch in tf.range(self._value_epochs):
            seed = tf.stack(
                [
                    tf.constant(self._seed, tf.int64),
                    tf.cast(self.train_step_counter, tf.int64)
                    * self._value_epochs
                    + tf.cast(epoch, tf.int64),
                ]
            )
            order = tf.random.experimental.stateless_shuffle(
                tf.range(rows), seed
            )
            for i in tf.range(rows // size):
                index = order[i * size : (i + 1) * size]
                weights = tf.gather(batch.weights, index)
                with tf.GradientTape(persistent=gauss_newton) as tape:
                    (_, values), _ = self._network(
                        tf.gather(batch.observation, index), training=True
                    )
                    loss = losses.value_loss(
                        values, tf.gather(batch.returns, index), weights
                    )
                    gauss_newton_loss = losses.value_gauss_newton_loss(
                        values, weights
                    )
                gradients = fisher_then_loss_gradients(
                    tape,
                    gauss_newton_loss if gauss_newton else None,
                    loss,
                    variables,
                )
                del tape
                apply_gradients(self._value_optimizer, gradients, variables)

    def _check_network(self, time_step_spec, action_spec) -> None:
        """Calls the network once and checks what it returns."""
        # Zeros rather than samples: tf-agents cannot sample a uint8 spec
        # bounded by [0, 255] (its exclusive upper bound overflows).
        observation = tensor_spec.zero_spec_nest(
            time_step_spec.observation, outer_dims=(2,)
        )
        try:
            outputs, _ = self._network(observation, training=False)
        except TypeError as error:  # e.g. a network that needs step_type
            raise ValueError(
                f"{type(self).__name__} needs one network that maps "
                "observations alone to ((distribution, value), state), such "
                "as agents.networks.ActorCriticNetwork; a tf-agents actor "
                "network (ActorDistributionNetwork) with a separate "
                "ValueNetwork, as PPO takes, does not fit. Calling "
                f"{type(self._network).__name__}(observations) raised: "
                f"{error}"
            ) from None
        ok = isinstance(outputs, (tuple, list)) and len(outputs) == 2
        if ok:
            distribution, value = outputs
            ok = isinstance(distribution, tfp.distributions.Distribution)
            ok = ok and tuple(value.shape) == (2,)
        if not ok:
            raise ValueError(
                "actor_critic_network must return ((distribution, value), "
                "state) with a tfp distribution and values of shape [batch]. "
                f"Received outputs: {outputs!r}"
            )
        actions = distribution.sample()
        if (
            actions.dtype != action_spec.dtype
            or actions.shape[1:] != action_spec.shape
        ):
            raise ValueError(
                "The network's distribution samples "
                f"{actions.dtype.name}{actions.shape[1:]} actions; the action "
                f"spec wants {action_spec.dtype.name}{action_spec.shape}. "
                f"Received: action_spec={action_spec}"
            )

    def _initialize(self):
        return tf.no_op()

    def _check_experience(self, experience) -> None:
        """Raises `ValueError` unless `experience` fits `collect_data_spec`."""
        spec = self.collect_data_spec
        try:
            tf.nest.assert_same_structure(experience, spec)
        except (TypeError, ValueError) as error:
            raise ValueError(
                "experience must be a Trajectory matching the agent's "
                f"collect_data_spec. {error}"
            ) from None
        paths = nest_utils.flatten_with_joined_paths(spec)
        for (path, s), tensor in zip(paths, tf.nest.flatten(experience)):
            tensor = tf.convert_to_tensor(tensor)
            if tensor.dtype != s.dtype or tensor.shape[2:] != s.shape:
                raise ValueError(
                    f"experience.{path} must be {s.dtype.name} shaped "
                    f"[batch, time] + {s.shape.as_list()}. Received: "
                    f"{tensor.dtype.name} shaped {tensor.shape.as_list()}"
                )
        time = tf.convert_to_tensor(experience.step_type).shape[1]
        if time is not None and time < 2:
            raise ValueError(
                "experience needs at least 2 time steps (the last one only "
                f"bootstraps). Received: {time}"
            )

    def _returns_and_advantages(self, transitions, values, valid, continues):
        """`(R, Â)`, `[B, T]`, from values `[B, T + 1]` without gradient."""
        args = (
            transitions.reward,
            transitions.discount,
            values,
            valid,
            continues,
        )
        if self._gae_lambda is None:
            returns = advantages_lib.nstep_returns(*args, self._gamma)
            advantages = valid * (returns - values[:, :-1])
        else:
            advantages = advantages_lib.generalized_advantages(
                *args, self._gamma, self._gae_lambda
            )
            returns = valid * (advantages + values[:, :-1])
        if self._normalize_advantages:
            mean = losses.weighted_mean(advantages, valid)
            variance = losses.weighted_mean(tf.square(advantages - mean), valid)
            advantages = (
                valid * (advantages - mean) / (tf.sqrt(variance) + 1e-8)
            )
        return returns, advantages

    def _fisher_loss(self, distribution, actions, values, weights, noise_seed):
        """The loss whose backward pass feeds K-FAC; `None` if unused."""
        return None

    def _update(
        self, tape, terms: LossTerms, batch: UpdateBatch, variables
    ) -> dict:
        """Applies one update; returns its statistics: the fields of
        `_loss_info_type` that the core does not compute itself
        (`clip_coefficient`, and those of `TrustRegionLossInfo`)."""
        raise NotImplementedError

    def _mean_kl(self, batch: UpdateBatch) -> tf.Tensor:
        """`mean_w KL(π_old || π)` at the current parameters."""
        (distribution, _), _ = self._network(batch.observation, training=False)
        return losses.weighted_mean(
            tfp.distributions.kl_divergence(batch.distribution, distribution),
            batch.weights,
        )

    @property
    def target_kl(self) -> tf.Tensor | None:
        """`κ` of the next update (`None` without a target KL)."""
        return None if self._target_kl is None else self._current_target_kl()

    def _current_target_kl(self) -> tf.Tensor:
        """`κ` at the current update count."""
        if callable(self._target_kl):
            return tf.cast(self._target_kl(self.train_step_counter), tf.float32)
        return tf.constant(self._target_kl, tf.float32)

    def _adapt_learning_rate(self, kl: tf.Tensor) -> None:
        kappa = self._current_target_kl()
        factor = tf.where(
            kl > 2.0 * kappa,
            1.0 / 1.5,
            tf.where(kl < 0.5 * kappa, 1.5, 1.0),
        )
        warming = tf.logical_and(self._warming > 0.0, kl < 0.5 * kappa)
        warm_factor = tf.minimum(tf.sqrt(kappa / tf.maximum(kl, 1e-12)), 10.0)
        factor = tf.where(warming, warm_factor, factor)
        self._warming.assign(tf.cast(warming, tf.float32))
        learning_rate = tf.cast(self._optimizer.learning_rate, tf.float32)
        self._optimizer.learning_rate = tf.clip_by_value(
            learning_rate * factor, 1e-8, 1.0
        )

    @property
    def skipped_updates(self) -> tf.Variable:
        """Updates skipped because their batch held a NaN or infinite
        reward, discount or observation (saved with the agent)."""
        return self._skipped_updates

    def _train(self, experience, weights=None):
        """One update, or none when the batch holds NaN or Inf: then no
        variable changes (network, optimizers, observation normalizer,
        step size) but `skipped_updates`, and the `LossInfo` is NaN."""
        self._check_experience(experience)
        finite = linalg.all_finite(
            [
                experience.reward,
                experience.discount,
                *tf.nest.flatten(experience.observation),
            ]
            + ([] if weights is None else [weights])
        )

        def skip():
            self._skipped_updates.assign_add(1)
            nan = tf.constant(float("nan"))
            return tf_agent.LossInfo(
                loss=nan,
                extra=self._loss_info_type(
                    *[nan] * len(self._loss_info_type._fields)
                ),
            )

        return tf.cond(
            finite, lambda: self._train_on_finite(experience, weights), skip
        )

    def _train_on_finite(self, experience, weights):
        transitions = tf.nest.map_structure(lambda x: x[:, :-1], experience)
        batch, time = (
            tf.shape(transitions.step_type)[0],
            tf.shape(transitions.step_type)[1],
        )
        valid, continues = advantages_lib.episode_masks(
            transitions.step_type, transitions.next_step_type
        )
        sample_weights = tf.ones_like(valid)
        if weights is not None:
            weights = tf.cast(weights, tf.float32)
            if weights.shape.rank == 1:
                weights = weights[:, None]
            sample_weights = sample_weights * weights
        loss_weights = _rows(valid * sample_weights)
        fisher_weights = _rows(sample_weights)

        (_, bootstrap_value), _ = self._network(
            experience.observation[:, -1], training=False
        )
        observation = _rows(transitions.observation)
        actions = _rows(transitions.action)
        variables = self._policy_variables
        noise_seed = tf.stack(
            [
                tf.constant(self._seed, tf.int64),
                tf.cast(self.train_step_counter, tf.int64),
            ]
        )
        with tf.GradientTape(persistent=True) as tape:
            (distribution, values), _ = self._network(
                observation, training=True
            )
            all_values = tf.concat(
                [
                    tf.reshape(tf.stop_gradient(values), (batch, time)),
                    bootstrap_value[:, None],
                ],
                axis=1,
            )
            returns, advantages = self._returns_and_advantages(
                transitions, all_values, valid, continues
            )
            log_prob = distribution.log_prob(actions)
            policy_loss = losses.policy_gradient_loss(
                log_prob, _rows(advantages), loss_weights
            )
            value_loss = losses.value_loss(values, _rows(returns), loss_weights)
            entropy = losses.entropy(distribution.entropy(), loss_weights)
            total = policy_loss - self._ent_coef * entropy
            if self._value_optimizer is None:
                total += self._vf_coef * value_loss
            fisher = self._fisher_loss(
                distribution, actions, values, fisher_weights, noise_seed
            )
        terms = LossTerms(total, policy_loss, value_loss, entropy, fisher)
        batch = UpdateBatch(
            observation,
            actions,
            tf.stop_gradient(_rows(advantages)),
            tf.stop_gradient(_rows(returns)),
            loss_weights,
            distribution,
        )
        update_statistics = self._update(tape, terms, batch, variables)
        del tape
        if self._value_optimizer is not None:
            self._fit_value(batch)

        kl = self._mean_kl(batch)
        if self._target_kl is not None:
            self._adapt_learning_rate(kl)
        normalizer = getattr(self._network, "observation_normalizer", None)
        if normalizer is not None:
            normalizer.update(observation)
        self.train_step_counter.assign_add(1)

        extra = self._loss_info_type(
            policy_loss=policy_loss,
            value_loss=value_loss,
            entropy=entropy,
            kl=kl,
            **{
                name: tf.cast(value, tf.float32)
                for name, value in update_statistics.items()
            },
        )
        if self.summaries_enabled:
            step = self.train_step_counter
            tf.summary.scalar("loss/total", total, step=step)
            for name, value in extra._asdict().items():
                tf.summary.scalar(f"loss/{name}", value, step=step)
            if self._target_kl is not None:
                tf.summary.scalar(
                    "train/target_kl", self._current_target_kl(), step=step
                )
            if self._optimizer is not None:
                tf.summary.scalar(
                    "train/learning_rate",
                    tf.cast(self._optimizer.learning_rate, tf.float32),
                    step=step,
                )
        return tf_agent.LossInfo(loss=total, extra=extra)


def fisher_then_loss_gradients(tape, fisher_loss, loss, variables):
    """The gradients of `loss`, taken with factor collection off, after the
    backward pass of `fisher_loss` (skipped when `None`) recorded the K-FAC
    factors: the factors come from the Fisher pass only."""
    if fisher_loss is not None:
        with keras_kfac.collecting_statistics(True):
            tape.gradient(fisher_loss, variables)
    with keras_kfac.collecting_statistics(False):
        return tape.gradient(loss, variables)


def apply_gradients(optimizer, gradients, variables) -> None:
    """`optimizer.apply` on the variables that received a gradient; a
    first-order step whose gradients hold NaN or Inf is skipped whole
    (`keras_kfac.KFAC` skips such steps itself)."""
    pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]
    gradients, variables = [g for g, _ in pairs], [v for _, v in pairs]
    if isinstance(optimizer, keras_kfac.KFAC):
        optimizer.apply(gradients, variables)
        return
    finite = linalg.all_finite(gradients)
    tf.cond(
        finite,
        lambda: optimizer.apply(gradients, variables) or tf.constant(True),
        lambda: tf.constant(False),
    )
