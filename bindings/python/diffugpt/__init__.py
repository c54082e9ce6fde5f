"""Python bindings for diffugpt (DiffuGPT masked-diffusion GPT-2 inference), over its C ABI.

    import diffugpt
    with diffugpt.Model.load("path/to/model") as model:
        print(model.generate("The capital of France is", canvas_len=32).text)

The shared library is found through ``lib_path=``, ``$DIFFUGPT_LIB``, a copy inside this
package, or the system library path (see :func:`load_library`).
"""

from ._api import (
    AbortCallback,
    Model,
    ModelInfo,
    ProgressCallback,
    Result,
    Session,
    Stats,
    StepCallback,
    version,
)
from ._lib import (
    ABI_VERSION,
    DGPT_LENGTH_EOS_FIRST,
    DGPT_LENGTH_FIXED,
    DGPT_PREDICTOR_ARGMAX,
    DGPT_PREDICTOR_ORACLE,
    DGPT_PREDICTOR_QUANTILE,
    DGPT_PREDICTOR_THRESHOLD,
    DGPT_STRATEGY_CONFIDENCE,
    DGPT_STRATEGY_ENTROPY,
    DGPT_STRATEGY_MARGIN,
    DGPT_STRATEGY_RANDOM,
    ClosedError,
    DiffuGPTError,
    Library,
    LibraryError,
    Status,
    load_library,
)

__version__ = "0.1.0"

#: ``pad_id`` value for :meth:`Model.load` that removes the model's pad id.
PAD_REMOVE = -2

__all__ = [
    "__version__",
    "ABI_VERSION",
    "PAD_REMOVE",
    "AbortCallback",
    "ClosedError",
    "DiffuGPTError",
    "Library",
    "LibraryError",
    "Model",
    "ModelInfo",
    "ProgressCallback",
    "Result",
    "Session",
    "Stats",
    "Status",
    "StepCallback",
    "load_library",
    "version",
    "DGPT_LENGTH_EOS_FIRST",
    "DGPT_LENGTH_FIXED",
    "DGPT_PREDICTOR_ARGMAX",
    "DGPT_PREDICTOR_ORACLE",
    "DGPT_PREDICTOR_QUANTILE",
    "DGPT_PREDICTOR_THRESHOLD",
    "DGPT_STRATEGY_CONFIDENCE",
    "DGPT_STRATEGY_ENTROPY",
    "DGPT_STRATEGY_MARGIN",
    "DGPT_STRATEGY_RANDOM",
]
