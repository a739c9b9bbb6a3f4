"""Image and text towers: each turns one modality into features.

The contract every tower keeps, so that any fusion takes any tower:

- an image tower maps `image` (batch, H, W, 3; raw 0-255 RGB) to pooled
  features (batch, D), or to a grid (batch, h, w, D) when `pooling=None`;
- a text tower maps `tokens` (batch, L; int32, 0 is padding) to a dict with
  `"sequence"` (batch, L, D) and `"pooled"` (batch, D). Padding never changes
  the real steps of `"sequence"` nor `"pooled"`.
"""

from mmzoo.towers.image import build_image_tower
from mmzoo.towers.text import build_text_tower

__all__ = ["build_image_tower", "build_text_tower"]
