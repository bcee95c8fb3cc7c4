"""Read a GGUF file into a transformers folder in a process of its own:

    python -m slm_blocks.compress.gguf_worker FILE.gguf OUT_DIR

The app imports GGUF files through this worker with a time limit (gguf_read.convert_in_worker): reading
runs transformers' GGUF loader, whose cost depends on the file, and a slow or hostile file must never hold the
app process or its import slot. A failure prints {"error": message} as the last line and exits with 2.
"""

from __future__ import annotations

import json
import sys


def main(path: str, out_dir: str) -> int:
    from .gguf_read import GGUFReadError, gguf_to_folder

    try:
        gguf_to_folder(path, out_dir)
    except GGUFReadError as e:
        print(json.dumps({"error": str(e)}), flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
