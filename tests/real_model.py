"""Where the tests find the real model file (SmolLM2-135M-Instruct, GGUF), which `make data` fetches.

A missing file fails with nanolm's DataError ("run `make data`"), never a silent skip: CI always has it.
"""

from nanolm.core import data

FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path():
    """The verified path of the GGUF file in data/smollm2/."""
    return data.path("smollm2", FILE)
