"""`mmzoo demo --retrieval`: a dual encoder on easy-VQA captions.

Trains a dual encoder (`mmzoo train --task contrastive`, CLIP loss) on the
images of easy-VQA and captions built from their answers ("a blue circle",
`mmzoo.data.builtin.easy_vqa_captions`), then, on the test images:

- Recall@1/5/10 both ways against a random ranking;
- zero-shot classification, with no training on these labels, of each
  image's colour (8 classes) and shape (3): the class embeddings are label
  prompts averaged over templates (`mmzoo.retrieval.zero_shot_evaluate`).
  Those are 11 of easy-VQA's 13 answers; "yes" and "no" answer questions,
  they are not classes of an image;
- an index of the test images and a search by text;
- the SavedModel for TF Serving with the index (`embed_image`,
  `embed_text`, `search_by_text`, `search_by_image`).
"""

import json
import logging
import os
import shutil
import time

from mmzoo.apps.demo import head_manifest
from mmzoo.data.builtin import COLORS
from mmzoo.data.builtin import SHAPES
from mmzoo.data.builtin import easy_vqa_captions
from mmzoo.training import trainer

logger = logging.getLogger("mmzoo.demo")

SETTINGS = {
    "task": "contrastive",
    "loss": "clip",
    "image_size": 64,
    "max_tokens": 4,
    "batch_size": 64,
    "lr": 2e-3,
    "epochs": 10,
    "model": {"image_filters": [16, 32, 64], "embedding_dim": 32, "embed_dim": 64},
}
QUICK = {"epochs": 1, "image_size": 32, "model": {"image_filters": [8, 16]}}

# Prompts: a colour with each shape, a shape with each colour (prompt
# ensembling over the other attribute, in the captions' own words).
COLOUR_TEMPLATES = tuple(f"a {{label}} {shape}" for shape in SHAPES)
SHAPE_TEMPLATES = tuple(f"a {colour} {{label}}" for colour in COLORS)
QUERY = "a red circle"

# What counts as learnt: image-to-text Recall@1 at least 5x a random
# ranking's, and text-to-image Recall@10 at least 0.9.
TARGETS = {"image_to_text_R@1_over_random": 5.0, "text_to_image_R@10": 0.9}


def run_retrieval_demo(
    out="runs/demo_retrieval", quick=False, seed=0, savedmodels="savedmodels"
):
    """Train, evaluate, search and export the easy-VQA dual encoder.

    Args:
        out: the demo folder (replaced): the run, the index,
            `results.json` and `results.md`.
        quick: one epoch at 32 px on a slice of the data, to check the
            wiring (the targets are not expected).
        seed: the run's seed.
        savedmodels: TF Serving's model base folder (`None`: no export).

    Returns:
        The exit status: 0 when the targets are met (always with `quick`).
    """
    from mmzoo import retrieval
    from mmzoo.runs import load_run

    start = time.perf_counter()
    paths = easy_vqa_captions()
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    splits = {name: paths[name] for name in ("train", "val", "test")}
    zero_shot = {"colour": paths["colour_test"], "shape": paths["shape_test"]}
    if quick:
        data = os.path.join(out, "data")
        os.makedirs(data)
        sizes = {"train": 512, "val": 128, "test": 256}
        splits = {
            name: head_manifest(path, data, sizes[name])
            for name, path in splits.items()
        }
        zero_shot = {
            name: head_manifest(path, data, 256) for name, path in zero_shot.items()
        }
    settings = {**SETTINGS, **(QUICK if quick else {})}
    settings["model"] = {**SETTINGS["model"], **(QUICK["model"] if quick else {})}

    logger.info("Training the dual encoder (small_cnn + bow, CLIP loss)")
    result = trainer.train(
        **splits,
        image_tower="small_cnn",
        text_tower="bow",
        seed=seed,
        out=os.path.join(out, "run"),
        verbose=0 if quick else "auto",
        **settings,
    )
    run = load_run(os.path.join(out, "run"))
    summary = {
        "quick": quick,
        "train_seconds": round(result["train_seconds"], 1),
        "test": result["metrics"]["test"],
    }
    for name, templates in (("colour", COLOUR_TEMPLATES), ("shape", SHAPE_TEMPLATES)):
        metrics = retrieval.zero_shot_evaluate(run, zero_shot[name], templates)
        summary[f"zero_shot_{name}"] = {
            "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"],
            "classes": len(metrics["labels"]),
            "templates": list(templates),
        }

    index, _ = retrieval.build_index(run, splits["test"], "image")
    index.save(os.path.join(out, "index"))
    results = index.search(retrieval.embed_texts(run, [QUERY]), k=5)
    summary["search"] = {
        "query": QUERY,
        "results": [
            {"id": item["id"], "score": float(score), "captions": item["captions"]}
            for item, score in zip(results.items[0], results.scores[0], strict=True)
        ],
    }
    if savedmodels:
        from mmzoo.export.saved_model import export_saved_model

        logger.info("Exporting the encoders and the index for TF Serving")
        summary["saved_model"] = export_saved_model(
            run, base=savedmodels, name="easy_vqa_retrieval", index=index
        )
    test = summary["test"]
    summary["targets"] = {
        "image_to_text_R@1_over_random": test["image_to_text_R@1"] / test["random_R@1"],
        "text_to_image_R@10": test["text_to_image_R@10"],
    }
    summary["target_met"] = all(
        summary["targets"][key] >= value for key, value in TARGETS.items()
    )
    summary["total_seconds"] = round(time.perf_counter() - start, 1)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as file:
        json.dump(summary, file, indent=2)
    table = results_table(summary)
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as file:
        file.write(table + "\n")
    print(table)
    return 0 if quick or summary["target_met"] else 1


def results_table(summary):
    """Recall@K both ways, zero-shot accuracy and a search, as markdown."""
    test = summary["test"]
    lines = [
        f"Dual encoder on easy-VQA captions: {test['examples']:,} test images "
        f"(trained {summary['train_seconds']:.0f} s)",
        "",
        "| direction | R@1 | R@5 | R@10 | median rank |",
        "|---|---|---|---|---|",
    ]
    for direction, name in (
        ("image_to_text", "image -> text"),
        ("text_to_image", "text -> image"),
    ):
        recalls = " | ".join(f"{test[f'{direction}_R@{k}']:.4f}" for k in (1, 5, 10))
        rank = test[f"{direction}_median_rank"]
        lines.append(f"| {name} | {recalls} | {rank:g} |")
    lines.append(
        f"| random ranking | {test['random_R@1']:.4f} | {test['random_R@5']:.4f} | "
        f"{test['random_R@10']:.4f} | |"
    )
    lines += [
        "",
        "| zero-shot (no training on the labels) | classes | accuracy | macro-F1 |",
    ]
    lines.append("|---|---|---|---|")
    for name in ("colour", "shape"):
        row = summary[f"zero_shot_{name}"]
        lines.append(
            f"| {name} | {row['classes']} | {row['accuracy']:.4f} | "
            f"{row['macro_f1']:.4f} |"
        )
    search = summary["search"]
    lines += ["", f"Search {search['query']!r}, top {len(search['results'])}:"]
    for rank, item in enumerate(search["results"], start=1):
        lines.append(
            f"  {rank}. {item['score']:.4f}  {item['id']}  ({item['captions'][0]})"
        )
    if "saved_model" in summary:
        lines += ["", f"SavedModel with the index: {summary['saved_model']}"]
    verdict = "met" if summary["target_met"] else "NOT met"
    lines += [
        "",
        f"Targets (image -> text R@1 >= {TARGETS['image_to_text_R@1_over_random']:g}"
        f"x random, text -> image R@10 >= {TARGETS['text_to_image_R@10']}): "
        f"{verdict}.",
    ]
    return "\n".join(lines)
