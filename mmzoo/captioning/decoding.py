"""Batched caption decoding in `keras.ops`: greedy, beam search, sampling.

Every method runs a fixed number of steps (`max_length`) in
`keras.ops.fori_loop`, so the same code traces into one TensorFlow graph
(the exported SavedModel's `caption` signature runs it with no Python) and
runs under JAX. Finished captions keep emitting padding at no cost. Each
step feeds one token to `CaptionDecoder.step` with the key/value cache
(`use_cache=True`, the default), or re-runs the decoder on the whole
prefix (`use_cache=False`, for checking the cache and measuring it).

`[PAD]` and `[START]` are never generated. Scores are the sum of the
tokens' log-probabilities, `[END]` included; beam search ranks finished
hypotheses by that sum over GNMT's length penalty `((5 + length) / 6) **
length_penalty` (Wu et al. 2016), and `length_penalty=0` ranks by the sum.
Beam width 1 is greedy decoding, token for token.
"""

import keras
from keras import ops

from mmzoo.captioning.model import NEG_INF
from mmzoo.captioning.vocabulary import END_ID
from mmzoo.captioning.vocabulary import PAD_ID
from mmzoo.captioning.vocabulary import START_ID
from mmzoo.checks import check_choice

METHODS = ("greedy", "beam", "sample")


def generate(
    model,
    images,
    method=None,
    beam_width=1,
    max_length=None,
    length_penalty=0.0,
    temperature=1.0,
    top_k=0,
    seed=0,
    use_cache=True,
):
    """Caption a batch of images.

    Args:
        model: a `Captioner`.
        images: pixels `(batch, size, size, 3)`, 0-255.
        method: `"greedy"`, `"beam"` or `"sample"`; default beam search
            when `beam_width > 1`, else greedy.
        beam_width: hypotheses kept per image (beam search).
        max_length: the most tokens per caption, `[END]` included (at most
            the model's `max_length`, its default).
        length_penalty: GNMT's alpha (beam search).
        temperature, top_k: sampling: logits divided by `temperature`,
            drawn from the `top_k` most likely tokens (0: all).
        seed: sampling's seed (the same seed gives the same captions).
        use_cache: decode with the key/value cache.

    Returns:
        `(ids, scores)`: int32 `(batch, max_length)` token ids (`[END]`,
        then padding, after the words) and float32 `(batch,)` scores; for
        beam search `(batch, beam_width, max_length)` and `(batch,
        beam_width)`, best first.
    """
    if method is None:
        method = (
            "beam" if not isinstance(beam_width, int) or beam_width > 1 else "greedy"
        )
    check_choice("method", method, METHODS)
    limit = model.max_length if max_length is None else max_length
    if isinstance(limit, int) and not 1 <= limit <= model.max_length:
        raise ValueError(
            f"`max_length` must be an integer from 1 to the model's "
            f"{model.max_length}. Received: max_length={max_length!r}"
        )
    memory = model.encoder(images, training=False)
    decoder = model.decoder
    if method == "beam":
        if isinstance(beam_width, int) and beam_width < 1:
            raise ValueError(
                "`beam_width` must be a positive integer. Received: "
                f"beam_width={beam_width!r}"
            )
        return beam_search(
            decoder, memory, beam_width, limit, length_penalty, use_cache
        )
    if method == "sample":
        return sample(decoder, memory, limit, temperature, top_k, seed, use_cache)
    return greedy(decoder, memory, limit, use_cache)


def _allowed(logits):
    """Logits with `[PAD]` and `[START]` ruled out."""
    vocab = logits.shape[-1]
    banned = ops.one_hot(PAD_ID, vocab) + ops.one_hot(START_ID, vocab)
    return ops.where(ops.cast(banned, "bool"), NEG_INF, logits)


def _stepper(decoder, memory, use_cache):
    """`(step(token, position, state) -> (logits, state), initial state)`
    for a batch of `memory`, with or without the cache."""
    batch = ops.shape(memory)[0]
    if use_cache:
        cross = decoder.cross_cache(memory)

        def step(token, position, cache):
            return decoder.step(token, position, cache, cross)

        return step, decoder.empty_cache(batch)

    length = decoder.max_length

    def step_without_cache(token, position, prefix):
        # The whole prefix again, causally masked: what the cache saves.
        slot = ops.one_hot(position, length, dtype="int32")[None]
        prefix = prefix * (1 - slot) + ops.cast(token, "int32")[:, None] * slot
        logits = decoder(prefix, memory, training=False)
        picked = ops.one_hot(position, length, dtype="float32")[None, :, None]
        return ops.sum(logits * picked, axis=1), prefix

    return step_without_cache, ops.zeros((batch, length), "int32")


def greedy(decoder, memory, max_length, use_cache=True):
    """The most likely token at each step; see `generate`."""

    def pick(logits, position):
        log_probs = ops.log_softmax(_allowed(logits), axis=-1)
        return log_probs, ops.argmax(log_probs, axis=-1)

    return _token_by_token(decoder, memory, max_length, use_cache, pick)


def sample(
    decoder, memory, max_length, temperature=1.0, top_k=0, seed=0, use_cache=True
):
    """Tokens drawn from the (top-k, tempered) distribution; see `generate`.

    The noise is drawn before the loop (Gumbel-max: the arg max of
    `logits / temperature + Gumbel noise` is a draw from the softmax), so
    the loop holds no random state and a seed fixes the captions.
    """
    if not temperature > 0:
        raise ValueError(
            f"`temperature` must be above 0. Received: temperature={temperature!r}"
        )
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"`top_k` must be an integer >= 0. Received: top_k={top_k!r}")
    batch = ops.shape(memory)[0]
    vocab = decoder.vocab_size
    uniform = keras.random.uniform(
        (decoder.max_length, batch, vocab), minval=1e-9, maxval=1.0, seed=seed
    )
    gumbel = -ops.log(-ops.log(uniform))

    def pick(logits, position):
        logits = _allowed(logits) / temperature
        if top_k:
            kth = ops.top_k(logits, min(top_k, vocab))[0][:, -1:]
            logits = ops.where(logits < kth, NEG_INF, logits)
        log_probs = ops.log_softmax(logits, axis=-1)
        noise = ops.take(gumbel, position, axis=0)
        return log_probs, ops.argmax(log_probs + noise, axis=-1)

    return _token_by_token(decoder, memory, max_length, use_cache, pick)


def _token_by_token(decoder, memory, max_length, use_cache, pick):
    """One hypothesis per image, a token per step: greedy and sampling.

    `pick(logits, position)` returns the step's log-probabilities and the
    chosen token ids; a caption that has ended gets padding and no score.
    """
    batch = ops.shape(memory)[0]
    length = decoder.max_length
    step, state = _stepper(decoder, memory, use_cache)

    def body(position, carry):
        ids, token, finished, score, state = carry
        logits, state = step(token, position, state)
        log_probs, chosen = pick(logits, position)
        chosen = ops.where(finished, PAD_ID, ops.cast(chosen, "int32"))
        gained = ops.take_along_axis(log_probs, chosen[:, None], axis=-1)[:, 0]
        score = score + ops.where(finished, 0.0, gained)
        ids = ids + chosen[:, None] * ops.one_hot(position, length, dtype="int32")[None]
        finished = ops.logical_or(finished, ops.equal(chosen, END_ID))
        return ids, chosen, finished, score, state

    carry = (
        ops.zeros((batch, length), "int32"),
        ops.full((batch,), START_ID, "int32"),
        ops.zeros((batch,), "bool"),
        ops.zeros((batch,), "float32"),
        state,
    )
    ids, _, _, score, _ = ops.fori_loop(0, max_length, body, carry)
    return ids, score


def length_penalty_of(lengths, alpha):
    """GNMT's length penalty `((5 + length) / 6) ** alpha`."""
    return ops.power((5.0 + ops.cast(lengths, "float32")) / 6.0, alpha)


def beam_search(
    decoder, memory, beam_width, max_length, length_penalty=0.0, use_cache=True
):
    """The `beam_width` best-scoring hypotheses per image; see `generate`.

    `beam_width` may be a tensor (the SavedModel's argument): nothing here
    branches on it in Python.
    """
    batch = ops.shape(memory)[0]
    length = decoder.max_length
    vocab = decoder.vocab_size
    width = beam_width
    # Each image's memory once per beam: rows (image 0 beam 0, beam 1, ...).
    memory = ops.repeat(memory, width, axis=0)
    step, state = _stepper(decoder, memory, use_cache)
    batch_axis = 1 if use_cache else 0
    rows = ops.arange(batch, dtype="int32")[:, None] * width
    # All beams start identical: only the first may be extended at step 0.
    first = ops.cast(ops.equal(ops.arange(width), 0), "float32")
    scores = ops.broadcast_to((1.0 - first) * NEG_INF, (batch, width))
    # A finished beam may only add padding, at no cost.
    pad_only = ops.where(ops.cast(ops.one_hot(PAD_ID, vocab), "bool"), 0.0, NEG_INF)

    def body(position, carry):
        ids, token, finished, lengths, scores, state = carry
        logits, state = step(token, position, state)
        log_probs = ops.log_softmax(_allowed(logits), axis=-1)
        log_probs = ops.reshape(log_probs, (batch, width, vocab))
        log_probs = ops.where(finished[..., None], pad_only, log_probs)
        candidates = ops.reshape(scores[..., None] + log_probs, (batch, -1))
        scores, index = ops.top_k(candidates, width)
        index = ops.cast(index, "int32")
        beam = index // vocab
        chosen = index % vocab
        ids = ops.take_along_axis(ids, beam[..., None], axis=1)
        finished = ops.take_along_axis(finished, beam, axis=1)
        lengths = ops.take_along_axis(lengths, beam, axis=1)
        lengths = lengths + ops.cast(ops.logical_not(finished), "int32")
        flat = ops.reshape(beam + rows, (-1,))
        state = _take_rows(state, flat, batch_axis)
        ids = ids + chosen[..., None] * ops.one_hot(position, length, dtype="int32")
        finished = ops.logical_or(finished, ops.equal(chosen, END_ID))
        return ids, ops.reshape(chosen, (-1,)), finished, lengths, scores, state

    carry = (
        ops.zeros((batch, width, length), "int32"),
        ops.full((batch * width,), START_ID, "int32"),
        ops.zeros((batch, width), "bool"),
        ops.zeros((batch, width), "int32"),
        scores,
        state,
    )
    ids, _, _, lengths, scores, _ = ops.fori_loop(0, max_length, body, carry)
    ranked = scores / length_penalty_of(lengths, length_penalty)
    ranked, order = ops.top_k(ranked, width)
    ids = ops.take_along_axis(ids, ops.cast(order, "int32")[..., None], axis=1)
    return ids, ranked


def _take_rows(state, rows, axis):
    if isinstance(state, tuple):
        return tuple(ops.take(part, rows, axis=axis) for part in state)
    return ops.take(state, rows, axis=axis)
