"""mmzoo: a Keras 3 model zoo for image + text recognition."""

__version__ = "0.1.0"

# Imported for its side effect too: every registered fusion layer is then
# known to Keras' deserializer, for `keras.saving.load_model` as well.
from mmzoo import fusion  # noqa: F401
from mmzoo import losses  # noqa: F401
from mmzoo.builder import MultimodalModel
from mmzoo.builder import build_model
from mmzoo.builder import with_modality_weights

# Registers the captioner's classes for loading too.
from mmzoo.captioning.model import Captioner
from mmzoo.captioning.model import build_captioner
from mmzoo.dual_encoder import DualEncoder
from mmzoo.dual_encoder import RetrievalMetrics
from mmzoo.dual_encoder import build_dual_encoder
from mmzoo.registry import list_fusions
from mmzoo.registry import list_image_towers
from mmzoo.registry import list_models
from mmzoo.registry import list_tasks
from mmzoo.registry import list_text_towers
from mmzoo.saving import load_model
from mmzoo.tasks import get_task

__all__ = [
    "__version__",
    "Captioner",
    "DualEncoder",
    "MultimodalModel",
    "RetrievalMetrics",
    "build_captioner",
    "build_dual_encoder",
    "build_model",
    "ensemble",
    "get_task",
    "list_fusions",
    "list_image_towers",
    "list_models",
    "list_tasks",
    "list_text_towers",
    "load_model",
    "load_run",
    "with_modality_weights",
]


def __getattr__(name):
    # A run folder's loader imports TensorFlow; import it on first use.
    if name in ("load_run", "Run"):
        from mmzoo import runs

        return getattr(runs, name)
    if name in ("ensemble", "Ensemble"):
        from mmzoo import ensembles

        return getattr(ensembles, name)
    raise AttributeError(f"module 'mmzoo' has no attribute {name!r}")
