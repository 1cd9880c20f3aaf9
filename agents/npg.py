"""The natural policy gradient (NPG).

Kakade (2001), in the form TRPO builds on (Schulman et al. 2015, §6 and
its appendix C; Rajeswaran et al. 2017): the policy moves along the
natural gradient `F⁻¹g` by the step whose quadratic KL is `δ`. One update:

1. `g = ∇_θ L(θ_old)`, the gradient of the surrogate
   `L(θ) = mean_w(π_θ(a|s) / π_old(a|s) · Â) + ent_coef · H(θ)`
   (at `θ_old` the ratio is 1 and `g` is the policy gradient);
2. `x ≈ (F + λI)⁻¹g` by conjugate gradient (`cg_iterations`), with
   Fisher-vector products `Fv + λv` from the Hessian of
   `mean_w KL(π_old || π_θ)` (`agents.trust_region`);
3. the step `Δ = sqrt(2δ / xᵀ(F + λI)x) · x`, so that
   `½ Δᵀ(F + λI)Δ = δ`: with `x = F⁻¹g` exactly, `sqrt(2δ / gᵀF⁻¹g) ·
   F⁻¹g`, the maximizer of `gᵀΔ` subject to `½ ΔᵀFΔ ≤ δ`;
4. `θ ← θ_old + Δ`, taken whole;
5. the value function, fitted separately by `value_optimizer`
   (`agents.on_policy`).

TRPO (`agents.trpo`) is this update with step 4 replaced by a backtracking
line search on the surrogate and the measured KL: the class below is its
base, and `_take_step` is where the two differ.

The policy and the value function must not share parameters
(`ActorCriticNetwork(..., shared_torso=False)`).
"""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

import keras_kfac
from agents import losses, trust_region
from agents.checks import check_non_negative, check_positive_integer
from agents.on_policy import OnPolicyActorCriticAgent, TrustRegionLossInfo
from agents.optimizers import agent_arguments, trpo_value_optimizer
from agents.presets import defaults

_DEFAULTS = defaults("npg")


class NpgAgent(OnPolicyActorCriticAgent):
    """The natural policy gradient as a tf-agents agent (see the module
    docstring).

    Args:
        time_step_spec: The environment's `TimeStep` spec.
        action_spec: The environment's action spec.
        actor_critic_network: A network mapping observations to
            `((distribution, value), state)` whose policy and value have no
            parameter in common.
        value_optimizer: The value function's Keras optimizer. Defaults to
            `agents.optimizers.trpo_value_optimizer()` (Adam).
        max_kl: `δ`, the quadratic KL `½ Δᵀ(F + λI)Δ` of every step.
            Defaults to the `"default"` preset's.
        damping: `λ` added to the Fisher in CG. Defaults to the
            `"default"` preset's.
        cg_iterations: Conjugate-gradient iterations. Defaults to `10`.
        cg_residual_tolerance: CG stops once `‖r‖²` is at most this.
            Defaults to `1e-10`.
        **kwargs: `gamma`, `gae_lambda`, `ent_coef`,
            `normalize_advantages`, `value_epochs`, `value_minibatch_size`,
            `seed`, ... as in `agents.on_policy.OnPolicyActorCriticAgent`;
            those not given take the `"default"` preset's values
            (`agents.optimizers.agent_arguments`).
    """

    _loss_info_type = TrustRegionLossInfo
    _algo = "npg"  # whose preset fills the arguments not given

    def __init__(
        self,
        time_step_spec,
        action_spec,
        actor_critic_network,
        value_optimizer: keras.Optimizer | None = None,
        max_kl: float = _DEFAULTS["max_kl"],
        damping: float = _DEFAULTS["damping"],
        cg_iterations: int = 10,
        cg_residual_tolerance: float = 1e-10,
        name: str = "NpgAgent",
        **kwargs,
    ):
        if value_optimizer is None:
            value_optimizer = trpo_value_optimizer()
        if "target_kl" in kwargs:
            raise ValueError(
                f"{type(self).__name__} sizes every step to the KL radius "
                "max_kl; it takes no target_kl. Received: "
                f"target_kl={kwargs['target_kl']}"
            )
        if not max_kl > 0:
            raise ValueError(f"max_kl must be > 0. Received: max_kl={max_kl!r}")
        check_non_negative("damping", damping)
        check_positive_integer("cg_iterations", cg_iterations)
        check_non_negative("cg_residual_tolerance", cg_residual_tolerance)
        self._max_kl = float(max_kl)
        self._damping = float(damping)
        self._cg_iterations = int(cg_iterations)
        self._cg_residual_tolerance = float(cg_residual_tolerance)
        super().__init__(
            time_step_spec,
            action_spec,
            actor_critic_network,
            None,  # the policy step is the natural-gradient step below
            name=name,
            **agent_arguments(
                self._algo, dict(kwargs, value_optimizer=value_optimizer)
            ),
        )

    @property
    def max_kl(self) -> float:
        return self._max_kl

    def _surrogate(self, batch, log_prob_old):
        """`L(θ)` and `mean_w KL(π_old || π_θ)` at the current variables."""
        (distribution, _), _ = self._network(batch.observation, training=False)
        ratio = tf.exp(distribution.log_prob(batch.actions) - log_prob_old)
        surrogate = losses.weighted_mean(
            ratio * batch.advantages, batch.weights
        ) + self._ent_coef * losses.entropy(
            distribution.entropy(), batch.weights
        )
        kl = losses.weighted_mean(
            tfp.distributions.kl_divergence(batch.distribution, distribution),
            batch.weights,
        )
        return surrogate, kl

    def _update(self, tape, terms, batch, variables):
        with keras_kfac.collecting_statistics(False):
            return self._policy_step(tape, terms, batch)

    def _policy_step(self, tape, terms, batch):
        """Steps 1-4 of the module docstring; returns the update's
        statistics: the kept fraction of `Δ` and the quadratic model of
        the KL of the kept step."""
        parameters = self._policy_variables

        # The tape stopped recording, so each term is differentiated alone:
        # g = -∇pg_loss + ent_coef · ∇H.
        def flat_gradient(term):
            gradients = tape.gradient(term, parameters)
            return trust_region.flatten(
                trust_region.zeros_for_none(gradients, parameters)
            )

        g = -flat_gradient(terms.policy)
        if self._ent_coef:
            g += self._ent_coef * flat_gradient(terms.entropy)
        log_prob_old = tf.stop_gradient(
            batch.distribution.log_prob(batch.actions)
        )

        def evaluate():
            return self._surrogate(batch, log_prob_old)

        fisher_product = trust_region.fisher_vector_product(
            lambda: evaluate()[1], parameters, self._damping
        )
        direction = trust_region.conjugate_gradient(
            fisher_product,
            g,
            self._cg_iterations,
            self._cg_residual_tolerance,
        )
        f_direction = fisher_product(direction)
        full_step = trust_region.trust_region_step(
            direction, f_direction, self._max_kl
        )
        expected = tf.tensordot(g, full_step, 1)
        # ½ ΔᵀFΔ of the full step Δ = c·x (damping included): c² = ΔᵀΔ / xᵀx.
        full_step_kl = (
            0.5
            * tf.tensordot(direction, f_direction, 1)
            * tf.math.divide_no_nan(
                tf.tensordot(full_step, full_step, 1),
                tf.tensordot(direction, direction, 1),
            )
        )
        fraction, kl = self._take_step(
            parameters, full_step, expected, evaluate
        )
        statistics = dict(
            clip_coefficient=fraction,
            predicted_kl=tf.square(fraction) * full_step_kl,
            step_fraction=fraction,
            gradient_norm=tf.norm(g),
        )
        if kl is not None:  # measured at the kept step: not again
            statistics["kl"] = kl
        return statistics

    def _take_step(self, parameters, full_step, expected, evaluate):
        """Step 4: `θ ← θ_old + Δ`; returns `(fraction, kl)`, the fraction
        of `Δ` taken, 1, and `None`: the KL of the step is measured after.

        `expected` (`gᵀΔ`) and `evaluate()` (`(L(θ), KL)` at the current
        parameters) are there for a step that checks what it took
        (`agents.trpo.TrpoAgent`'s line search)."""
        del expected, evaluate  # the natural-gradient step takes Δ whole
        steps = trust_region.unflatten(full_step, parameters)
        for p, step in zip(parameters, steps):
            p.assign_add(step)
        return tf.constant(1.0), None
