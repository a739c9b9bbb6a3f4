"""Fusion layers: a list of modality features in, fused features out.

All are written with `keras.ops` only and registered as Keras-serializable
under the package `mmzoo`.
"""

from mmzoo.fusion.base import Fusion
from mmzoo.fusion.cross_attention import CrossAttentionFusion
from mmzoo.fusion.late import LateFusion
from mmzoo.fusion.pooled import BilinearFusion
from mmzoo.fusion.pooled import ConcatFusion
from mmzoo.fusion.pooled import GatedFusion
from mmzoo.fusion.pooled import ModalityAttentionFusion
from mmzoo.fusion.pooled import WeightedSumFusion

__all__ = [
    "Fusion",
    "BilinearFusion",
    "ConcatFusion",
    "CrossAttentionFusion",
    "GatedFusion",
    "LateFusion",
    "ModalityAttentionFusion",
    "WeightedSumFusion",
]
