"""Evaluation metrics against independent computations, and the plots."""

import csv
import json
import re

import keras
import numpy as np
import pytest
from PIL import Image

from mmzoo.metrics import classification_metrics
from mmzoo.metrics import format_metrics
from mmzoo.metrics import regression_metrics
from mmzoo.training.plots import plot_confusion_matrix
from mmzoo.training.plots import plot_history

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABELS = ["cat", "dog", "bird"]


def scores_for(predictions, num_classes):
    """Softmax-like scores whose argmax is `predictions`."""
    scores = np.full((len(predictions), num_classes), 0.1)
    scores[np.arange(len(predictions)), predictions] = 0.8
    return scores


# === Multiclass ===


def test_three_classes_worked_by_hand():
    y_true = [0, 0, 0, 1, 1, 1, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 2, 0, 0]
    # Confusion (rows true, columns predicted):
    #   cat  [3, 0, 0]
    #   dog  [0, 2, 1]
    #   bird [2, 0, 0]
    # cat:  tp=3 fp=2 fn=0 -> P=3/5, R=1,   F1=2*3/(6+2+0)=3/4
    # dog:  tp=2 fp=0 fn=1 -> P=1,   R=2/3, F1=2*2/(4+0+1)=4/5
    # bird: tp=0 fp=1 fn=2 -> P=0,   R=0,   F1=0
    # accuracy 5/8; macro-F1 (3/4 + 4/5 + 0)/3 = 31/60;
    # weighted-F1 (3*3/4 + 3*4/5 + 2*0)/8 = 4.65/8.
    metrics = classification_metrics(y_true, scores_for(y_pred, 3), LABELS)
    assert metrics["examples"] == 8
    assert metrics["accuracy"] == pytest.approx(5 / 8)
    assert metrics["macro_f1"] == pytest.approx(31 / 60)
    assert metrics["weighted_f1"] == pytest.approx(4.65 / 8)
    assert metrics["confusion_matrix"] == [[3, 0, 0], [0, 2, 1], [2, 0, 0]]
    expected = {
        "cat": (3 / 5, 1.0, 3 / 4, 3),
        "dog": (1.0, 2 / 3, 4 / 5, 3),
        "bird": (0.0, 0.0, 0.0, 2),
    }
    for name, (precision, recall, f1, support) in expected.items():
        row = metrics["per_class"][name]
        assert row["precision"] == pytest.approx(precision)
        assert row["recall"] == pytest.approx(recall)
        assert row["f1"] == pytest.approx(f1)
        assert row["support"] == support
    assert metrics["labels"] == LABELS
    # No top-k for 3 classes: top-3 of 3 is always right.
    assert metrics["top_k_accuracy"] == {}


def test_result_is_json_serialisable():
    metrics = classification_metrics(
        [0, 1, 2, 3], scores_for([0, 1, 1, 3], 6), list("abcdef")
    )
    assert json.loads(json.dumps(metrics)) == metrics
    assert list(metrics) == [
        "examples",
        "accuracy",
        "macro_f1",
        "weighted_f1",
        "top_k_accuracy",
        "per_class",
        "confusion_matrix",
        "labels",
    ]


def test_random_example_matches_a_loop_based_computation():
    rng = np.random.default_rng(0)
    num_classes, n = 7, 300
    y_score = rng.dirichlet(np.ones(num_classes), size=n)
    y_true = rng.integers(0, num_classes, size=n)
    labels = [f"class_{i}" for i in range(num_classes)]
    metrics = classification_metrics(y_true, y_score, labels)

    y_pred = [max(range(num_classes), key=lambda c: row[c]) for row in y_score]
    f1s, supports = [], []
    for c, name in enumerate(labels):
        pairs = list(zip(y_true, y_pred, strict=True))
        tp = sum(1 for t, p in pairs if t == c and p == c)
        predicted = sum(1 for _, p in pairs if p == c)
        actual = sum(1 for t, _ in pairs if t == c)
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        total = precision + recall
        f1 = 2 * precision * recall / total if total else 0.0
        row = metrics["per_class"][name]
        assert row["precision"] == pytest.approx(precision)
        assert row["recall"] == pytest.approx(recall)
        assert row["f1"] == pytest.approx(f1)
        assert row["support"] == actual
        f1s.append(f1)
        supports.append(actual)
        for p in range(num_classes):
            count = sum(1 for t, q in pairs if t == c and q == p)
            assert metrics["confusion_matrix"][c][p] == count

    hits = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == p)
    assert metrics["accuracy"] == pytest.approx(hits / n)
    assert metrics["macro_f1"] == pytest.approx(sum(f1s) / num_classes)
    weighted = sum(f * s for f, s in zip(f1s, supports, strict=True)) / n
    assert metrics["weighted_f1"] == pytest.approx(weighted)
    for k in (3, 5):
        ranked = [sorted(range(num_classes), key=lambda c: -row[c]) for row in y_score]
        top = (
            sum(1 for t, order in zip(y_true, ranked, strict=True) if t in order[:k])
            / n
        )
        assert metrics["top_k_accuracy"][str(k)] == pytest.approx(top)


def test_top_k_only_below_the_class_count_and_ties_count_as_hits():
    # Class 0 ties with three others for the top score: fewer than 3 classes
    # score strictly higher, so it is a top-3 hit (like `ops.in_top_k`).
    y_score = [[0.2, 0.2, 0.2, 0.2, 0.1, 0.1], [0.0, 0.1, 0.2, 0.3, 0.4, 0.0]]
    metrics = classification_metrics([0, 1], y_score, list("abcdef"))
    assert metrics["top_k_accuracy"] == {"3": 0.5, "5": 1.0}
    four = classification_metrics([0], [[0.4, 0.3, 0.2, 0.1]], list("abcd"))
    assert list(four["top_k_accuracy"]) == ["3"]


def test_class_never_predicted_and_class_absent_from_y_true():
    # "bird" is never predicted: precision 0/0 -> 0.0, recall 0/1.
    # "fish" never occurs in y_true but is predicted once: recall 0/0 -> 0.0.
    # "cow" is in neither: all zeros, still counted in the macro average.
    labels = ["cat", "dog", "bird", "fish", "cow"]
    y_true = [0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 3, 0]
    metrics = classification_metrics(y_true, scores_for(y_pred, 5), labels)
    per_class = metrics["per_class"]
    assert per_class["bird"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 1,
    }
    assert per_class["fish"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
    }
    assert per_class["cow"]["support"] == 0
    assert per_class["cow"]["f1"] == 0.0
    # cat: tp=2 fp=1 fn=0 -> F1 4/5; dog: tp=1 fp=0 fn=1 -> F1 2/3.
    assert metrics["macro_f1"] == pytest.approx((4 / 5 + 2 / 3) / 5)
    assert metrics["weighted_f1"] == pytest.approx((2 * 4 / 5 + 2 * 2 / 3) / 5)


def test_perfect_predictions():
    y_true = [2, 0, 1, 1, 2]
    metrics = classification_metrics(y_true, scores_for(y_true, 3), LABELS)
    assert metrics["accuracy"] == 1.0
    assert metrics["macro_f1"] == 1.0
    assert metrics["weighted_f1"] == 1.0
    assert metrics["confusion_matrix"] == [[1, 0, 0], [0, 2, 0], [0, 0, 2]]
    for row in metrics["per_class"].values():
        assert row["precision"] == row["recall"] == row["f1"] == 1.0


def test_labels_as_column_vector_and_float_indices_are_accepted():
    expected = classification_metrics([0, 1, 2], scores_for([0, 1, 1], 3), LABELS)
    column = classification_metrics(
        np.array([[0], [1], [2]]), scores_for([0, 1, 1], 3), LABELS
    )
    floats = classification_metrics(
        np.array([0.0, 1.0, 2.0]), scores_for([0, 1, 1], 3), LABELS
    )
    assert column == expected
    assert floats == expected


# === Binary ===


def test_binary_thresholding():
    y_true = [0, 1, 1, 0, 1]
    y_score = np.array([[0.2], [0.5], [0.7], [0.49], [0.3]])
    # threshold 0.5 -> predicted [0, 1, 1, 0, 0]: a score equal to the
    # threshold is positive.
    # "yes": tp=2 fp=0 fn=1 -> P=1, R=2/3, F1=4/5
    # "no":  tp=2 fp=1 fn=0 -> P=2/3, R=1, F1=4/5
    metrics = classification_metrics(y_true, y_score, ["no", "yes"], task="binary")
    assert metrics["accuracy"] == pytest.approx(4 / 5)
    assert metrics["confusion_matrix"] == [[2, 0], [1, 2]]
    assert metrics["per_class"]["yes"]["precision"] == 1.0
    assert metrics["per_class"]["yes"]["recall"] == pytest.approx(2 / 3)
    assert metrics["per_class"]["no"]["f1"] == pytest.approx(4 / 5)
    assert metrics["threshold"] == 0.5
    assert metrics["top_k_accuracy"] == {}

    # threshold 0.25 -> predicted [0, 1, 1, 1, 1]
    lower = classification_metrics(
        np.array(y_true)[:, None],
        y_score[:, 0],
        ["no", "yes"],
        task="binary",
        threshold=0.25,
    )
    assert lower["confusion_matrix"] == [[1, 1], [0, 3]]
    assert lower["per_class"]["yes"]["precision"] == pytest.approx(3 / 4)
    assert lower["threshold"] == 0.25


# === Multilabel ===


def test_multilabel_micro_and_macro_f1():
    labels = ["red", "round", "small"]
    y_true = [[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 0]]
    y_score = [[0.9, 0.2, 0.6], [0.1, 0.8, 0.3], [0.7, 0.4, 0.1], [0.2, 0.6, 0.0]]
    # predicted at 0.5: [1,0,1], [0,1,0], [1,0,0], [0,1,0]
    # red:   tp=2 fp=0 fn=0 -> P=1, R=1, F1=1
    # round: tp=1 fp=1 fn=1 -> P=1/2, R=1/2, F1=1/2
    # small: tp=1 fp=0 fn=1 -> P=1, R=1/2, F1=2/3
    # micro: TP=4 FP=1 FN=2 -> F1 = 8/(8+1+2) = 8/11
    # macro: (1 + 1/2 + 2/3)/3 = 13/18; only row 0 is entirely right.
    metrics = classification_metrics(y_true, y_score, labels, task="multilabel")
    assert metrics["examples"] == 4
    assert metrics["subset_accuracy"] == pytest.approx(1 / 4)
    assert metrics["micro_f1"] == pytest.approx(8 / 11)
    assert metrics["macro_f1"] == pytest.approx(13 / 18)
    assert metrics["per_class"]["small"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
    }
    assert "confusion_matrix" not in metrics
    assert json.loads(json.dumps(metrics)) == metrics


# === Regression ===


def test_regression_by_hand():
    # errors 0.5, 0, -1, 1: MAE 2.5/4, MSE 2.25/4, RMSE 0.75;
    # mean 2.5 -> total sum of squares 5, R2 = 1 - 2.25/5 = 0.55.
    metrics = regression_metrics([1.0, 2.0, 3.0, 4.0], [[1.5], [2.0], [2.0], [5.0]])
    assert metrics == pytest.approx(
        {"examples": 4, "mae": 0.625, "mse": 0.5625, "rmse": 0.75, "r2": 0.55}
    )


def test_regression_r2_of_several_and_constant_targets():
    y_true = np.array([[1.0, 3.0], [2.0, 3.0], [3.0, 3.0]])
    exact = regression_metrics(y_true, y_true)
    assert exact["r2"] == 1.0 and exact["mae"] == 0.0
    # Target 0: errors 1, 0, -1 -> R2 = 1 - 2/2 = 0; target 1 is constant and
    # missed -> 0. Uniform average 0.
    off = y_true + np.array([[1.0, 1.0], [0.0, 0.0], [-1.0, 0.0]])
    assert regression_metrics(y_true, off)["r2"] == 0.0


# === Errors ===


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"y_true": [0, 1], "y_score": scores_for([0, 1], 3), "labels": ["a"]},
            "`labels` must name each class: there are 3 columns in `y_score` but "
            "1 labels",
        ),
        (
            {"y_true": [0, 1, 2], "y_score": scores_for([0, 1], 3)},
            "Received: y_true.shape=(3,), y_score.shape=(2, 3)",
        ),
        (
            {"y_true": [0, 3], "y_score": scores_for([0, 1], 3)},
            "`y_true` holds class indices outside [0, 2] (there are 3 labels): 1 of "
            "them, the first y_true[1]=3.",
        ),
        (
            {"y_true": [0, 1], "y_score": [0.2, 0.9]},
            "For one sigmoid output use task='binary'. Received: y_score.shape=(2,)",
        ),
        (
            {"y_true": [0, 1], "y_score": [[0.1, 0.9, 0.0], [np.nan, 0.5, 0.5]]},
            "`y_score` has 1 non-finite value(s) (NaN or inf), the first at index "
            "(1, 0)",
        ),
        (
            {"y_true": [], "y_score": np.zeros((0, 3))},
            "`y_score` holds no examples. Received: y_score.shape=(0, 3)",
        ),
        (
            {"y_true": [0, 1], "y_score": scores_for([0, 1], 3), "task": "multiclas"},
            "`task` must be one of ['binary', 'multiclass', 'multilabel']. "
            "Received: task='multiclas'. Did you mean 'multiclass'",
        ),
        (
            {
                "y_true": [0, 1],
                "y_score": scores_for([0, 1], 2),
                "labels": ["no", "yes"],
                "task": "binary",
            },
            "use task='multiclass'. Received: y_score.shape=(2, 2)",
        ),
        (
            {
                "y_true": [0, 2],
                "y_score": [0.2, 0.9],
                "labels": ["no", "yes"],
                "task": "binary",
            },
            "`y_true` must hold only 0 and 1 (or booleans). Received: [0, 2]",
        ),
        (
            {
                "y_true": [0, 1],
                "y_score": [0.2, 0.9],
                "labels": ["no", "yes"],
                "task": "binary",
                "threshold": "0.5",
            },
            "`threshold` must be a number. Received: threshold='0.5'",
        ),
        (
            {
                "y_true": [[0, 1, 1]],
                "y_score": [[0.1, 0.2]],
                "labels": ["a", "b"],
                "task": "multilabel",
            },
            "Received: y_true.shape=(1, 3), y_score.shape=(1, 2)",
        ),
        (
            {"y_true": [0, 1], "y_score": scores_for([0, 1], 3), "labels": "abc"},
            "`labels` must be a list of class names. Received: labels='abc'",
        ),
        (
            {
                "y_true": [0, 1],
                "y_score": scores_for([0, 1], 3),
                "labels": ["a", "b", "a"],
            },
            "`labels` must be unique (they key `per_class`). Received duplicates ['a']",
        ),
    ],
)
def test_classification_errors_name_what_was_received(kwargs, message):
    kwargs = {"labels": LABELS, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        classification_metrics(**kwargs)


def test_regression_shape_mismatch():
    with pytest.raises(
        ValueError,
        match=re.escape("Received: y_true.shape=(3, 1), y_pred.shape=(3, 2)"),
    ):
        regression_metrics([1.0, 2.0, 3.0], np.zeros((3, 2)))


# === Text report ===


def test_format_metrics_classification_table_is_aligned():
    labels = ["cat", "a_long_class_name", "bird", "dog", "fish"]
    y_true = [0, 1, 1, 2, 3, 4, 4]
    metrics = classification_metrics(
        y_true, scores_for([0, 1, 2, 2, 3, 4, 0], 5), labels
    )
    text = format_metrics(metrics)
    lines = text.splitlines()
    assert lines[0] == "Examples:       7"
    assert lines[1] == f"Accuracy:       {metrics['accuracy']:.4f}"
    assert lines[2] == f"Macro-F1:       {metrics['macro_f1']:.4f}"
    assert "Top-3 accuracy: 1.0000" in lines
    table = lines[lines.index("") + 1 :]
    assert table[0].split() == ["class", "precision", "recall", "f1", "support"]
    assert len(table) == 1 + len(labels)
    assert len({len(line) for line in table}) == 1
    assert table[2].split() == ["a_long_class_name", "1.0000", "0.5000", "0.6667", "2"]


def test_format_metrics_multilabel_regression_and_errors():
    multilabel = classification_metrics(
        [[1, 0], [0, 1]], [[0.9, 0.1], [0.2, 0.3]], ["x", "y"], task="multilabel"
    )
    text = format_metrics(multilabel)
    assert "Subset accuracy: 0.5000" in text
    assert "Micro-F1:" in text
    regression = format_metrics(regression_metrics([1.0, 2.0], [1.0, 3.0]))
    assert regression.splitlines() == [
        "Examples: 2",
        "MAE:      0.5000",
        "MSE:      0.5000",
        "RMSE:     0.7071",
        "R2:       -1.0000",
    ]
    with pytest.raises(ValueError, match=r"Received: \{'examples': 3\}"):
        format_metrics({"examples": 3})


# === Plots ===


def assert_png(path):
    with open(path, "rb") as file:
        assert file.read(8) == PNG_SIGNATURE
    with Image.open(path) as image:
        image.load()
        width, height = image.size
    assert width > 0 and height > 0
    return width, height


def test_plot_history_from_a_dict(tmp_path):
    history = {
        "loss": [1.2, 0.8, 0.6, 0.5],
        "sparse_categorical_accuracy": [0.4, 0.6, 0.7, 0.75],
        "val_loss": [1.3, 0.9, 0.8, 0.8],
        "val_sparse_categorical_accuracy": [0.35, 0.55, 0.6, 0.62],
    }
    path = tmp_path / "nested" / "curves.png"
    assert plot_history(history, path) == str(path)
    width, height = assert_png(path)
    assert width > height  # two subplots side by side


def test_plot_history_from_a_keras_csv_logger_file(tmp_path):
    # A real CSVLogger file, written by a one-layer model trained 3 epochs.
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, "softmax")])
    model.compile(
        optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    csv_path = tmp_path / "history.csv"
    model.fit(
        x,
        y,
        epochs=3,
        batch_size=16,
        validation_split=0.25,
        callbacks=[keras.callbacks.CSVLogger(str(csv_path))],
        verbose=0,
    )
    with open(csv_path, newline="") as file:
        assert next(csv.reader(file))[0] == "epoch"
    assert_png(plot_history(csv_path, tmp_path / "from_csv.png"))
    # A CSVLogger run without validation holds all-"NA" `val_` columns;
    # validation every other epoch leaves "NA" gaps.
    handmade = tmp_path / "handmade.csv"
    handmade.write_text(
        "epoch,accuracy,loss,val_accuracy,val_loss\n"
        "0,0.5,1.0,NA,NA\n1,0.6,0.8,0.55,0.9\n2,0.7,0.7,NA,NA\n"
    )
    assert_png(plot_history(str(handmade), tmp_path / "gaps.png"))


def test_plot_confusion_matrix_with_13_classes(tmp_path):
    rng = np.random.default_rng(0)
    labels = [f"class_{i:02d}" for i in range(13)]
    matrix = rng.integers(0, 20, size=(13, 13)) + np.diag(np.full(13, 50))
    matrix[4] = 0  # a class with no examples stays 0 when normalised
    normalised = assert_png(
        plot_confusion_matrix(matrix, labels, tmp_path / "normalised.png")
    )
    counts = assert_png(
        plot_confusion_matrix(
            matrix.tolist(), labels, tmp_path / "counts.png", normalize=False
        )
    )
    assert normalised == counts


def test_plots_never_use_pyplot(tmp_path):
    # Keras itself imports pyplot whenever matplotlib is installed, so what
    # matters is that the plots draw through the object API (thread-safe,
    # headless) and leave no figure in pyplot's global state.
    import ast
    import inspect

    import matplotlib.pyplot as pyplot

    from mmzoo.training import plots

    tree = ast.parse(inspect.getsource(plots))
    imported = {
        alias.name if isinstance(node, ast.Import) else node.module
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert "matplotlib.pyplot" not in imported and "matplotlib" not in imported
    before = pyplot.get_fignums()
    plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b"], tmp_path / "m.png")
    plot_history({"loss": [1.0]}, tmp_path / "h.png")
    assert pyplot.get_fignums() == before
    assert (tmp_path / "m.png").stat().st_size > 0


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda tmp: plot_history({"loss": [1.0]}, tmp / "curves.pdf"),
            ValueError,
            "`path` must end in '.png': the plots are written as PNG. Received: path='",
        ),
        (
            lambda tmp: plot_history(
                {"loss": [1.0, 0.5], "val_loss": [1.0]}, tmp / "h.png"
            ),
            ValueError,
            "Received lengths: {'loss': 2, 'val_loss': 1}",
        ),
        (
            lambda tmp: plot_history(tmp / "missing.csv", tmp / "h.png"),
            FileNotFoundError,
            "No history file at '",
        ),
        (
            lambda tmp: plot_history({}, tmp / "h.png"),
            ValueError,
            "`history` holds no metrics to plot",
        ),
        (
            lambda tmp: plot_confusion_matrix([[1, 2, 3]], ["a"], tmp / "m.png"),
            ValueError,
            "Received: matrix.shape=(1, 3)",
        ),
        (
            lambda tmp: plot_confusion_matrix([[1, 0], [0, 1]], ["a"], tmp / "m.png"),
            ValueError,
            "`labels` must name each of the 2 rows of `matrix`. Received 1 labels",
        ),
    ],
)
def test_plot_errors(tmp_path, call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call(tmp_path)


def test_plot_history_csv_with_a_bad_value(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,1.0\n1,oops\n")
    with pytest.raises(
        ValueError,
        match=re.escape(
            "line 3, column 'loss': expected a number or 'NA'. Received: 'oops'"
        ),
    ):
        plot_history(path, tmp_path / "h.png")


# === Cross-modal retrieval ===


def _brute_force_ranks(similarity, correct):
    """Rank of the first correct item per query, by sorting (ties pessimistic)."""
    ranks = []
    for scores, hits in zip(similarity, correct, strict=True):
        # Wrong items before right ones among equal scores.
        order = sorted(range(len(scores)), key=lambda j: (-scores[j], hits[j]))
        ranks.append(1 + next(i for i, j in enumerate(order) if hits[j]))
    return np.array(ranks)


@pytest.mark.parametrize("with_ids", [False, True])
def test_retrieval_metrics_match_a_sort_of_every_query(with_ids):
    from mmzoo.metrics import retrieval_metrics

    rng = np.random.default_rng(0)
    # Rows drawn from a pool, so that equal rows make ties.
    image = rng.normal(size=(25, 6))[rng.integers(0, 25, 40)]
    text = rng.normal(size=(30, 6))[rng.integers(0, 30, 40)] + image
    image_ids = rng.integers(0, 25, 40) if with_ids else None
    text_ids = rng.integers(0, 30, 40) if with_ids else None
    metrics = retrieval_metrics(image, text, image_ids, text_ids, ks=(1, 5, 10))
    correct = np.eye(40, dtype=bool)
    if with_ids:
        correct |= image_ids[:, None] == image_ids[None, :]
        correct |= text_ids[:, None] == text_ids[None, :]
    # Cosine similarity: the rows' lengths do not count (powers of two keep
    # the normalised rows, and so the ties, exact).
    lengths = rng.choice([0.25, 0.5, 2.0, 8.0], (40, 1))
    scaled = retrieval_metrics(image * lengths, text, image_ids, text_ids, (1, 5, 10))
    assert scaled == pytest.approx(metrics)
    unit_image = image / np.linalg.norm(image, axis=1, keepdims=True)
    unit_text = text / np.linalg.norm(text, axis=1, keepdims=True)
    similarity = unit_image @ unit_text.T
    # The pool makes ties, which count against the query.
    assert sum(len(row) - len(np.unique(row)) for row in similarity) > 0
    for direction, scores, hits in (
        ("image_to_text", similarity, correct),
        ("text_to_image", similarity.T, correct.T),
    ):
        ranks = _brute_force_ranks(scores, hits)
        assert metrics[f"{direction}_mean_rank"] == pytest.approx(ranks.mean())
        assert metrics[f"{direction}_median_rank"] == np.floor(np.median(ranks))
        for k in (1, 5, 10):
            assert metrics[f"{direction}_R@{k}"] == pytest.approx(np.mean(ranks <= k))
    if not with_ids:
        assert metrics["random_R@10"] == pytest.approx(10 / 40)
    # A random ranking's expected Recall@K, by simulation.
    shuffled = [
        retrieval_metrics(
            rng.normal(size=(40, 6)),
            rng.normal(size=(40, 6)),
            image_ids,
            text_ids,
            ranking_ks=(),  # Recall@K only: mAP and nDCG are not simulated
        )["image_to_text_R@5"]
        for _ in range(300)
    ]
    assert np.mean(shuffled) == pytest.approx(metrics["random_R@5"], abs=0.02)
    # Better than random on these correlated embeddings, and not perfect.
    assert 10 / 40 < metrics["text_to_image_R@10"] < 1


def test_retrieval_metrics_hand_computed_and_checked():
    from mmzoo.metrics import retrieval_metrics

    image = np.eye(3)
    text = np.eye(3)[[0, 2, 1]]
    metrics = retrieval_metrics(image, text)
    # Image 0 finds text 0 first; images 1 and 2 find the other's text, and
    # their own ties with text 0, which counts against them: rank 3.
    assert metrics["image_to_text_R@1"] == pytest.approx(1 / 3)
    assert metrics["image_to_text_mean_rank"] == pytest.approx(7 / 3)
    # With ids saying images 1 and 2 are one image, every query is right.
    same = retrieval_metrics(image, text, image_ids=[0, 1, 1])
    assert same["image_to_text_R@1"] == same["text_to_image_R@1"] == 1.0
    with pytest.raises(ValueError, match="one row per pair"):
        retrieval_metrics(np.eye(3), np.eye(2))
    with pytest.raises(ValueError, match=r"`image_ids` must hold one id per row \(3\)"):
        retrieval_metrics(image, text, image_ids=[0, 1])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.full((2, 2), np.nan), np.eye(2))


def test_map_and_ndcg_match_a_direct_computation_on_known_rankings():
    from mmzoo.metrics import _ranking_metrics

    # Query 0: right items ranked 1 and 3; query 1: ranked 5; query 2: a
    # right item tied with a wrong one at the top (the tie counts against it).
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.1, 0.0],
            [0.5, 0.4, 0.3, 0.2, 0.1],
            [0.9, 0.9, 0.1, 0.0, -0.1],
        ]
    )
    hits = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 0, 1], [1, 0, 0, 0, 0]], dtype=bool)
    metrics = _ranking_metrics("q", scores, hits, ks=(2, 5))
    # By hand: AP@K = sum of precision@i at right ranks i <= K over
    # min(K, right items); nDCG@K = DCG / ideal DCG, gain 1, 1/log2(1 + i).
    ap2 = [1 / 2, 0, (1 / 2) / 1]
    ap5 = [(1 + 2 / 3) / 2, (1 / 5) / 1, (1 / 2) / 1]
    ideal2 = [1 + 1 / np.log2(3), 1, 1]
    ndcg2 = [1 / ideal2[0], 0, (1 / np.log2(3)) / 1]
    ndcg5 = [(1 + 1 / np.log2(4)) / ideal2[0], (1 / np.log2(6)) / 1, ndcg2[2]]
    assert metrics["q_mAP@2"] == pytest.approx(np.mean(ap2), abs=1e-6)
    assert metrics["q_mAP@5"] == pytest.approx(np.mean(ap5), abs=1e-6)
    assert metrics["q_nDCG@2"] == pytest.approx(np.mean(ndcg2), abs=1e-6)
    assert metrics["q_nDCG@5"] == pytest.approx(np.mean(ndcg5), abs=1e-6)


def test_matching_threshold_is_the_best_on_the_pairs():
    from mmzoo.metrics import matching_metrics

    rng = np.random.default_rng(0)
    image = rng.normal(size=(60, 8))
    text = image + rng.normal(scale=1.2, size=(60, 8))
    ids = np.arange(60) // 2  # two rows per image
    metrics = matching_metrics(image, text, ids, ids, seed=3)
    assert metrics["match_pairs"] == 120
    # By brute force over every threshold, on the same negatives.
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    image, text = unit(image), unit(text)
    draw = np.random.default_rng(3)
    negatives = [
        image[row] @ text[draw.choice(np.flatnonzero(ids != ids[row]))]
        for row in range(60)
    ]
    scores = np.concatenate([np.sum(image * text, axis=1), negatives])
    truth = np.arange(120) < 60
    best = max(np.mean((scores >= t) == truth) for t in [*scores, np.inf])
    assert metrics["match_accuracy"] == pytest.approx(best)
    accuracy = np.mean((scores >= metrics["match_threshold"]) == truth)
    assert accuracy == pytest.approx(best) and 0.5 < best < 1
    # Perfectly separated pairs: every pair right.
    assert matching_metrics(np.eye(4), np.eye(4))["match_accuracy"] == 1.0
    with pytest.raises(ValueError, match="no mismatched"):
        matching_metrics(np.ones((3, 2)), np.ones((3, 2)), [0, 0, 0])
