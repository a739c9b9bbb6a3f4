"""Shared test helpers, so each model or layer test is a few lines.

Training steps here use an eager `tf.GradientTape`: tracing a `fit` step per
zoo combination would cost seconds each; `tests/test_training.py` covers
`fit` itself.
"""

import keras
import numpy as np

import mmzoo

# Sizes small enough to build and step every zoo combination quickly.
TINY = {
    "num_classes": 3,
    "image_size": 32,
    "max_tokens": 8,
    "vocab_size": 20,
    "embedding_dim": 8,
    "text_units": 8,
    "text_heads": 2,
    "text_layers": 1,
    "fusion_units": 8,
    "fusion_heads": 2,
    "head_units": (8,),
    "image_filters": (4, 8),
    "dropout": 0.0,
    "fusion_dropout": 0.0,
    "text_dropout": 0.0,
}


def tiny_batch(batch=4, image_size=32, max_tokens=8, vocab_size=20, seed=0):
    """A fixed batch of raw pixels, right-padded token ids and labels."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch, image_size, image_size, 3)).astype("float32")
    tokens = np.zeros((batch, max_tokens), "int32")
    for row in range(batch):
        length = 1 + row % max_tokens
        tokens[row, :length] = rng.integers(1, vocab_size, length)
    labels = np.arange(batch) % 3
    return {"image": images, "tokens": tokens}, labels


def main_output(model):
    return "predictions" if "predictions" in model.output else "probabilities"


def loss_of(model, inputs, labels, training=False):
    probabilities = model(inputs, training=training)[main_output(model)]
    loss = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
    return keras.ops.mean(loss)


def gradients(model, inputs, labels, training=False):
    """`(variable, gradient)` pairs of the loss on a batch."""
    import tensorflow as tf  # harness is also imported by JAX-backend runs

    with tf.GradientTape() as tape:
        loss = loss_of(model, inputs, labels, training=training)
    variables = model.trainable_variables
    return list(zip(variables, tape.gradient(loss, variables)))


def gradient_step(model, inputs, labels, learning_rate=0.01):
    """One SGD step on the fixed batch.

    The loss is taken in inference mode, the mode `assert_step_lowers_loss`
    measures it in (batch-norm statistics differ in training mode).
    """
    pairs = gradients(model, inputs, labels)
    keras.optimizers.SGD(learning_rate).apply_gradients(
        [(g, v) for v, g in pairs if g is not None]
    )


def assert_step_lowers_loss(model, inputs, labels):
    """A gradient step lowers the loss on a fixed batch.

    Backtracks over step sizes, as a line search would: the negative gradient
    is a descent direction whenever the gradients are right, but steep layers
    (a bilinear pooling's square root) need a small step to show it.
    """
    before = float(loss_of(model, inputs, labels))
    weights = model.get_weights()
    losses = []
    for learning_rate in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
        gradient_step(model, inputs, labels, learning_rate)
        losses.append(float(loss_of(model, inputs, labels)))
        if losses[-1] < before:
            return
        model.set_weights(weights)
    raise AssertionError(f"no gradient step lowered the loss {before}: {losses}")


def assert_outputs_close(first, second, atol=1e-6):
    assert sorted(first) == sorted(second)
    for key in first:
        np.testing.assert_allclose(
            np.asarray(first[key]), np.asarray(second[key]), atol=atol, err_msg=key
        )


def assert_saving_round_trip(model, inputs, tmp_path):
    """`model.save` then `mmzoo.load_model` gives the same outputs."""
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    restored = mmzoo.load_model(path)
    assert isinstance(restored, keras.Model)
    assert_outputs_close(
        model.predict(inputs, verbose=0), restored.predict(inputs, verbose=0)
    )
    return restored


def run_layer_config_test(layer, inputs, **call_kwargs):
    """`get_config` / `from_config` rebuilds a layer giving the same output."""
    first = layer(inputs, **call_kwargs)
    clone = type(layer).from_config(layer.get_config())
    clone(inputs, **call_kwargs)
    clone.set_weights(layer.get_weights())
    second = clone(inputs, **call_kwargs)
    for a, b in zip(keras.tree.flatten(first), keras.tree.flatten(second)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    return first
