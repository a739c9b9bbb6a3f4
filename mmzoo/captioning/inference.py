"""Captions from a trained captioner: compiled decoding, datasets, files.

`compiled_generate` wraps `mmzoo.captioning.decoding.generate` in one
`tf.function` per option set (the decoding loop becomes one graph, as in
the SavedModel); `dataset_captions` decodes an evaluation dataset for
`Task.evaluate`; `caption_files` is `mmzoo caption`.
"""

import numpy as np

from mmzoo.captioning.vocabulary import caption_text


def compiled_generate(model, **options):
    """`images -> (ids, scores)` as one TensorFlow graph, kept on the model
    (one per option set)."""
    import tensorflow as tf

    from mmzoo.captioning.decoding import generate

    key = tuple(sorted(options.items()))
    functions = model.__dict__.setdefault("_compiled_generate", {})
    if key not in functions:
        functions[key] = tf.function(
            lambda images: generate(model, images, **options), reduce_retracing=True
        )
    return functions[key]


def vocabulary_of(model, tokenizer=None):
    """The caption vocabulary: the tokenizer's, else the model's own."""
    if tokenizer is not None:
        return tokenizer.vocabulary
    vocabulary = getattr(model, "vocabulary", None)
    if vocabulary is None:
        raise ValueError(
            "Decoding to text needs the caption vocabulary: pass the run's "
            "tokenizer (mmzoo.load_run(...).tokenizer)."
        )
    return vocabulary


def _hypotheses(model, images, beam_width=1, **options):
    """NumPy `(ids (batch, beams, T), scores (batch, beams))` of a batch of
    pixels: greedy decoding as a beam of one."""
    function = compiled_generate(model, beam_width=beam_width, **options)
    ids, scores = function(np.asarray(images, "float32"))
    ids, scores = np.asarray(ids), np.asarray(scores)
    if ids.ndim == 2:
        ids, scores = ids[:, None], scores[:, None]
    return ids, scores


def decode_batch(model, images, vocabulary, beam_width=1, **options):
    """Captions (texts) and scores of a batch of pixels; with `beam_width >
    1`, the best hypothesis of each image."""
    ids, scores = _hypotheses(model, images, beam_width, **options)
    return [caption_text(row, vocabulary) for row in ids[:, 0]], scores[:, 0]


def dataset_captions(model, dataset, beam_width=1, tokenizer=None):
    """`(targets, {"captions", "scores"})` of an evaluation dataset (batches
    of `(features, targets)`, rows in order), one caption per row."""
    import tensorflow as tf

    vocabulary = vocabulary_of(model, tokenizer)
    captions, scores, targets = [], [], []
    for features, target in dataset:
        texts, batch_scores = decode_batch(
            model, features["image"], vocabulary, beam_width
        )
        captions += texts
        scores.append(batch_scores)
        targets.append(target)
    targets = tf.nest.map_structure(
        lambda *parts: np.concatenate([np.asarray(p) for p in parts]), *targets
    )
    targets["captions"] = [
        c.decode("utf-8") if isinstance(c, bytes) else c for c in targets["captions"]
    ]
    return targets, {"captions": captions, "scores": np.concatenate(scores)}


def caption_files(run, paths, beam_width=1, max_pixels=None):
    """Caption image files with a run: `[{"image", "captions": [{"caption",
    "score"}]}]`, `beam_width` hypotheses each, best first.

    Every image passes the guard of every image entry point
    (`mmzoo.data.images.prepare_image`).
    """
    from mmzoo.data.images import prepare_image
    from mmzoo.data.manifest import DEFAULT_MAX_PIXELS

    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    pixels = np.concatenate(
        [prepare_image(p, run.image_size, run.resize, limit) for p in paths]
    )
    ids, scores = _hypotheses(run.model, pixels, beam_width)
    vocabulary = run.tokenizer.vocabulary
    return [
        {
            "image": str(path),
            "captions": [
                {"caption": caption_text(row, vocabulary), "score": float(score)}
                for row, score in zip(ids[i], scores[i], strict=False)
            ],
        }
        for i, path in enumerate(paths)
    ]


def plot_examples(run, data, out, count=6, beam_width=1):
    """A PNG of `count` images of manifest `data` with the run's caption
    (and the first reference) under each; returns `out`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from mmzoo.data.images import prepare_image
    from mmzoo.data.sources import read_manifest

    manifest = read_manifest(data, run.config.get("columns"))
    chosen, references = [], {}
    for path, text in zip(manifest.images, manifest.texts, strict=True):
        if path is None:
            continue
        if path not in references and len(chosen) < count:
            chosen.append(path)
        references.setdefault(path, text)
    results = []
    for path in chosen:
        try:
            results.append(caption_files(run, [path], beam_width)[0])
        except ValueError:
            continue  # a bad image: left out of the picture
    figure = Figure(figsize=(2.6 * max(len(results), 1), 3.2))
    FigureCanvasAgg(figure)
    for index, result in enumerate(results):
        axes = figure.add_subplot(1, max(len(results), 1), index + 1)
        pixels = prepare_image(result["image"], run.image_size, run.resize)[0]
        axes.imshow(np.clip(pixels, 0, 255).astype("uint8"))
        axes.set_axis_off()
        axes.set_title(
            f"{result['captions'][0]['caption']}\n(ref: {references[result['image']]})",
            fontsize=7,
            wrap=True,
        )
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    return out
