"""Type stub of the compiled core (csrc/python/bindings.cpp); tests/test_build.py checks it names every function."""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__version__: str

def resize_bicubic(
    img: npt.NDArray[np.uint8], out_width: int, out_height: int, num_threads: int = 0
) -> npt.NDArray[np.uint8]: ...
def preprocess(
    img: npt.NDArray[np.uint8],
    res: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_threads: int = 0,
) -> npt.NDArray[np.float32]: ...
