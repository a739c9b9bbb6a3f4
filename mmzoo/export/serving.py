"""Client helpers: requests for a model that `export_saved_model` wrote.

The `serving_default` signature of a classification run takes a batch of
encoded image files (`image_bytes`) and one text per image (`text`). A
contrastive run's SavedModel has the signatures `embed_image(image_bytes)`,
`embed_text(text)` and, exported with an index, `search_by_image(
image_bytes, k)` and `search_by_text(text, k)` (`ENCODER_SIGNATURES`). TF
Serving accepts them two ways:

- REST (port 8501): `rest_request` (and `encoder_rest_request`) builds the
  JSON body of `POST /v1/models/<name>:predict`. Binary strings travel as
  `{"b64": <base64>}`, TF Serving's convention for `DT_STRING` inputs.
- gRPC (port 8500): `grpc_request` (and `encoder_grpc_request`) builds the
  `PredictRequest` for `PredictionService.Predict`, the message warmup
  records hold too.

The REST helpers need nothing beyond the standard library; the gRPC ones
and `read_warmup_requests` import TensorFlow and the
`tensorflow-serving-api` protos when called.
"""

import base64
import os

from mmzoo.checks import check_choice

SIGNATURE_NAME = "serving_default"
IMAGE_INPUT = "image_bytes"
TEXT_INPUT = "text"
K_INPUT = "k"
IDS_OUTPUT = "ids"
# A dual encoder's signatures and their inputs; the searches exist in a
# SavedModel exported with an index.
ENCODER_SIGNATURES = {
    "embed_image": (IMAGE_INPUT,),
    "embed_text": (TEXT_INPUT,),
    "search_by_image": (IMAGE_INPUT, K_INPUT),
    "search_by_text": (TEXT_INPUT, K_INPUT),
}


def _image_bytes(image, where="image"):
    """The bytes of an image given as bytes or as a file path.

    `where` names the item in errors, e.g. "images[3]".
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if image is None:
        raise TypeError(
            f"{where} is None: each image must be the file's bytes or its path."
        )
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        try:
            os.fsencode(path)
        except UnicodeEncodeError as error:
            raise ValueError(
                f"{where}: the path {path!r} holds {_bad_character(error)}, which "
                "no file name can hold."
            ) from None
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Image not found: {path!r} ({where})")
        with open(path, "rb") as file:
            return file.read()
    raise TypeError(
        f"{where} must be the image file's bytes or its path. "
        f"Received: an image of type {type(image).__name__}"
    )


def _text_bytes(text, where="text"):
    """A text as UTF-8 bytes; `where` names the item in errors."""
    if isinstance(text, str):
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"{where} holds {_bad_character(error)}, which UTF-8 cannot "
                "encode (a str decoded with errors='surrogateescape', or half "
                "of a UTF-16 pair?)."
            ) from None
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text)
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{where} is not valid UTF-8: byte 0x{text[error.start]:02x} at "
                f"position {error.start} ({error.reason}). Decode it with the "
                "right encoding and pass a str."
            ) from None
        return text
    if text is None:
        raise TypeError(f"{where} is None: each text must be a str (or UTF-8 bytes).")
    raise TypeError(
        f"{where} must be a str (or UTF-8 bytes). Received: a text of type "
        f"{type(text).__name__}"
    )


def _bad_character(error):
    character = error.object[error.start]
    return f"the lone surrogate {character!r} at position {error.start}"


def _pairs(images, texts):
    """`(list of image bytes, list of text bytes)`, one text per image."""
    images, texts = _batch("images", images), _batch("texts", texts)
    if len(images) != len(texts):
        raise ValueError(
            "`images` and `texts` must have the same length (one text per "
            f"image). Received: {len(images)} images and {len(texts)} texts"
        )
    return _images(images), _texts(texts)


def _batch(argument, value):
    """`value` as a list, once it is shown to be one entry per example."""
    if value is None:
        raise TypeError(
            f"`{argument}` must be a list (one entry per example). Received: None"
        )
    if isinstance(value, (str, bytes, bytearray, memoryview, os.PathLike)):
        raise TypeError(
            f"`{argument}` must be a list (one entry per example). "
            f"Received: a single {type(value).__name__}; wrap it in a list."
        )
    try:
        return list(value)
    except TypeError as error:
        raise TypeError(
            f"`{argument}` must be a list (one entry per example): {error}"
        ) from None


def _images(images):
    return [_image_bytes(image, f"images[{i}]") for i, image in enumerate(images)]


def _texts(texts):
    return [_text_bytes(text, f"texts[{i}]") for i, text in enumerate(texts)]


def _b64(image):
    return {"b64": base64.b64encode(image).decode("ascii")}


def rest_request(images, texts, signature_name=SIGNATURE_NAME):
    """The JSON body of a TF Serving REST predict request.

    Args:
        images: a list of images, each the bytes of a JPEG, PNG, GIF or BMP
            file or the path of one.
        texts: a list of texts (`str`), one per image.
        signature_name: the signature to call.

    Returns:
        A dict, ready for `json.dumps`: `{"signature_name": ...,
        "instances": [{"image_bytes": {"b64": ...}, "text": ...}, ...]}`.

    Example:

    >>> body = rest_request(["cat.jpg"], ["what animal is this?"])
    >>> response = requests.post(
    ...     "http://localhost:8501/v1/models/gated:predict", json=body
    ... )
    >>> response.json()["predictions"][0]["top_k_labels"]
    ['cat', 'dog', 'bird', 'fish', 'horse']
    """
    images, texts = _pairs(images, texts)
    return {
        "signature_name": signature_name,
        "instances": [
            {
                IMAGE_INPUT: _b64(image),
                TEXT_INPUT: text.decode("utf-8"),
            }
            for image, text in zip(images, texts, strict=True)
        ],
    }


def grpc_request(
    images, texts, model_name, signature_name=SIGNATURE_NAME, version=None
):
    """A TF Serving gRPC `PredictRequest` for a batch of images and texts.

    Args:
        images: a list of images, each the bytes of a JPEG, PNG, GIF or BMP
            file or the path of one.
        texts: a list of texts (`str`), one per image.
        model_name: the model's name in TF Serving (its folder name).
        signature_name: the signature to call.
        version: a version number, or `None` for the latest.

    Returns:
        A `tensorflow_serving.apis.predict_pb2.PredictRequest`.

    Example:

    >>> import grpc
    >>> from tensorflow_serving.apis import prediction_service_pb2_grpc
    >>> channel = grpc.insecure_channel("localhost:8500")
    >>> stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    >>> request = grpc_request(["cat.jpg"], ["what animal?"], "gated")
    >>> response = stub.Predict(request, timeout=10.0)
    >>> tf.make_ndarray(response.outputs["top_k_labels"])
    array([[b'cat', b'dog', b'bird', b'fish', b'horse']], dtype=object)
    """
    images, texts = _pairs(images, texts)
    return _predict_request(
        {IMAGE_INPUT: images, TEXT_INPUT: texts}, model_name, signature_name, version
    )


def _predict_request(inputs, model_name, signature_name, version):
    """A `PredictRequest` of string vectors (lists) and an int32 `k`."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, values in inputs.items():
        if name == K_INPUT:
            proto = tf.make_tensor_proto(values, dtype=tf.int32, shape=[])
        else:
            proto = tf.make_tensor_proto(values, dtype=tf.string, shape=[len(values)])
        request.inputs[name].CopyFrom(proto)
    return request


def _encoder_inputs(signature_name, images, texts, k):
    """The inputs of a dual encoder's signature, checked against it."""
    check_choice("signature_name", signature_name, ENCODER_SIGNATURES)
    wanted = ENCODER_SIGNATURES[signature_name]
    given = {IMAGE_INPUT: images, TEXT_INPUT: texts, K_INPUT: k}
    arguments = {IMAGE_INPUT: "images", TEXT_INPUT: "texts", K_INPUT: "k"}
    for name, value in given.items():
        if (value is None) == (name in wanted):
            takes = " and ".join(f"`{arguments[n]}`" for n in wanted)
            received = [arguments[n] for n, v in given.items() if v is not None]
            raise TypeError(
                f"`{signature_name}` takes {takes}. Received: "
                f"{', '.join(received) or 'none of them'}"
            )
    inputs = {}
    if images is not None:
        inputs[IMAGE_INPUT] = _images(_batch("images", images))
    if texts is not None:
        inputs[TEXT_INPUT] = _texts(_batch("texts", texts))
    if k is not None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"`k` must be a positive int. Received: k={k!r}")
        inputs[K_INPUT] = k
    return inputs


def encoder_rest_request(signature_name, images=None, texts=None, k=None):
    """The JSON body of a REST request to a dual encoder's SavedModel.

    The body uses TF Serving's columnar ("inputs") format, which a search's
    scalar `k` needs (the row format gives every input a batch dimension).

    Args:
        signature_name: one of `ENCODER_SIGNATURES`: `"embed_image"`,
            `"embed_text"`, `"search_by_image"`, `"search_by_text"`.
        images: for the image signatures: a list of images, each the bytes
            of a JPEG, PNG, GIF or BMP file or the path of one.
        texts: for the text signatures: a list of texts (`str`).
        k: for the searches: how many results per query (clipped to the
            index size by the model).

    Returns:
        A dict, ready for `json.dumps`: `{"signature_name": ..., "inputs":
        {"text": [...], "k": 5}}`. TF Serving answers `{"outputs": {"ids":
        [[...]], "scores": [[...]]}}` (for one output, `{"outputs": [...]}`
        holds its values directly).

    Example:

    >>> body = encoder_rest_request("search_by_text", texts=["a red car"], k=5)
    >>> response = requests.post(
    ...     "http://localhost:8501/v1/models/pairs:predict", json=body
    ... )
    >>> response.json()["outputs"]["ids"][0]
    ['images/car_3.jpg', 'images/car_9.jpg', ...]
    """
    inputs = _encoder_inputs(signature_name, images, texts, k)
    if IMAGE_INPUT in inputs:
        inputs[IMAGE_INPUT] = [_b64(image) for image in inputs[IMAGE_INPUT]]
    if TEXT_INPUT in inputs:
        inputs[TEXT_INPUT] = [text.decode("utf-8") for text in inputs[TEXT_INPUT]]
    return {"signature_name": signature_name, "inputs": inputs}


def encoder_grpc_request(
    signature_name, model_name, images=None, texts=None, k=None, version=None
):
    """A TF Serving gRPC `PredictRequest` for a dual encoder's SavedModel.

    Args:
        signature_name: one of `ENCODER_SIGNATURES`.
        model_name: the model's name in TF Serving (its folder name).
        images, texts, k: the signature's inputs, as in
            `encoder_rest_request`.
        version: a version number, or `None` for the latest.

    Returns:
        A `tensorflow_serving.apis.predict_pb2.PredictRequest`.

    Example:

    >>> request = encoder_grpc_request("embed_image", "pairs", images=["a.png"])
    >>> response = stub.Predict(request, timeout=10.0)
    >>> tf.make_ndarray(response.outputs["image_embedding"]).shape
    (1, 128)
    """
    inputs = _encoder_inputs(signature_name, images, texts, k)
    return _predict_request(inputs, model_name, signature_name, version)


def read_warmup_requests(path):
    """The `PredictRequest`s of a TF Serving warmup file.

    Args:
        path: an exported version folder, or its
            `assets.extra/tf_serving_warmup_requests` file.

    Returns:
        A list of `PredictRequest`s, one per `PredictionLog` record.

    Example:

    >>> requests = read_warmup_requests("savedmodels/gated/1")
    >>> loaded = tf.saved_model.load("savedmodels/gated/1")
    >>> for request in requests:
    ...     inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    ...     loaded.signatures[request.model_spec.signature_name](**inputs)
    """
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "assets.extra", "tf_serving_warmup_requests")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No warmup file at {path!r}")
    requests = []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(record)
        if log.WhichOneof("log_type") != "predict_log":
            raise ValueError(
                f"{path} holds a {log.WhichOneof('log_type')} record; only "
                "predict_log records are written by mmzoo."
            )
        requests.append(log.predict_log.request)
    return requests
