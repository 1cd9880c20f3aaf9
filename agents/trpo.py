"""TRPO: trust region policy optimization.

Schulman, Levine, Moritz, Jordan & Abbeel (2015), the single-path variant
with GAE advantages (Schulman et al. 2016), the baseline the ACKTR paper
compares with. One update:

1. `g = ∇_θ L(θ_old)`, the gradient of the surrogate
   `L(θ) = mean_w(π_θ(a|s) / π_old(a|s) · Â) + ent_coef · H(θ)`;
2. `x ≈ F⁻¹g` by conjugate gradient (`cg_iterations`), with Fisher-vector
   products `Fv + λv` from the Hessian of `mean_w KL(π_old || π_θ)`
   (`agents.trust_region`);
3. the full step `Δ = sqrt(2δ / xᵀFx) · x`, at the trust-region boundary;
4. backtracking line search: `θ_old + 2⁻ᵏ Δ` for `k = 0, 1, ...,
   line_search_steps - 1`, accepting the first whose KL is at most `δ` and
   whose improvement `L(θ) - L(θ_old)` is positive and at least
   `accept_ratio` times the expected `2⁻ᵏ gᵀΔ`; if none is accepted the
   policy keeps `θ_old`;
5. the value function, fitted separately by `value_optimizer`
   (`agents.on_policy`).

Steps 1-3 and 5 are the natural policy gradient's (`agents.npg`, the base
class); TRPO replaces its step 4, `θ ← θ_old + Δ` taken whole, with the
line search.

The policy and the value function must not share parameters
(`ActorCriticNetwork(..., shared_torso=False)`).
"""

import tensorflow as tf

from agents import trust_region
from agents.checks import check_non_negative, check_positive_integer
from agents.npg import NpgAgent
from agents.presets import defaults

_DEFAULTS = defaults("trpo")


class TrpoAgent(NpgAgent):
    """TRPO as a tf-agents agent (see the module docstring).

    Args:
        time_step_spec, action_spec, actor_critic_network, value_optimizer,
            max_kl, damping, cg_iterations, cg_residual_tolerance,
            **kwargs: As in `agents.npg.NpgAgent`, `max_kl` here the
            radius `δ` the line search holds the measured mean KL to;
            those not given take the `"default"` preset's `trpo` values.
        line_search_steps: Step halvings tried. Defaults to `10`.
        accept_ratio: Fraction of the expected improvement a step must
            achieve. Defaults to `0.1`.
    """

    _algo = "trpo"

    def __init__(
        self,
        time_step_spec,
        action_spec,
        actor_critic_network,
        value_optimizer=None,
        max_kl: float = _DEFAULTS["max_kl"],
        damping: float = _DEFAULTS["damping"],
        cg_iterations: int = 10,
        cg_residual_tolerance: float = 1e-10,
        line_search_steps: int = 10,
        accept_ratio: float = 0.1,
        name: str = "TrpoAgent",
        **kwargs,
    ):
        check_positive_integer("line_search_steps", line_search_steps)
        check_non_negative("accept_ratio", accept_ratio)
        self._line_search_steps = int(line_search_steps)
        self._accept_ratio = float(accept_ratio)
        super().__init__(
            time_step_spec,
            action_spec,
            actor_critic_network,
            value_optimizer,
            max_kl=max_kl,
            damping=damping,
            cg_iterations=cg_iterations,
            cg_residual_tolerance=cg_residual_tolerance,
            name=name,
            **kwargs,
        )

    def _take_step(self, parameters, full_step, expected, evaluate):
        """Step 4: tries `θ_old + 2⁻ᵏ Δ`, keeps the first acceptable one or
        restores `θ_old`; returns the accepted `2⁻ᵏ` (or 0) and the KL
        measured there (or 0). `evaluate()` gives `(L(θ), KL)` at the
        current parameters."""
        old = [tf.identity(p) for p in parameters]
        old_surrogate, _ = evaluate()
        steps = trust_region.unflatten(full_step, parameters)
        for p, p_old, step in zip(parameters, old, steps):
            p.assign(p_old + step)

        def acceptable(fraction):
            surrogate, kl = evaluate()
            improvement = surrogate - old_surrogate
            ok = tf.reduce_all(
                tf.stack(
                    [
                        tf.math.is_finite(surrogate),
                        kl <= self._max_kl,
                        improvement > 0.0,
                        improvement >= self._accept_ratio * fraction * expected,
                    ]
                )
            )
            return ok, kl

        return trust_region.backtracking_line_search(
            parameters, old, steps, acceptable, self._line_search_steps
        )
