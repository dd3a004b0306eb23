"""Type stub of the compiled core (csrc/python/bindings.cpp); tests/test_build.py checks it names every function and class.

EngineBuilder and EngineRunner exist only when `has_tensorrt()` is True (built against TensorRT).
"""

from collections.abc import Mapping, Sequence

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

# -- engines ---------------------------------------------------------------------------------------------

_Range = tuple[Sequence[int], Sequence[int], Sequence[int]]  # (min, opt, max)
_Tensor = tuple[str, str, Sequence[int], int]  # (name, dtype name, shape, device pointer)

class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]
    def __init__(self, name: str, dtype: str, shape: Sequence[int]) -> None: ...

class Profile:
    ranges: dict[str, tuple[list[int], list[int], list[int]]]
    def __init__(self, ranges: Mapping[str, _Range]) -> None: ...

class EngineSpec:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    profiles: list[Profile]
    def __init__(self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], profiles: Sequence[Profile]) -> None: ...
    def validate(self) -> None: ...

class EngineManifest:
    schema: int
    graph: str
    engine: str
    sha256: str
    tensorrt_version: str
    precision: str
    spec: EngineSpec
    def __init__(
        self, graph: str, engine: str, sha256: str, tensorrt_version: str, precision: str, spec: EngineSpec
    ) -> None: ...
    @staticmethod
    def parse(text: str) -> EngineManifest: ...
    @staticmethod
    def load(path: str) -> EngineManifest: ...
    def to_json(self) -> str: ...

def select_profile(profiles: Sequence[Profile], shapes: Mapping[str, Sequence[int]]) -> int: ...
def validate_shapes(spec: EngineSpec, inputs: Mapping[str, tuple[str, Sequence[int]]]) -> None: ...
def check_tensorrt_compatible(built_with: str, runtime: str) -> None: ...
def has_tensorrt() -> bool: ...
def tensorrt_version() -> str | None: ...

class EngineBuilder:
    def __init__(
        self,
        onnx_path: str,
        engine_path: str,
        profiles: Sequence[Profile],
        timing_cache_path: str = "",
        workspace_bytes: int = 1 << 30,
    ) -> None: ...
    def build(self) -> EngineSpec: ...

class EngineRunner:
    manifest: EngineManifest
    def __init__(self, manifest: EngineManifest, engine_path: str) -> None: ...
    def prepare(self, shapes: Mapping[str, Sequence[int]], stream: int = 0) -> dict[str, list[int]]: ...
    def run(self, inputs: Sequence[_Tensor], outputs: Sequence[_Tensor], stream: int) -> None: ...
