"""Install the course's Jupyter kernel `nanolm` into this virtual environment (sys.prefix).

It runs this very Python, and logs only errors (ipykernel otherwise warns on every start
that local TCP is unencrypted, which clutters headless runs).
"""

import json
import sys
from pathlib import Path

from ipykernel.kernelspec import install

path = Path(install(kernel_name="nanolm", display_name="Python (nanolm)", prefix=sys.prefix)) / "kernel.json"
spec = json.loads(path.read_text())
if "--IPKernelApp.log_level=ERROR" not in spec["argv"]:
    spec["argv"].append("--IPKernelApp.log_level=ERROR")
path.write_text(json.dumps(spec, indent=1) + "\n")
print(f"kernel 'nanolm' -> {spec['argv'][0]}")
