"""A model trained with modality dropout still answers with one modality
missing (blank image, or all-padding text)."""

import keras
import numpy as np

import mmzoo

CLASSES = 3


def _redundant_data(count, seed):
    """Each modality alone tells the label: the image's brightness and the
    text's token both encode it."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, count)
    images = np.zeros((count, 32, 32, 3), "float32")
    images += (60.0 + 80.0 * labels)[:, None, None, None]
    images += rng.normal(0, 5, images.shape).astype("float32")
    tokens = np.zeros((count, 4), "int32")
    tokens[:, 0] = 1 + labels
    tokens[:, 1] = rng.integers(4, 10, count)  # a distractor word
    return {"image": images, "tokens": tokens}, labels


def _accuracy(model, inputs, labels):
    probabilities = model.predict(inputs, verbose=0)["probabilities"]
    return float(np.mean(np.argmax(probabilities, -1) == labels))


def _trained(modality_dropout):
    keras.utils.set_random_seed(1)
    model = mmzoo.build_model(
        fusion="concat",
        modality_dropout=modality_dropout,
        seed=1,
        num_classes=CLASSES,
        image_size=32,
        max_tokens=4,
        vocab_size=10,
        embedding_dim=8,
        image_filters=(8,),
        fusion_units=16,
        head_units=(16,),
        learning_rate=1e-2,
    )
    inputs, labels = _redundant_data(512, seed=0)
    model.fit(inputs, labels, epochs=30, batch_size=64, verbose=0)
    return model


def test_model_answers_with_a_missing_modality():
    test_inputs, test_labels = _redundant_data(256, seed=1)
    no_image = {**test_inputs, "image": np.zeros_like(test_inputs["image"])}
    no_text = {**test_inputs, "tokens": np.zeros_like(test_inputs["tokens"])}

    model = _trained(modality_dropout=0.5)
    model.get_layer("modality_dropout")  # the layer is in the graph
    assert _accuracy(model, test_inputs, test_labels) > 0.9
    assert _accuracy(model, no_image, test_labels) > 0.9
    assert _accuracy(model, no_text, test_labels) > 0.9
    # Inference is deterministic: the dropout is off outside training.
    first = model.predict(test_inputs, verbose=0)["probabilities"]
    second = model.predict(test_inputs, verbose=0)["probabilities"]
    np.testing.assert_array_equal(first, second)

    # The control: trained without modality dropout, the same model loses
    # accuracy when one modality is blank.
    control = _trained(modality_dropout=0.0)
    assert _accuracy(control, test_inputs, test_labels) > 0.9
    assert (
        min(
            _accuracy(control, no_image, test_labels),
            _accuracy(control, no_text, test_labels),
        )
        < 0.8
    )
