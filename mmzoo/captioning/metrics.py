"""BLEU-1..4 and CIDEr-D of captions against every reference of each image.

The scores are pycocoevalcap's (the COCO caption evaluation's own `Bleu`
and `Cider` scorers, which are pure Python; its METEOR and SPICE need
Java and are not used, nor its PTB tokenizer, also Java): captions and
references are split by mmzoo's word rule instead (lower case, punctuation
apart), the same on both sides. pycocoevalcap's `Cider` is CIDEr-D (the
Gaussian length penalty, sigma 6, and clipped counts), with document
frequencies from the references of the set being scored, as in COCO.
"""

import numpy as np

from mmzoo.captioning.vocabulary import reference_words


def caption_metrics(captions, references):
    """BLEU-1..4 (corpus level) and CIDEr-D of `captions`.

    Args:
        captions: one generated caption (text) per image.
        references: one list of reference captions (texts) per image.

    Returns:
        `{"images", "BLEU-1", ..., "BLEU-4", "CIDEr-D"}`.

    Example:

    >>> caption_metrics(["a red circle"], [["a red circle", "red circle"]])["BLEU-1"]
    0.9999999997500001
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if len(captions) != len(references):
        raise ValueError(
            "`captions` and `references` need one entry per image. Received: "
            f"{len(captions)} captions, {len(references)} reference lists"
        )
    if not captions:
        raise ValueError("No captions to score.")
    res = {i: [" ".join(reference_words(c)) or "."] for i, c in enumerate(captions)}
    gts = {
        i: [" ".join(reference_words(r)) for r in refs] or ["."]
        for i, refs in enumerate(references)
    }
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    metrics = {"images": len(captions)}
    metrics.update({f"BLEU-{n + 1}": float(bleu[n]) for n in range(4)})
    metrics["CIDEr-D"] = float(cider)
    return metrics


def group_references(image_ids, captions):
    """`(first row of each image, its references)` from per-row image ids
    and captions (a manifest's rows, several per image)."""
    image_ids = np.asarray(image_ids)
    first, references = {}, {}
    for row, (image, caption) in enumerate(
        zip(image_ids.tolist(), captions, strict=True)
    ):
        first.setdefault(image, row)
        references.setdefault(image, []).append(
            caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)
        )
    order = sorted(first, key=first.get)
    return [first[i] for i in order], [references[i] for i in order]
