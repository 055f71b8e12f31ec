"""A gradio chat page for a lesson's tuned (merged) model, with the lesson's own template and system prompt.

    python scripts/chat_app.py --lesson huanhuan            # http://127.0.0.1:7860 (on AutoDL: 0.0.0.0:6006)
    python scripts/chat_app.py --lesson nekoqa --share      # also a public gradio.live link
    python scripts/chat_app.py --lesson tang --model Qwen/Qwen2.5-7B-Instruct   # the adapter trained on that model

On AutoDL the page listens on 0.0.0.0:6006, the port AutoDL's "自定义服务" (custom service) exposes, so that link
opens it; elsewhere on 127.0.0.1:7860 (gradio's default). At start it prints how to open it, SSH tunnel included
(``helpers.ports.how_to_open``); a taken port stops it at once with who may hold it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without `pip install -e .`

from helpers.chat import PortTaken, check_page_port, gradio_app, launch_chat_page
from helpers.merge import load_merged
from helpers.models import MODEL_HELP
from helpers.ports import web_address
from helpers.profiles import PROFILES, get_profile
from helpers.registry import LESSONS, SFT_LESSONS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Chat with a lesson's tuned model / 和微调后的模型聊天")
    parser.add_argument("--lesson", choices=SFT_LESSONS, required=True)
    parser.add_argument("--profile", choices=list(PROFILES))
    parser.add_argument("--model", help=MODEL_HELP)
    host, port = web_address()
    parser.add_argument("--host", default=host, help="0.0.0.0: every interface (the default on AutoDL)")
    parser.add_argument("--port", type=int, default=port,
                        help="AutoDL's custom service exposes 6006 (the default there); elsewhere 7860")
    parser.add_argument("--share", action="store_true", help="a public gradio.live link")
    args = parser.parse_args(argv)
    try:
        check_page_port(args.port, args.host)  # before minutes of loading the model
        profile = get_profile(args.profile, model=args.model)
        model, tokenizer = load_merged(args.lesson, profile)
        system = LESSONS[args.lesson].system
        app = gradio_app(model, tokenizer, system, profile.max_new_tokens, title=f"{args.lesson} ({profile.run_name})")
        launch_chat_page(app, args.host, args.port, args.share)
    except PortTaken as error:
        raise SystemExit(str(error)) from None


if __name__ == "__main__":
    main()
