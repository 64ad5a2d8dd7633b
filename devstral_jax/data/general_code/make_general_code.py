"""Writes python_stdlib.jsonl: a few Python standard-library modules as `text` validation records, the held-out
general (not Elixir) code on which every training stage measures forgetting.

    python devstral_jax/data/general_code/make_general_code.py /usr/lib/python3.11
"""

import hashlib
import json
import os
import sys

MODULES = ("bisect", "colorsys", "fnmatch", "graphlib", "heapq", "queue", "shlex", "textwrap")


def main(stdlib: str) -> None:
    version = ".".join(map(str, sys.version_info[:3]))
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "python_stdlib.jsonl"), "w") as out:
        for module in MODULES:
            with open(os.path.join(stdlib, f"{module}.py")) as f:
                text = f.read()
            record = {"id": hashlib.sha256(text.encode()).hexdigest()[:24], "kind": "text", "task": "general_code",
                      "split": "validation", "text": text,
                      "source": {"kind": "python_stdlib", "package": "cpython", "version": version,
                                 "path": f"Lib/{module}.py", "licence": "PSF-2.0",
                                 "url": f"https://github.com/python/cpython/blob/v{version}/Lib/{module}.py"}}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
