"""The on-policy actor-critic core that ACKTR, A2C and TRPO share.

One `train(experience)` call is one update from a batch of trajectories
shaped `[B, T + 1]` (tf-agents' layout: the last time step only supplies
`V(s_T)` to bootstrap from):

1. `V(s_T)` of the last time steps, then, under one `GradientTape`, the
   network on the `B·T` earlier observations with `training=True`;
2. advantages `Â` and returns `R` (`agents.advantages`: GAE when
   `gae_lambda` is set, n-step returns otherwise), masking episode
   boundaries, from the rewards scaled by `agents.reward_scaling` with
   `scale_rewards`;
3. the loss terms (`agents.losses`) and, for agents that want them, the
   Fisher losses;
4. `_update(tape, terms, batch, variables)`: where the agents differ;
   then, with a `value_optimizer`, the separate value fit
   (`agents.value_fit`);
5. the realized `KL(π_old || π_new)` on the batch, the observation
   normalizer's moments and, with `target_kl`, the step size
   (`agents.step_size`).

The core's checks of its network and experience are in
`agents.on_policy_checks`; the backward passes and the guarded apply that
the agents' `_update`s share are in `agents.gradients` (and importable
from here).
"""

import collections

import tensorflow as tf
import tensorflow_probability as tfp
from tf_agents.agents import tf_agent
from tf_agents.networks import network
from tf_agents.policies import greedy_policy
from tf_agents.trajectories import time_step as ts

from agents import advantages as advantages_lib
from agents import losses, on_policy_checks, step_size, value_fit
from agents.policies import ActorCriticPolicy
from agents.reward_scaling import RewardScaler
from keras_kfac import linalg

__all__ = [
    "ActorCriticLossInfo",
    "LossTerms",
    "OnPolicyActorCriticAgent",
    "TrustRegionLossInfo",
    "UpdateBatch",
]

ActorCriticLossInfo = collections.namedtuple(
    "ActorCriticLossInfo",
    (
        "policy_loss",
        "value_loss",
        "entropy",
        "clip_coefficient",
        "kl",
        "gradient_norm",
    ),
)
ActorCriticLossInfo.__doc__ = """`LossInfo.extra` of the actor-critic agents.

`clip_coefficient` is `η / η_max` of the K-FAC step (1 for first-order
agents, which have no trust region); `kl` is the mean
`KL(π_old(·|s) || π_new(·|s))` over the batch's states, measured after the
update; `gradient_norm` is the global norm of the update's loss gradient
in the policy's variables before `max_grad_norm` clips it (the mean over
PPO's minibatch steps; the policy gradient `g` for TRPO and NPG)."""

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


def _row_weights(valid: tf.Tensor, weights) -> tuple[tf.Tensor, tf.Tensor]:
    """`(loss, fisher)` weights of the `B·T` rows: the caller's `weights`
    (`[B]` or `[B, T]`, or `None` for ones), times the `valid` mask for
    the losses. The Fisher losses take every row: their targets are
    sampled from the policy, so a row past an episode's end still tells
    about the curvature."""
    sample_weights = tf.ones_like(valid)
    if weights is not None:
        weights = tf.cast(weights, tf.float32)
        if weights.shape.rank == 1:
            weights = weights[:, None]
        sample_weights = sample_weights * weights
    return _rows(valid * sample_weights), _rows(sample_weights)


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
        scale_rewards: Train on the rewards divided by the running standard
            deviation of the discounted return (`agents.reward_scaling`),
            as the PPO implementations do. Defaults to `False`.
        target_kl: Adapt the learning rate toward this realized KL per
            update (`agents.step_size`): a float, or a callable of the
            update count (`train_step_counter`) returning it, such as a
            `keras.optimizers.schedules.PolynomialDecay`; `None` keeps the
            rate fixed. Needs an optimizer with a constant learning rate.
            Defaults to `None`.
        warm_start: Reach `target_kl` from the first updates by the
            square-root rule of `agents.step_size`. Defaults to `False`.
        value_optimizer: A Keras optimizer that fits the value function
            separately after each update (`value_epochs` passes of
            minibatch steps on `mean_w((R - V(s))²)`), as the ACKTR paper
            does with separate policy and value networks; then `optimizer`
            trains only the policy, the network's policy and value must not
            share parameters, and `vf_coef` is unused. A `keras_kfac.KFAC`
            here takes Gauss-Newton steps: before each step the backward
            pass of `losses.value_gauss_newton_loss` records its factors,
            so `F̂` approximates `2 E[∇V ∇Vᵀ]`, the Gauss-Newton matrix of
            the value loss (`agents.optimizers.kfac_value_optimizer`). `None`
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
    # Whether `normalize_advantages` standardizes over the whole batch
    # here; an agent that standardizes elsewhere (PPO: per minibatch)
    # sets it to False.
    _standardizes_batch_advantages = True

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
        scale_rewards: bool = False,
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
        on_policy_checks.check_loss_arguments(
            gamma, gae_lambda, ent_coef, vf_coef
        )
        on_policy_checks.check_network(
            actor_critic_network,
            time_step_spec,
            action_spec,
            type(self).__name__,
        )
        self._network = actor_critic_network
        self._optimizer = optimizer
        self._target_kl = step_size.check_target_kl(
            target_kl, optimizer, warm_start
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
        # Its running return and moments are saved with the agent.
        self._reward_scaler = RewardScaler(gamma) if scale_rewards else None
        self._seed = int(seed)
        self._value_optimizer = value_optimizer
        self._build_optimizers(
            time_step_spec, value_epochs, value_minibatch_size
        )
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
        policy, collect_policy = self._policies(time_step_spec, action_spec)
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

    def _policies(self, time_step_spec, action_spec):
        """`(policy, collect_policy)`: the greedy policy, its actions
        clipped to the spec, and the sampling one, seeded by the agent's
        generator."""
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
        return policy, collect_policy

    def _build_optimizers(
        self, time_step_spec, value_epochs, value_minibatch_size
    ) -> None:
        """Splits the network's variables between the optimizers (all to
        `optimizer` without a value fit) and builds them."""
        if self._value_optimizer is None:
            self._policy_variables = list(self._network.trainable_variables)
            self._value_variables = []
        else:
            value_fit.check_arguments(
                self._value_optimizer, value_epochs, value_minibatch_size
            )
            self._value_epochs = int(value_epochs)
            self._value_minibatch_size = value_minibatch_size
            self._policy_variables, self._value_variables = (
                value_fit.split_variables(
                    self._network, time_step_spec, type(self).__name__
                )
            )
            self._value_optimizer.build(self._value_variables)
        if self._optimizer is not None:
            self._optimizer.build(self._policy_variables)

    @property
    def actor_critic_network(self) -> network.Network:
        return self._network

    @property
    def optimizer(self):
        return self._optimizer

    @property
    def value_optimizer(self):
        return self._value_optimizer

    @property
    def target_kl(self) -> tf.Tensor | None:
        """`κ` of the next update (`None` without a target KL)."""
        return None if self._target_kl is None else self._current_target_kl()

    @property
    def skipped_updates(self) -> tf.Variable:
        """Updates skipped because their batch held a NaN or infinite
        reward, discount or observation (saved with the agent)."""
        return self._skipped_updates

    def _initialize(self):
        return tf.no_op()

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
        if self._normalize_advantages and self._standardizes_batch_advantages:
            advantages = losses.standardized(advantages, valid)
        return returns, advantages

    def _trained_rows(self, valid, continues) -> tf.Tensor:
        """`[B, T]`, 1 on the transitions the update trains on: those
        inside an episode (`valid`)."""
        del continues
        return valid

    def _fisher_loss(
        self, observation, distribution, actions, values, weights, noise_seed
    ):
        """The loss whose backward pass feeds K-FAC; `None` if unused.
        `distribution` and `values` are the network's at `observation`, in
        the forward pass the loss's gradient is taken through."""
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

    def _current_target_kl(self) -> tf.Tensor:
        """`κ` at the current update count."""
        return step_size.target_kl_at(self._target_kl, self.train_step_counter)

    def _adapt_learning_rate(self, kl: tf.Tensor) -> None:
        """Scales the optimizer's learning rate after an update of realized
        `kl` (`agents.step_size`) and ends the warm start once due."""
        factor, warming = step_size.learning_rate_factor(
            kl, self._current_target_kl(), self._warming > 0.0
        )
        self._warming.assign(tf.cast(warming, tf.float32))
        self._optimizer.learning_rate = step_size.scaled_learning_rate(
            self._optimizer.learning_rate, factor
        )

    def _train(self, experience, weights=None):
        """One update, or none when the batch holds NaN or Inf: then no
        variable changes (network, optimizers, observation normalizer,
        step size) but `skipped_updates`, and the `LossInfo` is NaN."""
        on_policy_checks.check_experience(experience, self.collect_data_spec)
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
        tape, terms, batch = self._forward(experience, weights)
        update_statistics = self._update(
            tape, terms, batch, self._policy_variables
        )
        del tape
        if self._value_optimizer is not None:
            value_fit.fit_value(
                self._network,
                self._value_optimizer,
                self._value_variables,
                batch,
                self._value_epochs,
                self._value_minibatch_size,
                self._seed,
                self.train_step_counter,
            )
        # A trust-region update that measured the KL of the step it kept
        # returns it (the value fit moves no policy parameter).
        kl = update_statistics.pop("kl", None)
        if kl is None:
            kl = self._mean_kl(batch)
        if self._target_kl is not None:
            self._adapt_learning_rate(kl)
        normalizer = getattr(self._network, "observation_normalizer", None)
        if normalizer is not None:
            normalizer.update(batch.observation)
        self.train_step_counter.assign_add(1)
        extra = self._loss_info_type(
            policy_loss=terms.policy,
            value_loss=terms.value,
            entropy=terms.entropy,
            kl=kl,
            **{
                name: tf.cast(value, tf.float32)
                for name, value in update_statistics.items()
            },
        )
        return tf_agent.LossInfo(loss=terms.total, extra=extra)

    def _forward(self, experience, weights):
        """Steps 1-3 of the module docstring: `(tape, terms, batch)`, the
        tape persistent for the agents' backward passes."""
        transitions = tf.nest.map_structure(lambda x: x[:, :-1], experience)
        batch_size, time = (
            tf.shape(transitions.step_type)[0],
            tf.shape(transitions.step_type)[1],
        )
        valid, continues = advantages_lib.episode_masks(
            transitions.step_type, transitions.next_step_type
        )
        if self._reward_scaler is not None:
            transitions = transitions._replace(
                reward=self._reward_scaler.scale(
                    transitions.reward, valid, continues
                )
            )
        valid = self._trained_rows(valid, continues)
        loss_weights, fisher_weights = _row_weights(valid, weights)
        (_, bootstrap_value), _ = self._network(
            experience.observation[:, -1], training=False
        )
        observation = _rows(transitions.observation)
        actions = _rows(transitions.action)
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
                    tf.reshape(tf.stop_gradient(values), (batch_size, time)),
                    bootstrap_value[:, None],
                ],
                axis=1,
            )
            returns, advantages = self._returns_and_advantages(
                transitions, all_values, valid, continues
            )
            returns, advantages = _rows(returns), _rows(advantages)
            policy_loss = losses.policy_gradient_loss(
                distribution.log_prob(actions), advantages, loss_weights
            )
            value_loss = losses.value_loss(values, returns, loss_weights)
            entropy = losses.entropy(distribution.entropy(), loss_weights)
            total = policy_loss - self._ent_coef * entropy
            if self._value_optimizer is None:
                total += self._vf_coef * value_loss
            fisher = self._fisher_loss(
                observation,
                distribution,
                actions,
                values,
                fisher_weights,
                noise_seed,
            )
        terms = LossTerms(total, policy_loss, value_loss, entropy, fisher)
        batch = UpdateBatch(
            observation,
            actions,
            tf.stop_gradient(advantages),
            tf.stop_gradient(returns),
            loss_weights,
            distribution,
        )
        return tape, terms, batch
