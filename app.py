"""SLM Blocks: `python app.py` starts the app locally (add --share for a public link); Spaces run it as is."""

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the SLM Blocks app.")
    parser.add_argument("--share", action="store_true", help="create a temporary public gradio.live link")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--runs", action="append", default=[], metavar="DIR",
                        help="also list the runs in DIR (e.g. the CLI's runs/), read-only; repeatable")
    args = parser.parse_args()

    import sys

    from slm_blocks.ui import build_app
    from slm_blocks.ui.state import Limits, SessionStore

    # generation threads hold the interpreter between torch calls; handing it over every millisecond (not 5)
    # keeps a cheap call of another visitor from waiting behind them
    sys.setswitchinterval(0.001)

    import dataclasses
    from pathlib import Path

    limits = Limits.from_env()
    if args.runs:
        limits = dataclasses.replace(limits, run_dirs=tuple(Path(d).expanduser().resolve() for d in args.runs))
    demo = build_app(SessionStore(limits))
    demo.queue(max_size=int(os.environ.get("SLM_QUEUE_SIZE", 64)))
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)  # caps: see ui/guard.py


if __name__ == "__main__":
    main()
