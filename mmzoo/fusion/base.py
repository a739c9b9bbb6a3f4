"""The contract every fusion layer keeps."""

import keras


class Fusion(keras.layers.Layer):
    """Base class: a list of modality features in, fused features out.

    Subclasses set `input_rank` (2 for pooled `(batch, D)` features, 3 for
    `(batch, steps, D)` sequences, or a tuple with one rank per modality)
    and `min_modalities`, implement `build_fusion(input_shapes)` and
    `call(inputs, masks=None, training=None)`. A fusion whose
    `returns_weights` is true returns `(fused, modality_weights)`, the
    weights being `(batch, modalities)` in input order.

    To add a fusion to the zoo, subclass this in a module of its own and
    register it in `mmzoo.registry.FUSIONS` (see the README).
    """

    input_rank = 2
    min_modalities = 2
    max_modalities = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Masks travel explicitly in `masks`; accept (and drop) any Keras mask
        # attached to the inputs.
        self.supports_masking = True

    @property
    def returns_weights(self):
        return False

    def compute_mask(self, inputs, mask=None):
        return None

    def build(self, input_shape):
        shapes = _as_shape_list(input_shape)
        name = type(self).__name__
        count = len(shapes)
        too_many = self.max_modalities is not None and count > self.max_modalities
        if count < self.min_modalities or too_many:
            limit = self.max_modalities or "any number of"
            raise ValueError(
                f"{name} fuses between {self.min_modalities} and {limit} "
                f"modalities, given as a list. Received: {count} input(s) "
                f"with shapes {shapes}"
            )
        same_rank = isinstance(self.input_rank, int)
        ranks = (self.input_rank,) * count if same_rank else self.input_rank
        for index, (shape, rank) in enumerate(zip(shapes, ranks, strict=True)):
            if len(shape) != rank:
                kind = "(batch, features)" if rank == 2 else "(batch, steps, features)"
                which = "every modality" if same_rank else f"modality {index}"
                raise ValueError(
                    f"{name} expects {which} as {kind}. Received: "
                    f"input {index} of shape {shape}"
                )
        self.build_fusion(shapes)

    def build_fusion(self, input_shapes):
        pass


def _as_shape_list(input_shape):
    if isinstance(input_shape, dict):
        raise ValueError(
            "Fusion layers take a list of modality features, not a dict. "
            f"Received shapes: {input_shape}"
        )
    if (
        isinstance(input_shape, (list, tuple))
        and input_shape
        and isinstance(input_shape[0], (list, tuple))
    ):
        return [tuple(shape) for shape in input_shape]
    return [tuple(input_shape)]
