"""A gradio chat page for a lesson's tuned (merged) model, with the lesson's own template and system prompt.

    python scripts/chat_app.py --lesson huanhuan            # http://127.0.0.1:7860 (on AutoDL: 0.0.0.0:6006)
    python scripts/chat_app.py --lesson nekoqa --share      # also a public gradio.live link
    python scripts/chat_app.py --lesson tang --model Qwen/Qwen2.5-7B-Instruct   # the adapter trained on that model

On AutoDL the page listens on 0.0.0.0:6006, the port AutoDL's "自定义服务" (custom service) exposes, so that link
opens it; elsewhere on 127.0.0.1:7860 (gradio's default), reachable through ssh -L 7860:127.0.0.1:7860 <instance>.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without `pip install -e .`

from helpers.chat import gradio_app
from helpers.data import COURSE_DATASETS
from helpers.lessons import LESSONS
from helpers.merge import load_merged
from helpers.models import MODEL_HELP
from helpers.paths import AUTODL_DATA_DISK
from helpers.profiles import PROFILES, get_profile


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Chat with a lesson's tuned model / 和微调后的模型聊天")
    parser.add_argument("--lesson", choices=LESSONS, required=True)
    parser.add_argument("--profile", choices=list(PROFILES))
    parser.add_argument("--model", help=MODEL_HELP)
    on_autodl = AUTODL_DATA_DISK.is_dir()
    parser.add_argument("--host", default="0.0.0.0" if on_autodl else "127.0.0.1",
                        help="0.0.0.0: every interface (the default on AutoDL)")
    parser.add_argument("--port", type=int, default=6006 if on_autodl else 7860,
                        help="AutoDL's custom service exposes 6006 (the default there); elsewhere 7860")
    parser.add_argument("--share", action="store_true", help="a public gradio.live link")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile, model=args.model)
    model, tokenizer = load_merged(args.lesson, profile)
    system = COURSE_DATASETS[args.lesson][2]
    app = gradio_app(model, tokenizer, system, profile.max_new_tokens, title=f"{args.lesson} ({profile.run_name})")
    app.launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
