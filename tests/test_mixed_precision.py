"""Under a mixed policy the model computes in low precision; outputs stay
float32."""

import keras
import numpy as np
import pytest
from harness import TINY
from harness import tiny_batch

import mmzoo


@pytest.mark.parametrize(
    "policy, compute", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")]
)
@pytest.mark.parametrize(
    "fusion, text_tower",
    [
        ("gated", "bow"),
        ("cross_attention", "transformer"),
        ("bilinear", "cnn"),
        ("late", "bilstm"),
        ("modality_attention", "bow"),
    ],
)
def test_low_precision_compute_float32_outputs(policy, compute, fusion, text_tower):
    keras.config.set_dtype_policy(policy)
    model = mmzoo.build_model(
        fusion=fusion, text_tower=text_tower, late_combine="learned", **TINY
    )
    assert model.get_layer("fusion").compute_dtype == compute
    image_tower = model.get_layer("image_tower")
    assert (
        image_tower.get_layer("small_cnn").get_layer("block1_conv").compute_dtype
        == compute
    )
    inputs, _ = tiny_batch()
    outputs = model(inputs)
    for name, value in outputs.items():
        assert value.dtype == "float32", name
        assert np.all(np.isfinite(value))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains(policy):
    keras.config.set_dtype_policy(policy)
    model = mmzoo.build_model("small_cnn_bow_gated", **TINY)
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    inputs, labels = tiny_batch()
    before = model.get_layer("fusion").get_weights()[0].copy()
    history = model.fit(inputs, labels, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert not np.allclose(before, model.get_layer("fusion").get_weights()[0])
    assert model.get_layer("fusion").get_weights()[0].dtype == "float32"
