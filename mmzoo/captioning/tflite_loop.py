"""Greedy and beam-search captioning with the TFLite files of a captioner.

This file is copied beside `encoder.tflite`, `decoder_step.tflite` and
`vocabulary.txt`; it needs NumPy and a TFLite interpreter (the
`ai-edge-litert` package, or `tf.lite`), not mmzoo, Keras or TensorFlow.

    from caption_loop import Captioner
    captioner = Captioner("exported_tflite/")
    captioner.caption(pixels)   # (size, size, 3) float32 0-255, as trained
    -> ("a red circle", -1.234)
    captioner.caption(pixels, beam_width=3)

The loop is `mmzoo.captioning.decoding.greedy` step for step: the encoder
gives the image cells' keys and values once, then each step feeds the last
token, its position and the key/value cache and takes the most likely
next token (never [PAD] or [START]) until [END] or the length limit.
"""

import json
import os

import numpy as np

PAD_ID, START_ID, END_ID = 0, 2, 3
SPECIAL = 4


def _interpreter(path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - TensorFlow's copy
        from tensorflow.lite import Interpreter
    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    return interpreter


def _by_name(details):
    # Signature runners name their tensors "serving_default_<name>:0" or
    # "StatefulPartitionedCall:<i>": the files are written with signatures.
    return {detail["name"]: detail for detail in details}


class Captioner:
    """The two TFLite files of a captioner and its vocabulary."""

    def __init__(self, folder):
        with open(os.path.join(folder, "caption_tflite.json")) as file:
            self.config = json.load(file)
        with open(os.path.join(folder, "vocabulary.txt"), encoding="utf-8") as file:
            self.vocabulary = file.read().split("\n")
        self.encoder = _interpreter(os.path.join(folder, "encoder.tflite"))
        self.step = _interpreter(os.path.join(folder, "decoder_step.tflite"))
        self.encode = self.encoder.get_signature_runner()
        self.decode = self.step.get_signature_runner()

    def caption_ids(self, pixels, max_length=None):
        """Token ids of the greedy caption of one image, and its score."""
        limit = self.config["max_length"] if max_length is None else max_length
        image = np.asarray(pixels, np.float32).reshape(1, *np.shape(pixels)[-3:])
        cross = self.encode(image=image)
        shape = self.config["cache_shape"]
        cache = (np.zeros(shape, np.float32), np.zeros(shape, np.float32))
        token, ids, score = START_ID, [], 0.0
        for position in range(limit):
            log_probs, cache = self._step(token, position, cache, cross)
            token = int(np.argmax(log_probs))
            score += float(log_probs[token])
            ids.append(token)
            if token == END_ID:
                break
        return ids, score

    def _step(self, token, position, cache, cross):
        """One decoder step: the next token's log-probabilities (never
        [PAD] or [START]) and the updated `(keys, values)` cache."""
        out = self.decode(
            token=np.array([token], np.int32),
            position=np.array(position, np.int32),
            cache_keys=cache[0],
            cache_values=cache[1],
            cross_keys=cross["cross_keys"],
            cross_values=cross["cross_values"],
        )
        logits = out["logits"][0].astype(np.float64)
        logits[[PAD_ID, START_ID]] = -1e9
        log_probs = logits - logits.max()
        log_probs = log_probs - np.log(np.exp(log_probs).sum())
        return log_probs, (out["cache_keys"], out["cache_values"])

    def beam_ids(self, pixels, beam_width=3, max_length=None, length_penalty=0.0):
        """The `beam_width` best hypotheses of one image, best first:
        `[(ids, score)]`, as `mmzoo.captioning.decoding.beam_search` ranks
        them (sum of log-probabilities over GNMT's length penalty)."""
        limit = self.config["max_length"] if max_length is None else max_length
        image = np.asarray(pixels, np.float32).reshape(1, *np.shape(pixels)[-3:])
        cross = self.encode(image=image)
        shape = self.config["cache_shape"]
        empty = (np.zeros(shape, np.float32), np.zeros(shape, np.float32))
        # A beam: (score, ids, finished, cache).
        beams = [(0.0, [], False, empty)]
        for position in range(limit):
            candidates = []
            for rank, (score, ids, finished, cache) in enumerate(beams):
                if finished:
                    candidates.append((score, rank, PAD_ID, None))
                    continue
                token = ids[-1] if ids else START_ID
                log_probs, new_cache = self._step(token, position, cache, cross)
                for token_id in np.argsort(-log_probs, kind="stable")[:beam_width]:
                    candidates.append(
                        (score + log_probs[token_id], rank, int(token_id), new_cache)
                    )
            # Best first; ties to the earlier beam and the smaller id.
            candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
            next_beams = []
            for score, rank, token_id, cache in candidates[:beam_width]:
                _, ids, finished, old_cache = beams[rank]
                if finished:
                    next_beams.append((score, ids, True, old_cache))
                else:
                    next_beams.append(
                        (score, ids + [token_id], token_id == END_ID, cache)
                    )
            beams = next_beams
        ranked = []
        for score, ids, _, _ in beams:
            penalty = ((5.0 + len(ids)) / 6.0) ** length_penalty
            ranked.append((ids, float(score / penalty)))
        return sorted(ranked, key=lambda r: -r[1])

    def words(self, ids):
        """Caption text of token ids (up to `[END]`)."""
        words = []
        for token_id in ids:
            if token_id == END_ID:
                break
            if token_id >= SPECIAL:
                words.append(self.vocabulary[token_id])
        return " ".join(words)

    def caption(self, pixels, max_length=None, beam_width=1, length_penalty=0.0):
        """`(caption text, score)` of one image (greedy, or the best of
        beam search for `beam_width > 1`)."""
        if beam_width > 1:
            best = self.beam_ids(pixels, beam_width, max_length, length_penalty)
            ids, score = best[0]
        else:
            ids, score = self.caption_ids(pixels, max_length)
        return self.words(ids), score
