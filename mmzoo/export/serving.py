"""Client helpers: requests for a model that `export_saved_model` wrote.

The exported `serving_default` signature takes a batch of encoded image
files (`image_bytes`) and one text per image (`text`). TF Serving accepts it
two ways:

- REST (port 8501): `rest_request` builds the JSON body of
  `POST /v1/models/<name>:predict`. Binary strings travel as
  `{"b64": <base64>}`, TF Serving's convention for `DT_STRING` inputs.
- gRPC (port 8500): `grpc_request` builds the `PredictRequest` for
  `PredictionService.Predict`, the message warmup records hold too.

`rest_request` needs nothing beyond the standard library; `grpc_request`
and `read_warmup_requests` import TensorFlow and the
`tensorflow-serving-api` protos when called.
"""

import base64
import os

SIGNATURE_NAME = "serving_default"
IMAGE_INPUT = "image_bytes"
TEXT_INPUT = "text"


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
    for argument, value in (("images", images), ("texts", texts)):
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
        images, texts = list(images), list(texts)
    except TypeError as error:
        raise TypeError(
            f"`images` and `texts` must be lists (one entry per example): {error}"
        ) from None
    if len(images) != len(texts):
        raise ValueError(
            "`images` and `texts` must have the same length (one text per "
            f"image). Received: {len(images)} images and {len(texts)} texts"
        )
    return (
        [_image_bytes(image, f"images[{i}]") for i, image in enumerate(images)],
        [_text_bytes(text, f"texts[{i}]") for i, text in enumerate(texts)],
    )


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
                IMAGE_INPUT: {"b64": base64.b64encode(image).decode("ascii")},
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
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    images, texts = _pairs(images, texts)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, values in ((IMAGE_INPUT, images), (TEXT_INPUT, texts)):
        request.inputs[name].CopyFrom(
            tf.make_tensor_proto(values, dtype=tf.string, shape=[len(values)])
        )
    return request


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
