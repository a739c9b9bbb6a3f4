"""A dual encoder on easy-VQA captions: Recall@K against a random ranking.

easy-VQA (the `easy-vqa` package, no network) asks questions about 4,000
training and 1,000 test images, each one shape of one colour. Each image's
answers give it a caption, "a blue circle": the colour from "what color is
the shape?", the shape from "what shape ...?" or "what is the <colour>
shape?". A dual encoder (small_cnn at 64 px, bag of words) is trained with
`mmzoo.build_dual_encoder` on the training images and their captions, with
the caption as both ids (many images share a caption, so one image's
caption is a right answer for another's), then every test image queries the
1,000 test captions and every caption the 1,000 images:
`mmzoo.metrics.retrieval_metrics`, against what a random ranking scores.
BatchNorm's moving statistics are recalibrated on the training images
first (`mmzoo.layers.recalibrate_batch_norm`).

    python -m benchmarks.dual_encoder_easy_vqa --out DIR [--loss clip]
"""

import argparse
import collections
import json
import os
import platform
import time

COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SHAPES = ("circle", "rectangle", "triangle")


def captions(questions, answers, image_ids):
    """`{image id: "a <colour> <shape>"}` from each image's answers.

    The colour and the shape are read from "what" questions and their
    answers ("what is the blue shape?": rectangle), and from yes/no
    questions naming one ("is there a red shape?": yes; "is there not a
    circle?": no).
    """
    found = collections.defaultdict(dict)
    for question, answer, image in zip(questions, answers, image_ids, strict=True):
        words = question.rstrip("?").split()
        for kind, names in (("colour", COLORS), ("shape", SHAPES)):
            if answer in names:
                found[image][kind] = answer
                continue
            named = [word for word in words if word in names]
            if answer in ("yes", "no"):
                present = (answer == "yes") != ("not" in words)
            else:  # "what is the blue shape?": the question names it
                present = words[0] == "what"
            if len(named) == 1 and present:
                found[image][kind] = named[0]
    return {
        image: f"a {parts['colour']} {parts['shape']}"
        for image, parts in found.items()
        if len(parts) == 2
    }


def load(split, image_size):
    """Images, captions and caption ids of one split (images with both)."""
    import easy_vqa
    import numpy as np

    from mmzoo.data.images import prepare_image

    if split == "train":
        questions = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    else:
        questions = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    text = captions(*questions)
    ids = sorted(text)
    images = np.concatenate([prepare_image(paths[i], image_size) for i in ids])
    texts = [text[i] for i in ids]
    return images, texts, len(paths)


def run(loss="clip", epochs=10, image_size=64, seed=0):
    import keras
    import numpy as np

    import mmzoo
    from mmzoo.data import WordTokenizer
    from mmzoo.layers import recalibrate_batch_norm
    from mmzoo.metrics import retrieval_metrics

    started = time.perf_counter()
    train_images, train_texts, train_total = load("train", image_size)
    test_images, test_texts, test_total = load("test", image_size)
    tokenizer = WordTokenizer.fit(train_texts, max_tokens=4)
    vocabulary = sorted(set(train_texts) | set(test_texts))
    caption_id = {caption: index for index, caption in enumerate(vocabulary)}

    def inputs(images, texts):
        import tensorflow as tf

        return {"image": images, "tokens": tokenizer(tf.constant(texts)).numpy()}

    def ids(texts):
        values = np.array([caption_id[text] for text in texts])
        return {"image_ids": values, "text_ids": values}

    keras.utils.set_random_seed(seed)
    model = mmzoo.build_dual_encoder(
        image_tower="small_cnn",
        text_tower="bow",
        image_size=image_size,
        max_tokens=4,
        vocab_size=tokenizer.vocab_size,
        image_filters=(16, 32, 64),
        embedding_dim=32,
        embed_dim=64,
        loss=loss,
        learning_rate=2e-3,
    )
    train_started = time.perf_counter()
    history = model.fit(
        inputs(train_images, train_texts),
        ids(train_texts),
        batch_size=64,
        epochs=epochs,
        verbose=0,
    )
    train_seconds = time.perf_counter() - train_started
    # BatchNorm's moving statistics lag the training; at inference they skew
    # the cosine similarities (see `recalibrate_batch_norm`).
    recalibrate_batch_norm(model, inputs(train_images, train_texts))
    out = model.predict(inputs(test_images, test_texts), batch_size=256, verbose=0)
    test_ids = ids(test_texts)["image_ids"]
    metrics = retrieval_metrics(
        out["image_embedding"], out["text_embedding"], test_ids, test_ids
    )
    counts = collections.Counter(test_texts)
    return {
        "loss": loss,
        "epochs": epochs,
        "image_size": image_size,
        "seed": seed,
        "train_images": len(train_texts),
        "train_images_without_caption": train_total - len(train_texts),
        "test_images": len(test_texts),
        "test_images_without_caption": test_total - len(test_texts),
        "distinct_test_captions": len(counts),
        "history": history.history["loss"],
        "metrics": metrics,
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; Python {platform.python_version()}, "
        f"Keras {keras.__version__}",
    }


def markdown(result):
    m = result["metrics"]
    lines = [
        "## A dual encoder on easy-VQA captions "
        "(`python -m benchmarks.dual_encoder_easy_vqa`)",
        "",
        f"small_cnn ({result['image_size']} px) + bag of words, "
        f"`loss={result['loss']!r}`, "
        f"{result['epochs']} epochs on {result['train_images']:,} training images "
        f"and their captions; {result['test_images']:,} test images, "
        f"{result['distinct_test_captions']} distinct captions (ids: a caption "
        "shared by several images is right for each of them).",
        "",
        "| direction | R@1 | R@5 | R@10 | median rank | random R@1 | random R@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for direction in ("image_to_text", "text_to_image"):
        lines.append(
            f"| {direction.replace('_', ' ')} | {m[f'{direction}_R@1']:.3f} | "
            f"{m[f'{direction}_R@5']:.3f} | {m[f'{direction}_R@10']:.3f} | "
            f"{m[f'{direction}_median_rank']:.0f} | {m['random_R@1']:.3f} | "
            f"{m['random_R@10']:.3f} |"
        )
    lines += [
        "",
        f"Training {result['train_seconds']:.0f} s, wall {result['wall_seconds']:.0f}"
        f" s; {result['machine']}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--loss", default="clip")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = run(args.loss, args.epochs, args.image_size, args.seed)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as file:
        json.dump(result, file, indent=2)
    with open(os.path.join(args.out, "results.md"), "w") as file:
        file.write(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
