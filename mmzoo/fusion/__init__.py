"""Fusion layers: a list of modality features in, fused features out.

All are written with `keras.ops` only and registered as Keras-serializable
under the package `mmzoo`. Every fusion layer of `mmzoo.registry.FUSIONS`
is imported here and exported by its class name, so a fusion registered
there is importable as `mmzoo.fusion.<Class>`, and loadable from a `.keras`
file by `keras.saving.load_model`, with no edit here.
"""

from mmzoo import registry
from mmzoo.fusion.base import Fusion
from mmzoo.fusion.cross_attention import CrossAttentionBlock

__all__ = ["CrossAttentionBlock", "Fusion"]
for _spec in registry.FUSIONS.values():
    if _spec.layer is not None:
        _layer = registry.resolve(_spec.layer)
        globals()[_layer.__name__] = _layer
        __all__.append(_layer.__name__)
__all__.sort()
del _spec, _layer
