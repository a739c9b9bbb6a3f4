"""Held-out canonical correlation of linear CCA, scikit-learn's CCA and Deep CCA.

The small version of the split-MNIST protocol of Andrew et al. (2013), on
the 8x8 digits that scikit-learn ships (1,797 images): view 1 is the left 4
columns of each image (32 pixels), view 2 the right 4 columns. One fixed
split (30% held out, `random_state=0`); the figure is the total canonical
correlation of the top `k` pairs on the held-out images:

- `LinearCCA` (mmzoo.cca, closed form): fitted on the training images,
  then `score` on the held-out ones (the sum over the k pairs of the Pearson
  correlation of the projections);
- scikit-learn's `CCA(n_components=k)` (NIPALS): its `transform` of the
  held-out images, the per-pair Pearson correlations summed;
- Deep CCA: one MLP per view trained with `mmzoo.cca.DeepCCALoss`, full
  batch, Adam; then, as in the paper, a `LinearCCA` fitted on the training
  images' network outputs and scored on the held-out images' outputs.
  Several seeds: median and range.

The choices are made on a validation split of the training images only
(a quarter of them, `random_state=1`): the linear baseline's ridge from
`LINEAR_RIDGES`, Deep CCA's activation and step count from `DEEP_GRID`
(seed 0). The held-out images are used only for the reported figures, and
every candidate's validation score is in the results. Run:

    python -m benchmarks.cca_digits --out benchmarks/results/cca-digits

It writes `results.json` and `results.md` into `--out` and prints the
markdown (a few minutes on 2 CPU cores).
"""

import argparse
import datetime
import json
import os
import statistics
import time

import numpy as np

from benchmarks.machine import describe

K = 10
SEEDS = (0, 1, 2, 3, 4)
LINEAR_RIDGES = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
# Deep CCA's fixed settings, and the candidates chosen from on validation.
DEEP_FIXED = {
    "hidden": (256, 256),
    "output_dim": K,
    "k": None,
    "batch_size": None,
    "learning_rate": 1e-3,
    "ridge": 1e-3,
    "weight_decay": 0.0,
}
DEEP_GRID = (
    {"activation": "relu", "steps": 300},
    {"activation": "relu", "steps": 1000},
    {"activation": "sigmoid", "steps": 300},
    {"activation": "sigmoid", "steps": 1000},
)


# === Data ===


def digits_halves(test_size=0.3, seed=0):
    """The digits' left and right halves, pixels scaled to [0, 1].

    Returns:
        `(x_train, y_train), (x_test, y_test)`: `x` the left 4 columns of
        each 8x8 image (32 features), `y` the right 4 (32 features), split
        by scikit-learn's `train_test_split(test_size, random_state=seed)`.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images = load_digits().images / 16.0
    left = images[:, :, :4].reshape(len(images), -1)
    right = images[:, :, 4:].reshape(len(images), -1)
    x_train, x_test, y_train, y_test = train_test_split(
        left, right, test_size=test_size, random_state=seed
    )
    return (x_train, y_train), (x_test, y_test)


# === Deep CCA ===


def view_network(input_dim, hidden, output_dim, activation, weight_decay, name):
    """An MLP for one view: `hidden` Dense layers, then a linear output."""
    import keras

    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
    inputs = keras.Input((input_dim,), name=f"{name}_pixels")
    features = inputs
    for index, width in enumerate(hidden):
        features = keras.layers.Dense(
            width,
            activation=activation,
            kernel_regularizer=regularizer,
            name=f"{name}_dense_{index + 1}",
        )(features)
    outputs = keras.layers.Dense(
        output_dim, kernel_regularizer=regularizer, name=f"{name}_output"
    )(features)
    return keras.Model(inputs, outputs, name=name)


def train_deep_cca(
    x,
    y,
    hidden=(256, 256),
    output_dim=K,
    k=None,
    steps=300,
    batch_size=None,
    learning_rate=1e-3,
    ridge=1e-3,
    weight_decay=0.0,
    activation="sigmoid",
    seed=0,
):
    """Train one MLP per view with `DeepCCALoss`; return the two networks.

    Args:
        x, y: the paired training views, shapes `(n, d1)` and `(n, d2)`.
        hidden: the hidden layer widths of each view's MLP.
        output_dim: the size of each network's output.
        k: `DeepCCALoss`'s k (None: all `output_dim` correlations).
        steps: optimizer steps.
        batch_size: pairs per step, drawn in a shuffled order (a seeded
            shuffle each pass); `None` for the whole set (full batch).
        learning_rate: Adam's learning rate.
        ridge: `DeepCCALoss`'s r1 and r2.
        weight_decay: the L2 penalty on every kernel.
        activation: of the hidden layers (the paper used sigmoid-like units).
        seed: seeds the weights and the batch order.

    Returns:
        `(net_x, net_y, seconds)`: the trained networks and the training
        time.
    """
    import keras
    import tensorflow as tf

    from mmzoo.cca import DeepCCALoss

    keras.utils.set_random_seed(seed)
    net_x = view_network(
        x.shape[1], hidden, output_dim, activation, weight_decay, "left_net"
    )
    net_y = view_network(
        y.shape[1], hidden, output_dim, activation, weight_decay, "right_net"
    )
    left = keras.Input((x.shape[1],), name="left")
    right = keras.Input((y.shape[1],), name="right")
    both = keras.layers.Concatenate(name="outputs")([net_x(left), net_y(right)])
    model = keras.Model({"left": left, "right": right}, both)
    loss = DeepCCALoss(k=k, r1=ridge, r2=ridge)

    def dcca(_, outputs):
        return loss(outputs[:, :output_dim], outputs[:, output_dim:])

    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=dcca)
    # A repeated tf.data pipeline and one "epoch" of `steps` steps: Keras'
    # per-epoch overhead (about 50 ms here) would otherwise dominate
    # full-batch training, where an epoch is a single step.
    inputs = {"left": x.astype("float32"), "right": y.astype("float32")}
    targets = np.zeros((len(x), 1), dtype="float32")  # unused by the loss
    if batch_size is None:
        data = tf.data.Dataset.from_tensors((inputs, targets))
    else:
        data = (
            tf.data.Dataset.from_tensor_slices((inputs, targets))
            .shuffle(len(x), seed=seed)
            .batch(batch_size, drop_remainder=True)
        )
    start = time.perf_counter()
    model.fit(data.repeat(), steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0)
    return net_x, net_y, time.perf_counter() - start


def deep_cca_score(net_x, net_y, train, test, k=K, ridge=1e-4):
    """Held-out total correlation of the top `k` pairs of Deep CCA's outputs.

    As Andrew et al. do: a `LinearCCA` fitted on the training pairs' network
    outputs, scored on the held-out pairs' outputs.
    """
    from mmzoo.cca import LinearCCA

    def outputs(pair):
        x, y = pair
        return (
            np.asarray(net_x.predict(x.astype("float32"), verbose=0), np.float64),
            np.asarray(net_y.predict(y.astype("float32"), verbose=0), np.float64),
        )

    cca = LinearCCA(k, r1=ridge, r2=ridge).fit(*outputs(train))
    return cca.score(*outputs(test)), float(cca.correlations_.sum())


# === The comparison ===


def per_pair(a, b):
    """The Pearson correlation of `a[:, j]` and `b[:, j]`, for each column j."""
    return [float(np.corrcoef(a[:, j], b[:, j])[0, 1]) for j in range(a.shape[1])]


def pearson_sum(a, b):
    return float(sum(per_pair(a, b)))


def timed_fit(fit, data, repeats):
    """The fitted model and the median seconds of `repeats` fits (this is a
    shared machine: one timing of a few milliseconds is mostly noise)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fitted = fit(*data)
        times.append(time.perf_counter() - start)
    return fitted, statistics.median(times)


def rare_pixel_share(cca, x, y, below=0.01):
    """Per pair and view: the share of the projection's variance (on the
    training images) that comes from pixels nonzero in under `below` of
    them, the pixels an unregularised CCA can fit to chance."""
    shares = []
    for weights, data in ((cca.weights_x_, x), (cca.weights_y_, y)):
        rare = (data != 0).mean(axis=0) < below
        part = np.var(data[:, rare] @ weights[rare], axis=0)
        shares.append([float(v) for v in part / np.var(data @ weights, axis=0)])
    return shares


def linear_cca(train, test, validation):
    """LinearCCA at each ridge (validation scores), the chosen and r = 0 held out."""
    from mmzoo.cca import LinearCCA

    (fit_x, fit_y), (val_x, val_y) = validation
    scores = {
        str(ridge): LinearCCA(K, ridge, ridge).fit(fit_x, fit_y).score(val_x, val_y)
        for ridge in LINEAR_RIDGES
    }
    chosen = max(LINEAR_RIDGES, key=lambda ridge: scores[str(ridge)])
    results = {"validation_by_ridge": scores, "chosen_ridge": chosen}
    for label, ridge in (("chosen", chosen), ("default", 1e-4), ("no_ridge", 0.0)):
        cca, seconds = timed_fit(LinearCCA(K, ridge, ridge).fit, train, 5)
        results[label] = {
            "ridge": ridge,
            "held_out": cca.score(*test),
            "held_out_per_pair": per_pair(*cca.transform(*test)),
            "train": float(cca.correlations_.sum()),
            "fit_seconds": seconds,
            "rare_pixel_share_per_pair": rare_pixel_share(cca, *train),
        }
    return results


def sklearn_cca(train, test):
    """scikit-learn's CCA with its defaults (scale=True, max_iter=500, tol=1e-6)."""
    import warnings

    from sklearn.cross_decomposition import CCA

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cca, seconds = timed_fit(CCA(n_components=K).fit, train, 3)
    x_test, y_test = cca.transform(*test)
    x_train, y_train = cca.transform(*train)
    return {
        "held_out": pearson_sum(x_test, y_test),
        "held_out_per_pair": per_pair(x_test, y_test),
        "train": pearson_sum(x_train, y_train),
        "fit_seconds": seconds,
        "iterations_per_pair": [int(n) for n in cca.n_iter_],
        "warnings": sorted({str(warning.message)[:200] for warning in caught}),
    }


def deep_cca(train, test, validation, seeds):
    """Deep CCA: the grid on validation (seed 0), then the chosen over seeds."""
    grid = []
    for candidate in DEEP_GRID:
        net_x, net_y, seconds = train_deep_cca(
            *validation[0], seed=0, **DEEP_FIXED, **candidate
        )
        score, train_score = deep_cca_score(net_x, net_y, *validation)
        grid.append(
            {
                **candidate,
                "validation": score,
                "train": train_score,
                "train_seconds": seconds,
            }
        )
        print(f"  Deep CCA {candidate}: validation {score:.3f}", flush=True)
    best = max(grid, key=lambda entry: entry["validation"])
    chosen = {"activation": best["activation"], "steps": best["steps"]}
    runs = []
    for seed in seeds:
        net_x, net_y, seconds = train_deep_cca(
            *train, seed=seed, **DEEP_FIXED, **chosen
        )
        score, train_score = deep_cca_score(net_x, net_y, train, test)
        runs.append(
            {"seed": seed, "held_out": score, "train": train_score, "seconds": seconds}
        )
        print(f"  Deep CCA seed {seed}: held out {score:.3f}", flush=True)
    held_out = [run["held_out"] for run in runs]
    return {
        "fixed": {**DEEP_FIXED, "hidden": list(DEEP_FIXED["hidden"])},
        "validation_grid": grid,
        "chosen": chosen,
        "runs": runs,
        "held_out_median": statistics.median(held_out),
        "held_out_min": min(held_out),
        "held_out_max": max(held_out),
        "train_median": statistics.median(run["train"] for run in runs),
        "train_seconds_median": statistics.median(run["seconds"] for run in runs),
    }


def measure(seeds=SEEDS):
    """The whole comparison as a JSON-ready dict (see the module docstring)."""
    import scipy
    import sklearn
    from sklearn.model_selection import train_test_split

    started = time.perf_counter()
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    train, test = digits_halves()
    fit_x, val_x, fit_y, val_y = train_test_split(
        *train, test_size=0.25, random_state=1
    )
    validation = ((fit_x, fit_y), (val_x, val_y))
    machine = describe("tensorflow")
    machine.update(
        numpy=np.__version__, scipy=scipy.__version__, sklearn=sklearn.__version__
    )
    results = {
        "machine": machine,
        "started": stamp,
        "k": K,
        "data": {
            "train": len(train[0]),
            "held_out": len(test[0]),
            "validation_of_train": len(val_x),
            "features": [train[0].shape[1], train[1].shape[1]],
        },
        "linear_cca": linear_cca(train, test, validation),
        "sklearn_cca": sklearn_cca(train, test),
        "deep_cca": deep_cca(train, test, validation, seeds),
    }
    results["wall_seconds"] = time.perf_counter() - started
    return results


def rare_pixel_note(linear):
    """Why ridge 0 loses on held-out images, from the pair leaning most on
    pixels that are nonzero in under 1% of the training images."""
    shares = linear["no_ridge"]["rare_pixel_share_per_pair"]
    pair = max(range(len(shares[0])), key=lambda j: min(shares[0][j], shares[1][j]))
    chosen = linear["chosen"]["rare_pixel_share_per_pair"]
    most = max(max(view) for view in chosen)
    return (
        f"Without a ridge, pair {pair + 1} draws {shares[0][pair]:.0%} of its "
        f"left-view and {shares[1][pair]:.0%} of its right-view variance from "
        "pixels that are nonzero in under 1% of the training images; it holds "
        f"{linear['no_ridge']['held_out_per_pair'][pair]:.2f} on held-out "
        f"images. With ridge {linear['chosen']['ridge']:g} no pair draws more "
        f"than {most:.1%} from them. scikit-learn's CCA (no ridge) matches "
        "LinearCCA at ridge 0 pair by pair, to 0.01."
    )


def markdown(results):
    """The results as a section for benchmarks/RESULTS.md."""
    machine, k = results["machine"], results["k"]
    linear, sk, deep = (
        results["linear_cca"],
        results["sklearn_cca"],
        results["deep_cca"],
    )
    data = results["data"]
    fixed = deep["fixed"]
    chosen = deep["chosen"]
    hidden = " and ".join(str(width) for width in fixed["hidden"])

    def row(name, held_out, spread, train, seconds):
        return f"| {name} | **{held_out:.2f}** | {spread} | {train:.2f} | {seconds} |"

    lines = [
        "## Canonical correlation on the digits halves: Deep CCA against linear CCA",
        "",
        "The small version of the split-MNIST protocol of Andrew et al. (2013) on "
        "scikit-learn's 8x8 digits: view 1 the left 4 columns of each image, view 2 "
        f"the right 4 ({data['features'][0]} pixels each, scaled to [0, 1]); "
        f"{data['train']} training and {data['held_out']} held-out images "
        "(`train_test_split(test_size=0.3, random_state=0)`). The figure is the "
        f"**total correlation of the top k = {k} canonical pairs on the held-out "
        f"images** (at most {k}): the sum over the pairs of the Pearson correlation "
        "of the two views' projections. Choices were made on a validation quarter "
        f"of the training images ({data['validation_of_train']}); the held-out "
        "images only give the figures.",
        "",
        "| method | held-out total correlation (k = 10) | range over seeds | "
        "training total correlation | fit time (median) |",
        "|---|---|---|---|---|",
        row(
            f"`mmzoo.cca.LinearCCA`, ridge {linear['chosen']['ridge']:g} "
            "(chosen on validation)",
            linear["chosen"]["held_out"],
            "closed form",
            linear["chosen"]["train"],
            f"{linear['chosen']['fit_seconds'] * 1e3:.0f} ms",
        ),
        row(
            "`mmzoo.cca.LinearCCA`, ridge 0",
            linear["no_ridge"]["held_out"],
            "closed form",
            linear["no_ridge"]["train"],
            f"{linear['no_ridge']['fit_seconds'] * 1e3:.0f} ms",
        ),
        row(
            f"scikit-learn `CCA(n_components={k})` (NIPALS, defaults)",
            sk["held_out"],
            "deterministic",
            sk["train"],
            f"{sk['fit_seconds']:.1f} s",
        ),
        row(
            f"Deep CCA (`DeepCCALoss`), median of {len(deep['runs'])} seeds",
            deep["held_out_median"],
            f"{deep['held_out_min']:.2f} to {deep['held_out_max']:.2f}",
            deep["train_median"],
            f"{deep['train_seconds_median']:.1f} s per seed",
        ),
        "",
        f"Deep CCA: one MLP per view ({hidden} {chosen['activation']} units, a "
        f"linear output of {fixed['output_dim']}), `DeepCCALoss(k=None, "
        f"r1={fixed['ridge']:g}, r2={fixed['ridge']:g})`, full batch, Adam at "
        f"{fixed['learning_rate']:g}, {chosen['steps']} steps, no weight decay; "
        "its figure is, as in the paper, a `LinearCCA` (ridge 1e-4) fitted on the "
        "networks' outputs for the training images and scored on their outputs "
        "for the held-out ones. Seeds "
        + ", ".join(str(run["seed"]) for run in deep["runs"])
        + ": "
        + ", ".join(f"{run['held_out']:.2f}" for run in deep["runs"])
        + ".",
        "",
        "Validation scores (fit on the other three quarters of the training images):",
        "",
        "- LinearCCA by ridge: "
        + ", ".join(
            f"{float(ridge):g}: {score:.2f}"
            for ridge, score in linear["validation_by_ridge"].items()
        )
        + ".",
        "- Deep CCA (seed 0): "
        + ", ".join(
            f"{entry['activation']} {entry['steps']} steps: {entry['validation']:.2f}"
            for entry in deep["validation_grid"]
        )
        + ".",
        "",
        "Held-out correlation of each pair, LinearCCA (chosen ridge): "
        + ", ".join(f"{value:.2f}" for value in linear["chosen"]["held_out_per_pair"])
        + "; ridge 0: "
        + ", ".join(f"{value:.2f}" for value in linear["no_ridge"]["held_out_per_pair"])
        + "; scikit-learn: "
        + ", ".join(f"{value:.2f}" for value in sk["held_out_per_pair"])
        + f". scikit-learn's iterations per pair: {sk['iterations_per_pair']}"
        + (f"; warnings: {sk['warnings']}" if sk["warnings"] else ", no warnings")
        + ".",
        "",
        rare_pixel_note(linear),
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores (shared), no GPU; "
        f"Python {machine['python']}, TensorFlow {machine['tensorflow']}, Keras "
        f"{machine['keras']}, NumPy {machine['numpy']}, SciPy {machine['scipy']}, "
        f"scikit-learn {machine['sklearn']}, mmzoo {machine['mmzoo']}. Wall time "
        f"{results['wall_seconds']:.0f} s, started {results['started']}. "
        "Command: `python -m benchmarks.cca_digits "
        "--out benchmarks/results/cca-digits`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for the results")
    parser.add_argument(
        "--seeds",
        type=int,
        default=len(SEEDS),
        help=f"Deep CCA seeds, 0 to N-1 (default {len(SEEDS)})",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    results = measure(seeds=tuple(range(args.seeds)))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as file:
        json.dump(results, file, indent=2)
    text = markdown(results)
    with open(os.path.join(args.out, "results.md"), "w") as file:
        file.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
