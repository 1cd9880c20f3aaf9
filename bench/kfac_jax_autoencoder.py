"""kfac-jax and optax Adam on the deep autoencoder of `bench/autoencoder.py`.

    .venv-jax/bin/python bench/kfac_jax_autoencoder.py   # make bench-kfac-jax
    .venv-jax/bin/python bench/kfac_jax_autoencoder.py --quick

Runs in its own environment (`requirements-jax.lock`: jax[cpu], kfac-jax,
optax, dm-haiku), on the problem `bench/autoencoder_problem.py` defines, so
every run starts from the same weights and sees the same batches as the
Keras runs of that seed. Writes `kfac_jax.json` (`kfac_jax_quick.json`) to
`--out`; `bench/autoencoder.py` reads it and puts these runs in its table
and plot.

- `kfac-jax adaptive`: `kfac_jax.Optimizer` with adaptive learning rate,
  momentum and damping, `initial_damping=1.0`, everything else its
  defaults (among them `min_damping=1e-8` and 10 burn-in batches that only
  feed the curvature estimate before the first update: they come from the
  same stream, so kfac-jax's updates use the batches 11, 12, ... of it);
- `kfac-jax, λ ≥ 1e-4`: the same with `min_damping=1e-4`, the floor of
  `keras_kfac.KFAC(adaptive=True)`;
- `optax Adam`: `optax.adam`, its learning rate tuned over the Keras Adam
  grid on seed 0 by the final error.

Timing as in `bench/autoencoder.py`: compilation and evaluations are not
counted (two warm-up updates, then a fresh start).
"""

import argparse
import json
import os
import sys
import time

import haiku as hk
import jax
import jax.numpy as jnp
import kfac_jax
import numpy as np
import optax
from autoencoder_problem import (
    CODE_LAYER,
    FULL_PLAN,
    QUICK_PLAN,
    WIDTHS,
    batch_sequence,
    images,
    initial_weights,
)

BURN_IN = 10  # kfac-jax's default num_burnin_steps
ADAM_GRID = [1e-3, 3e-3, 1e-2, 3e-2]
QUICK_ADAM_GRID = [1e-3, 1e-2]
KFAC = "kfac-jax adaptive"
KFAC_FLOOR = "kfac-jax, λ ≥ 1e-4"
ADAM = "optax Adam"


def forward(x):
    h = x
    for i, width in enumerate(WIDTHS):
        h = hk.Linear(width, name=f"dense_{i}")(h)
        if i not in (CODE_LAYER, len(WIDTHS) - 1):
            h = jax.nn.sigmoid(h)
    return h


network = hk.without_apply_rng(hk.transform(forward))


def parameters(seed):
    weights = initial_weights(seed)
    return {
        f"dense_{i}": {
            "w": jnp.asarray(weights[2 * i]),
            "b": jnp.asarray(weights[2 * i + 1]),
        }
        for i in range(len(WIDTHS))
    }


def loss(params, batch):
    """Bernoulli NLL summed over pixels, mean over images."""
    logits = network.apply(params, batch)
    kfac_jax.register_sigmoid_cross_entropy_loss(logits, batch)
    per_pixel = optax.sigmoid_binary_cross_entropy(logits, batch)
    return jnp.mean(jnp.sum(per_pixel, axis=1))


@jax.jit
def evaluate(params, x):
    logits = network.apply(params, x)
    error = jnp.mean(jnp.sum(jnp.square(jax.nn.sigmoid(logits) - x), axis=1))
    nll = jnp.mean(
        jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x), axis=1)
    )
    return error, nll


class KFACRun:
    """kfac-jax with its adaptive step, momentum and damping."""

    def __init__(self, min_damping=1e-8):
        self.optimizer = kfac_jax.Optimizer(
            value_and_grad_func=jax.value_and_grad(loss),
            l2_reg=0.0,
            use_adaptive_learning_rate=True,
            use_adaptive_momentum=True,
            use_adaptive_damping=True,
            initial_damping=1.0,
            min_damping=min_damping,
            multi_device=False,
        )

    def start(self, params, batches, seed):
        self.rng = jax.random.PRNGKey(seed)
        self.stream = iter(batches)
        self.count = 0
        first = next(iter(batches))
        return params, self.optimizer.init(params, self.rng, first)

    def step(self, params, state):
        self.rng, key = jax.random.split(self.rng)
        params, state, stats = self.optimizer.step(
            params,
            state,
            key,
            data_iterator=self.stream,
            global_step_int=self.count,
        )
        self.count += 1
        return params, state, stats["loss"]


class AdamRun:
    def __init__(self, learning_rate):
        self.optimizer = optax.adam(learning_rate)

        @jax.jit
        def update(params, state, batch):
            value, grads = jax.value_and_grad(loss)(params, batch)
            updates, state = self.optimizer.update(grads, state, params)
            return optax.apply_updates(params, updates), state, value

        self.update = update

    def start(self, params, batches, seed):
        self.stream = iter(batches)
        return params, self.optimizer.init(params)

    def step(self, params, state):
        return self.update(params, state, next(self.stream))


KFAC_RUNS = {
    KFAC: KFACRun,
    KFAC_FLOOR: lambda: KFACRun(min_damping=1e-4),
}


def train(make, seed, x, batch_size, updates, eval_every):
    """One run: errors at each evaluation, training seconds, ms/update."""
    extra = BURN_IN if make in KFAC_RUNS.values() else 0
    order = batch_sequence(len(x), batch_size, updates + extra, seed)
    batches = [x[indices] for indices in order]
    run = make()
    # Compile on a throwaway start, then start again.
    params, state = run.start(parameters(seed), batches, seed)
    for _ in range(2):
        params, state, value = run.step(params, state)
    jax.block_until_ready(value)
    evaluate(params, x)
    params, state = run.start(parameters(seed), batches, seed)
    error, nll = evaluate(params, x)
    record = {"updates": [0], "seconds": [0.0], "errors": [float(error)]}
    clock = 0.0
    for start in range(0, updates, eval_every):
        t = time.perf_counter()
        for _ in range(min(eval_every, updates - start)):
            params, state, value = run.step(params, state)
        jax.block_until_ready(value)
        clock += time.perf_counter() - t
        error, nll = evaluate(params, x)
        record["updates"].append(min(start + eval_every, updates))
        record["seconds"].append(clock)
        record["errors"].append(float(error))
    record.update(nll=float(nll), ms=1000 * clock / updates, skipped=0)
    return record


def benchmark(x, batch_size, updates, eval_every, seeds, adam_grid):
    seed0 = seeds[0]
    grid_runs = {name: {} for name in (*KFAC_RUNS, ADAM)}
    for name, make in KFAC_RUNS.items():
        grid_runs[name][1.0] = train(
            make, seed0, x, batch_size, updates, eval_every
        )
    for lr in adam_grid:
        grid_runs[ADAM][lr] = train(
            lambda lr=lr: AdamRun(lr), seed0, x, batch_size, updates, eval_every
        )
    chosen = {
        name: min(runs, key=lambda v: runs[v]["errors"][-1])
        for name, runs in grid_runs.items()
    }
    makes = {**KFAC_RUNS, ADAM: lambda: AdamRun(chosen[ADAM])}
    runs = {name: [grid_runs[name][chosen[name]]] for name in grid_runs}
    for seed in seeds[1:]:
        for name, make in makes.items():
            runs[name].append(
                train(make, seed, x, batch_size, updates, eval_every)
            )
    for name, seed_runs in runs.items():
        finals = [r["errors"][-1] for r in seed_runs]
        print(
            f"  batch {batch_size} {name}: final errors {finals}, "
            f"{np.mean([r['ms'] for r in seed_runs]):.2f} ms/update",
            file=sys.stderr,
            flush=True,
        )
    return {
        "grids": {
            **{name: ["initial_damping", [1.0]] for name in KFAC_RUNS},
            ADAM: ["learning_rate", adam_grid],
        },
        "grid_runs": {
            name: {str(v): run for v, run in values.items()}
            for name, values in grid_runs.items()
        },
        "chosen": chosen,
        "runs": runs,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=None, help="3 (quick: 2)")
    parser.add_argument(
        "--out", default=os.path.join("bench", "results", "autoencoder")
    )
    args = parser.parse_args()
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    seeds = list(range(args.seeds or (2 if args.quick else 3)))
    adam_grid = QUICK_ADAM_GRID if args.quick else ADAM_GRID
    x = jnp.asarray(images())
    start = time.perf_counter()
    results = {
        str(batch_size): benchmark(
            x, batch_size, updates, eval_every, seeds, adam_grid
        )
        for batch_size, updates, eval_every in plan
    }
    results["versions"] = {
        "jax": jax.__version__,
        "kfac_jax": kfac_jax.__version__,
        "optax": optax.__version__,
        "minutes": (time.perf_counter() - start) / 60,
    }
    os.makedirs(args.out, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    with open(os.path.join(args.out, f"kfac_jax{suffix}.json"), "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
