"""mmzoo: a Keras 3 model zoo for image + text recognition."""

__version__ = "0.1.0"

from mmzoo.builder import build_model
from mmzoo.registry import list_fusions
from mmzoo.registry import list_image_towers
from mmzoo.registry import list_models
from mmzoo.registry import list_text_towers
from mmzoo.saving import load_model

__all__ = [
    "__version__",
    "build_model",
    "list_fusions",
    "list_image_towers",
    "list_models",
    "list_text_towers",
    "load_model",
]
