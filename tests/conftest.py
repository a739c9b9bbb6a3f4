import os
import tempfile

import keras
import pytest


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Each test starts from float32 and a fixed seed."""
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")


try:
    from hypothesis import HealthCheck
    from hypothesis import settings
except ImportError:  # hypothesis is a dev extra; its tests then fail to import
    pass
else:
    # `ci` (the default) keeps property tests fast and repeatable: a bounded,
    # derandomized set of examples and no example database written into the
    # checkout. `thorough` explores: MMZOO_HYPOTHESIS_PROFILE=thorough.
    settings.register_profile(
        "ci",
        max_examples=60,
        deadline=2000,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile(
        "thorough", max_examples=3000, deadline=None, database=None
    )
    settings.load_profile(os.environ.get("MMZOO_HYPOTHESIS_PROFILE", "ci"))
    # The patches hypothesis writes for failing examples go there too.
    os.environ.setdefault(
        "HYPOTHESIS_STORAGE_DIRECTORY",
        os.path.join(tempfile.gettempdir(), "mmzoo-hypothesis"),
    )
