"""Pretrained text towers: a keras-hub BERT-family encoder, a TF-Hub module.

Both import their libraries (keras_hub, tensorflow_hub, tensorflow) inside
the functions that need them: importing either pulls in TensorFlow, which
the rest of mmzoo must not require.
"""

import os

import keras
from keras import ops

from mmzoo.layers import MaskedPooling
from mmzoo.layers import PaddingMask

# keras-hub encoders whose vocabularies pad with id 0, as `tokens` does.
# (RoBERTa and XLM-R pad with 1; decoders such as GPT-2 are not encoders.)
_BERT_FAMILY = (
    "BertBackbone",
    "DistilBertBackbone",
    "AlbertBackbone",
    "ElectraBackbone",
)

# Strings the probe call sends through a TF-Hub module to learn its output
# width and check that it maps a batch of strings to a batch of vectors.
_PROBE_TEXTS = ("a short probe sentence", "")


def bert_tower(preset, trainable=True):
    """A pretrained BERT-family encoder from a keras-hub preset.

    The encoder is keras-hub's own backbone (`keras_hub.models.Backbone`),
    loaded with its weights. Its pooled output is the mean of the sequence
    output over real tokens (as sentence-transformers pool), not BERT's
    `[CLS]` dense layer, so padding never changes it.

    Args:
        preset: a keras-hub preset: a local directory written by
            `backbone.save_to_preset(...)`, a Hugging Face Transformers BERT
            directory (`config.json` + `model.safetensors`), or, when the
            network is reachable, a handle such as `"bert_tiny_en_uncased"`
            or `"hf://..."`. It must hold a BERT, DistilBERT, ALBERT or
            ELECTRA backbone: their vocabularies pad with id 0.
        trainable: `False` freezes the encoder.

    Returns:
        A functional `keras.Model` named `"text_tower"` with input `tokens`
        (batch, L; int32 WordPiece ids from the preset's vocabulary, 0 is
        padding) and outputs `{"sequence": (batch, L, hidden),
        "pooled": (batch, hidden)}`.

    Example:

    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=32)
    >>> backbone.save_to_preset("tiny_bert")
    >>> tower = bert_tower("tiny_bert")
    >>> tower.output["pooled"].shape
    (None, 16)
    """
    backbone = _load_backbone(preset)
    backbone_inputs = backbone.input if isinstance(backbone.input, dict) else {}

    encoder = backbone
    if isinstance(backbone.output, dict):
        # Keep only the graph up to the sequence output. BERT's `[CLS]`
        # pooler (`pooled_output`) is unused here, and its weights, left
        # in, would get no gradients: a warning at every `fit` and optimizer
        # slots for nothing. The layers, and their pretrained weights, are
        # keras-hub's own.
        encoder = keras.Model(
            backbone.input, backbone.output["sequence_output"], name=backbone.name
        )

    # === Functional Model ===
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    mask = PaddingMask(name="padding_mask")(tokens)
    inputs = {"token_ids": tokens, "padding_mask": mask}
    if "segment_ids" in backbone_inputs:
        # One text per example: every token is in segment 0. (DistilBERT-like
        # backbones have no segment embedding and take no segment ids.)
        inputs["segment_ids"] = ops.zeros_like(tokens)
    sequence = encoder(inputs)
    pooled = MaskedPooling("mean", name="pool")(sequence, mask=mask)
    tower = keras.Model(
        tokens, {"sequence": sequence, "pooled": pooled}, name="text_tower"
    )
    tower.trainable = trainable
    return tower


def _load_backbone(preset):
    if preset is None:
        raise ValueError(
            "text_tower='bert' needs `text_preset`: a keras-hub preset "
            "directory (written by `backbone.save_to_preset(...)`, or a "
            "Hugging Face BERT directory with config.json and "
            "model.safetensors), or a keras-hub preset handle when the "
            "network is reachable. Received: text_preset=None"
        )
    import keras_hub

    preset = os.fspath(preset)
    # A bare name is a built-in preset only if keras-hub knows it; anything
    # else without a scheme ("hf://", "kaggle://") is a local directory.
    is_handle = "://" in preset or preset in keras_hub.models.Backbone.presets
    if not is_handle:
        if not os.path.isdir(preset):
            raise FileNotFoundError(
                f"text_preset={preset!r} is neither an existing directory nor "
                "a keras-hub preset handle. Pass a directory written by "
                "`backbone.save_to_preset(...)` or a Hugging Face BERT "
                "directory (config.json + model.safetensors)."
            )
        if not os.path.isfile(os.path.join(preset, "config.json")):
            raise ValueError(
                f"The directory {preset!r} is not a keras-hub or Hugging Face "
                "preset: it has no config.json. Expected the files written "
                "by `backbone.save_to_preset(...)` (config.json, "
                "model.weights.h5) or a Hugging Face BERT model "
                "(config.json, model.safetensors)."
            )
    try:
        backbone = keras_hub.models.Backbone.from_preset(preset)
    except (ValueError, KeyError, ImportError) as error:
        raise ValueError(
            f"Could not load a keras-hub backbone from text_preset={preset!r}: {error}"
        ) from error
    except OSError as error:
        raise OSError(
            f"Could not read or download the keras-hub preset {preset!r}: "
            f"{error}. Without network access, pass a local preset directory."
        ) from error
    family = tuple(
        getattr(keras_hub.models, name)
        for name in _BERT_FAMILY
        if hasattr(keras_hub.models, name)
    )
    if not isinstance(backbone, family):
        raise ValueError(
            f"The keras-hub preset {preset!r} holds a "
            f"{type(backbone).__name__}; text_tower='bert' takes a BERT-family "
            f"encoder ({', '.join(_BERT_FAMILY)}), whose WordPiece or "
            "SentencePiece vocabulary pads with id 0, the padding id of the "
            "`tokens` input."
        )
    return backbone


def hub_tower(hub_handle, trainable=True):
    """A TF-Hub text-embedding module as a text tower: strings in, vectors out.

    Args:
        hub_handle: a TF-Hub module handle (URL) or the path of a local
            SavedModel whose call maps a batch of strings `(batch,)` to
            vectors `(batch, D)`.
        trainable: whether the module's trainable variables are fine-tuned.

    Returns:
        A functional `keras.Model` named `"text_tower"` with input `text`
        (batch,; strings) and the single output `{"pooled": (batch, D)}`.

    Example:

    >>> tower = hub_tower("path/to/text_embedding_savedmodel")
    >>> tower(tf.constant(["a photo of a cat"]))["pooled"].shape
    TensorShape([1, 50])
    """
    layer = HubTextEmbedding(hub_handle, trainable=trainable, name="hub_embedding")
    text = keras.Input((), dtype="string", name="text")
    return keras.Model(text, {"pooled": layer(text)}, name="text_tower")


@keras.saving.register_keras_serializable(package="mmzoo")
class HubTextEmbedding(keras.layers.Layer):
    """A TF-Hub text-embedding module (a SavedModel) as a Keras 3 layer.

    `tensorflow_hub.KerasLayer` needs tf-keras and cannot sit inside a Keras 3
    model; this layer loads the module with `hub.load` and calls it. The
    module's own variables become the layer's weights, so `model.fit`
    fine-tunes the module itself (see `_adopt_module_variables`).
    TensorFlow backend only.

    Reloading a `.keras` file that holds this layer loads and runs the
    SavedModel named by `handle`, code from outside the file, so, like
    `keras.layers.TFSMLayer`, it is refused in Keras safe mode.

    Args:
        handle: a TF-Hub handle or local SavedModel path. Its call must map
            a string tensor `(batch,)` to a float tensor `(batch, D)`.
        trainable: fine-tune the module's trainable variables.

    Call arguments:
        texts: `(batch,)` strings.
        training: passed on to modules whose call takes `training`.

    Example:

    >>> layer = HubTextEmbedding("path/to/text_embedding_savedmodel")
    >>> layer(tf.constant(["a cat", "a dog"])).shape
    TensorShape([2, 50])
    """

    def __init__(self, handle, trainable=True, **kwargs):
        if keras.backend.backend() != "tensorflow":
            raise NotImplementedError(
                "HubTextEmbedding (text_tower='hub') runs a TensorFlow "
                "SavedModel, so it needs the TensorFlow backend. Received: "
                f"keras.backend.backend()={keras.backend.backend()!r}; set "
                "KERAS_BACKEND=tensorflow."
            )
        super().__init__(trainable=trainable, **kwargs)
        if handle is None:
            raise ValueError(
                "text_tower='hub' needs `hub_handle`: a TF-Hub text-embedding "
                "module handle or the path of a local SavedModel. Received: "
                "hub_handle=None"
            )
        self.handle = os.fspath(handle)
        self._module = _load_hub_module(self.handle)
        self._accepts_training, self.output_dim = self._probe()
        self._adopt_module_variables()
        self.built = True

    def _probe(self):
        import tensorflow as tf

        probe = tf.constant(_PROBE_TEXTS)
        if not callable(self._module):
            raise ValueError(
                f"The TF-Hub module {self.handle!r} is not callable: a text "
                "embedding module maps a batch of strings to vectors when "
                "called (TF2 SavedModel, not a TF1 hub.Module)."
            )
        accepts_training = True
        try:
            result = self._module(probe, training=False)
        except (TypeError, ValueError, tf.errors.OpError):
            accepts_training = False
            try:
                result = self._module(probe)
            except (TypeError, ValueError, tf.errors.OpError) as error:
                raise ValueError(
                    f"The TF-Hub module {self.handle!r} does not map a batch of "
                    f"strings (shape (batch,)) to vectors: calling it on "
                    f"{list(_PROBE_TEXTS)} failed with: {error}"
                ) from error
        if (
            not isinstance(result, tf.Tensor)
            or result.shape.rank != 2
            or not result.dtype.is_floating
            or result.shape[0] != len(_PROBE_TEXTS)
            or result.shape[1] is None
        ):
            got = (
                f"a {result.dtype.name} tensor of shape {result.shape}"
                if isinstance(result, tf.Tensor)
                else f"a {type(result).__name__}"
            )
            raise ValueError(
                f"The TF-Hub module {self.handle!r} must map a batch of "
                f"strings (batch,) to a 2-D float tensor (batch, D); given "
                f"{len(_PROBE_TEXTS)} strings it returned {got}."
            )
        return accepts_training, int(result.shape[1])

    def _adopt_module_variables(self):
        """Make the module's own tf.Variables the layer's Keras weights.

        `keras.layers.TFSMLayer` copies each SavedModel variable into a new
        Keras variable: an optimizer then updates the copies while the
        module keeps reading its originals, so fine-tuning changes nothing.
        Here each Keras variable is created *from* the module's tf.Variable;
        on the TensorFlow backend that adopts the tf.Variable itself as the
        Keras variable's storage (checked below, so a Keras version that
        copied instead would fail loudly). Gradients of the module's reads
        then reach the Keras variable, optimizer updates land in the module,
        and `.keras` weight loading writes into the freshly loaded module.
        """
        import tensorflow as tf

        trainable, every = _module_variables(self._module, self._accepts_training)
        trainable_ids = {id(variable) for variable in trainable}
        # Track in the module's order, split by the *module's* trainability
        # (not the layer's), so the weights' order in a `.keras` file is the
        # same whether the layer was saved trainable or frozen.
        ordered = list(trainable) + [v for v in every if id(v) not in trainable_ids]
        for index, module_variable in enumerate(ordered):
            name = module_variable.name.split(":")[0].replace("/", "_")
            with tf.init_scope(), keras.name_scope(self.name):
                variable = keras.Variable(
                    module_variable,
                    trainable=id(module_variable) in trainable_ids,
                    name=f"{index}_{name}",
                )
            if variable.value is not module_variable:
                raise RuntimeError(
                    "This Keras version copies a tf.Variable given as a "
                    "Keras variable's initial value instead of adopting it, "
                    "so fine-tuning the TF-Hub module "
                    f"{self.handle!r} would train a copy. Use trainable=False."
                )
            self._track_variable(variable)

    def call(self, texts, training=None):
        if self._accepts_training:
            vectors = self._module(texts, training=bool(training))
        else:
            vectors = self._module(texts)
        return ops.cast(vectors, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def compute_output_spec(self, texts, training=None):
        return keras.KerasTensor((texts.shape[0], self.output_dim), self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "handle": self.handle}

    @classmethod
    def from_config(cls, config):
        # Keras exposes the ambient safe mode only through this private
        # module (TFSMLayer.from_config reads it the same way). Outside any
        # loading call it is None, which counts as safe.
        from keras.src.saving import serialization_lib

        if serialization_lib.in_safe_mode() is not False:
            raise ValueError(
                "Refusing to deserialize a HubTextEmbedding layer in Keras safe "
                f"mode: it would load and run the SavedModel {config.get('handle')!r}"
                ", graph code from outside the .keras file. If you trust that "
                "module and the file, load with keras.saving.load_model(..., "
                "safe_mode=False) or call "
                "keras.config.enable_unsafe_deserialization() first."
            )
        return cls(**config)


def _load_hub_module(handle):
    import tensorflow_hub as hub

    is_remote = "://" in handle or handle.startswith(("http:", "https:"))
    if not is_remote and not os.path.exists(handle):
        raise FileNotFoundError(
            f"hub_handle={handle!r} is neither a TF-Hub URL nor an existing "
            "path: no SavedModel found there."
        )
    try:
        return hub.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"Could not load a TF-Hub SavedModel from hub_handle={handle!r}: {error}"
        ) from error


def _module_variables(module, accepts_training):
    """The module's (trainable, all) variables, in a fixed order.

    Reusable TF-Hub SavedModels list them as `trainable_variables` and
    `variables`. A plain `tf.saved_model.save`d module does not, so take the
    variables its call function captures (not every variable the module
    holds: ones the call never reads would get no gradients), or, if that
    function cannot be looked up, every variable reachable from the module.
    """
    import tensorflow as tf

    every = list(getattr(module, "variables", None) or [])
    if every:
        trainable = list(getattr(module, "trainable_variables", None) or [])
    else:
        kwargs = {"training": False} if accepts_training else {}
        try:
            concrete = module.__call__.get_concrete_function(
                tf.TensorSpec([None], tf.string), **kwargs
            )
            every = list(concrete.variables)
        except (AttributeError, TypeError, ValueError):
            every = [
                node
                for node in tf.train.TrackableView(module).descendants()
                if isinstance(node, tf.Variable)
            ]
        trainable = [variable for variable in every if variable.trainable]
    unique = list({id(variable): variable for variable in trainable + every}.values())
    trainable_ids = {id(variable) for variable in trainable}
    return [v for v in unique if id(v) in trainable_ids], unique
