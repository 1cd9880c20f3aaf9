"""How good is ACKTR's K-FAC step as a natural-gradient step?

    python bench/natural_direction.py --env InvertedDoublePendulum-v5
    python bench/natural_direction.py --env HalfCheetah-v5 --damping 0.01

Trains ACKTR with the `mujoco` preset (options after the known ones go to
`agents.train`, e.g. `--damping 0.01`) and, at every update, measures the
policy step `Δ` it took against the exact Fisher `F` of the batch (the
Hessian of the mean KL, by double backpropagation as TRPO computes it):

- `realized`: the measured `mean_w KL(π_old ‖ π_new)` of the step;
- `kfac model`: `½ ΔᵀF̂Δ` under K-FAC's own curvature (what its KL clip
  bounds);
- `exact model`: `½ ΔᵀFΔ`;
- `efficiency`: `gᵀΔ / sqrt(ΔᵀFΔ · gᵀF⁻¹g)`, `g` the policy gradient. For
  a step of a given KL, the first-order gain of the surrogate is
  proportional to `gᵀΔ / sqrt(ΔᵀFΔ)`; the exact natural gradient
  `F⁻¹g` maximizes it, so the efficiency is 1 there and lies in `[-1, 1]`.
  `gᵀF⁻¹g` is solved by 50 conjugate-gradient iterations on `F + 10⁻³ I`;
- `trpo efficiency`: the same for TRPO's direction on the batch (10
  conjugate-gradient iterations on `F + 0.1 I`, `agents.TrpoAgent`'s
  defaults).

Prints the medians over each fifth of the run, then over all updates, and
the mean return of the last 100 episodes.
"""

import argparse
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MEASURES = ("realized", "kfac_model", "exact_model", "efficiency", "trpo")
HEADERS = (
    "realized KL",
    "K-FAC model",
    "exact model",
    "efficiency",
    "TRPO's efficiency",
)


def measuring_agent_class():
    """`AcktrAgent` that records `MEASURES` of every update it takes."""
    import tensorflow as tf

    import keras_kfac
    from agents import trust_region
    from agents.acktr import AcktrAgent

    class MeasuringAcktrAgent(AcktrAgent):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.measured = {
                name: tf.Variable(0.0, trainable=False) for name in MEASURES
            }

        def _update(self, tape, terms, batch, variables):
            with keras_kfac.collecting_statistics(False):
                gradient = tape.gradient(terms.total, variables)
            # The ascent direction of the surrogate.
            g = -trust_region.flatten(
                trust_region.zeros_for_none(gradient, variables)
            )
            old = [tf.identity(v) for v in variables]
            statistics = super()._update(tape, terms, batch, variables)
            realized = self._mean_kl(batch)
            new = [tf.identity(v) for v in variables]
            step = trust_region.flatten([n - o for n, o in zip(new, old)])
            for v, o in zip(variables, old):
                v.assign(o)  # F is the Fisher at θ_old

            def mean_kl():
                return self._mean_kl(batch)

            def fisher(damping):
                return trust_region.fisher_vector_product(
                    mean_kl, variables, damping
                )

            exact = fisher(0.0)
            natural = trust_region.conjugate_gradient(fisher(1e-3), g, 50)
            g_natural = tf.tensordot(g, natural, 1)

            def efficiency(direction):
                curvature = tf.tensordot(direction, exact(direction), 1)
                return tf.tensordot(g, direction, 1) / tf.sqrt(
                    curvature * g_natural
                )

            trpo = trust_region.conjugate_gradient(fisher(0.1), g, 10)
            values = dict(
                realized=realized,
                kfac_model=statistics["predicted_kl"],
                exact_model=0.5 * tf.tensordot(step, exact(step), 1),
                efficiency=efficiency(step),
                trpo=efficiency(trpo),
            )
            for name, value in values.items():
                self.measured[name].assign(value)
            for v, n in zip(variables, new):
                v.assign(n)
            return statistics

    return MeasuringAcktrAgent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="InvertedDoublePendulum-v5")
    parser.add_argument("--steps", type=int, default=150_000)
    parser.add_argument("--seed", type=int, default=0)
    args, train_options = parser.parse_known_args(argv)

    import numpy as np
    import tensorflow as tf

    import agents.acktr
    from agents import resolve, train
    from agents.build import build
    from agents.rollout import RolloutCollector

    config, _ = train.parse_args(
        ["--algo", "acktr", "--preset", "mujoco", "--env", args.env]
        + ["--seed", str(args.seed), *train_options]
    )
    config = resolve(config)
    agents.acktr.AcktrAgent, original = (
        measuring_agent_class(),
        agents.acktr.AcktrAgent,
    )
    try:
        py_env, tf_env, agent = build(config)
    finally:
        agents.acktr.AcktrAgent = original
    try:
        collector = RolloutCollector(
            tf_env, agent.collect_policy, config.n_steps
        )
        update = tf.function(agent.train)
        rows, returns = [], []
        for _ in range(max(1, args.steps // config.batch_steps)):
            update(collector.collect())
            rows.append({k: float(v) for k, v in agent.measured.items()})
            returns += [r for r, _ in py_env.pop_completed_episodes()]
    finally:
        py_env.close()

    print(
        f"ACKTR on {args.env}, seed {args.seed}, damping {config.damping}: "
        f"{len(rows)} updates, mean return of the last 100 episodes "
        f"{np.mean(returns[-100:]):.1f}\n"
    )
    print("| updates | " + " | ".join(HEADERS) + " |")
    print("|---" * (len(HEADERS) + 1) + "|")
    fifths = np.array_split(np.arange(len(rows)), 5) + [np.arange(len(rows))]
    for i, part in enumerate(fifths):
        if not len(part):
            continue
        label = "all" if i == 5 else f"{part[0] + 1}-{part[-1] + 1}"
        medians = [
            statistics.median(rows[j][name] for j in part) for name in MEASURES
        ]
        print(f"| {label} | " + " | ".join(f"{m:.3g}" for m in medians) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
