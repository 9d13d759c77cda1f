"""Make sure torchvision imports beside the torch in this environment, never replacing torch.

Processors of several model families (Qwen2-VL, Qwen2.5-VL: their video processor) import
torchvision. A GPU user's own torch is kept: the torchvision release built for that torch
(torch 2.N pairs with torchvision 0.(N+15)) is installed with torch pinned to what is there.
When no matching build imports, one line says so and setup goes on: only those families need it.
"""

from __future__ import annotations

import subprocess
import sys


def _imports() -> bool:
    probe = "import torch, torchvision; torchvision.ops.nms"  # nms: a build mismatch fails only here
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def main() -> int:
    if _imports():
        return 0
    import torch

    version = torch.__version__.split("+")[0]
    major, minor = (int(x) for x in version.split(".")[:2])
    vision = f"torchvision=={major - 2}.{minor + 15}.*"
    print(f"setup: installing {vision} for torch {version}", file=sys.stderr)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", vision, f"torch=={torch.__version__}"])
    if done.returncode == 0 and _imports():
        return 0
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", "torchvision"], capture_output=True)
    print(f"setup: no torchvision build imports beside torch {torch.__version__}; Qwen2-VL-family processors "
          "will not load (install torch and torchvision as a matching pair, e.g. torch==2.14.1 torchvision==0.29.1)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
