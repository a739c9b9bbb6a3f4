"""Image captioning: image in, a sentence out.

- `mmzoo.captioning.model`: `build_captioner`, the `Captioner` model and
  its `CaptionDecoder` (transformer decoder with a key/value cache).
- `mmzoo.captioning.decoding`: greedy, beam search and sampling, batched,
  in `keras.ops` (one graph, no Python in the loop).
- `mmzoo.captioning.vocabulary`: the word vocabulary with `[START]` and
  `[END]`, and ids back to text.
- `mmzoo.captioning.metrics`: BLEU-1..4 and CIDEr-D against every reference.
"""

from mmzoo.captioning.decoding import generate
from mmzoo.captioning.model import CaptionDecoder
from mmzoo.captioning.model import Captioner
from mmzoo.captioning.model import build_captioner

__all__ = ["CaptionDecoder", "Captioner", "build_captioner", "generate"]
