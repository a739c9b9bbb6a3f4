"""The data preparation and the summary of benchmarks/modality_balance.py.

(Rasterising needs cairosvg, the `benchmarks` extra; the row selection,
the splits and the summary are tested here without it.)
"""

import pytest

from benchmarks import modality_balance
from benchmarks import openmoji


def _record(hexcode, group, tags="", openmoji_tags="", skintone=""):
    return {
        "hexcode": hexcode,
        "group": group,
        "tags": tags,
        "openmoji_tags": openmoji_tags,
        "skintone": skintone,
    }


def test_openmoji_rows_keep_one_drawing_per_emoji_with_keywords():
    records = [
        _record("1F600", "smileys-emotion", "face, grin", "happy, face"),
        _record("1F44B-1F3FB", "people-body", "hand, wave", skintone="1F3FB"),
        _record("1F3FB", "component", "light skin tone"),
        _record("E000", "extras-openmoji", "", ""),
        _record("1F431", "animals-nature", "", "cat"),
    ]
    rows, left_out = openmoji.rows_of(records)
    assert rows == [
        # Keywords from both fields, each once, in order.
        ("1F600", "face, grin, happy", "smileys-emotion"),
        ("1F431", "cat", "animals-nature"),
    ]
    assert left_out == {
        "skin-tone variant": 1,
        "component group": 1,
        "no keywords": 1,
    }


def test_openmoji_splits_divide_every_group():
    rows = [(f"{g}{i}", "text", g) for g in "abc" for i in range(20)]
    splits = openmoji.split_rows(rows, seed=1)
    assert {name: len(part) for name, part in splits.items()} == {
        "train": 42,
        "val": 9,
        "test": 9,
    }
    for part in splits.values():
        assert {row[2] for row in part} == set("abc")
    everything = [row for part in splits.values() for row in part]
    assert sorted(everything) == sorted(rows)
    assert openmoji.split_rows(rows, seed=1) == splits


def test_modality_balance_variants_and_summary():
    variants = modality_balance.variants()
    assert list(variants)[:2] == ["image_only", "text_only"]
    for fusion in modality_balance.FUSIONS:
        assert variants[fusion] == {"fusion": fusion}
        assert variants[f"{fusion}+balance"] == {
            "fusion": fusion,
            **modality_balance.BALANCED,
        }
    rows = [
        {
            "set": "s",
            "variant": "concat",
            "test_accuracy": a,
            "gain_over_best_unimodal": g,
        }
        for a, g in ((0.8, 0.1), (0.6, -0.1), (0.7, 0.0))
    ]
    (entry,) = modality_balance.summarise(rows)
    assert entry["accuracy_mean"] == pytest.approx(0.7)
    assert entry["accuracy_sd"] == pytest.approx(0.1)
    assert entry["gain_mean"] == pytest.approx(0.0)
    assert entry["gain_min"] == pytest.approx(-0.1)
    table = modality_balance.markdown(
        {
            "machine": "m",
            "seeds": [0, 1, 2],
            "balanced": modality_balance.BALANCED,
            "sets": ["s"],
            "summary": [entry],
        }
    )
    assert "| concat | 0.7000 ± 0.1000 | +0.0 ± 10.0 | -10.0 |" in table
