"""Ports: which one a web page or API listens on, whether it is free, and how to open it from the student's browser.

AutoDL exposes one port of an instance to the browser, **6006**, through the console's "自定义服务" (custom service);
any other port is reached through an SSH tunnel. The course's four web services all fit that plan, one at a time:

    python -m helpers.ports          # the plan for this machine, and whether 6006 is free now
"""

from __future__ import annotations

import socket
import sys

from helpers.paths import AUTODL_DATA_DISK

LOCAL_HOST = "127.0.0.1"  # this machine only
ALL_INTERFACES = "0.0.0.0"  # also reachable from outside (AutoDL's custom service connects this way)
AUTODL_PORT = 6006  # the port AutoDL's custom service exposes
GRADIO_PORT = 7860  # gradio's own default, used off AutoDL
SSH_TUNNEL = "ssh -CNg -L {port}:127.0.0.1:{port} -p <SSH端口> root@<SSH主机>"


def on_autodl() -> bool:
    """Whether this is an AutoDL instance (it has the data disk ``/root/autodl-tmp``)."""
    return AUTODL_DATA_DISK.is_dir()


def web_address() -> tuple[str, int]:
    """Where a web page listens by default: ``0.0.0.0:6006`` on AutoDL (the custom service), else 127.0.0.1:7860."""
    return (ALL_INTERFACES, AUTODL_PORT) if on_autodl() else (LOCAL_HOST, GRADIO_PORT)


def port_in_use(port: int, host: str = LOCAL_HOST) -> bool:
    """Whether something already listens on ``host:port`` (binds as uvicorn does, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = LOCAL_HOST) -> int:
    """A port nothing listens on now, chosen by the operating system."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def port_taken_message(port: int, host: str, other_port: str) -> str:
    """Chinese and English: ``port`` is taken, how to see by whom, and ``other_port`` (how to pick another)."""
    zh = (f"端口 {port} 已被占用（{host}:{port}），可能是之前启动的服务还没有停止。"
          f"查看占用它的进程：lsof -i :{port}（或 ss -ltnp | grep {port}）；"
          f"停止它（kill <PID>；笔记本里 server.stop() 或中断单元格），或换一个端口：{other_port}")
    en = (f"Port {port} is already in use ({host}:{port}), perhaps by a server started earlier. "
          f"See who holds it: lsof -i :{port} (or ss -ltnp | grep {port}); "
          f"stop it (kill <PID>; server.stop() or interrupt the cell in a notebook), "
          f"or choose another port: {other_port}")
    if port == AUTODL_PORT:
        zh += (f"\nAutoDL 的自定义服务只开放 {AUTODL_PORT}：聊天网页、transformers serve、TensorBoard、"
               f"LLaMA-Factory 网页同一时间只能有一个用它；换了端口就要用 SSH 隧道打开。")
        en += (f"\nAutoDL's custom service exposes only {AUTODL_PORT}: the chat page, transformers serve, TensorBoard "
               f"and LLaMA-Factory's web UI take turns on it; another port needs an SSH tunnel.")
    return f"{zh}\n{en}"


def how_to_open(port: int, host: str, path: str = "") -> str:
    """How the student's browser reaches ``host:port``: AutoDL's custom service (6006 on 0.0.0.0), or an SSH tunnel."""
    local = f"http://127.0.0.1:{port}{path}"
    tunnel = SSH_TUNNEL.format(port=port)
    lines = [f"在本机打开 / on this machine: {local}"]
    if on_autodl() and port == AUTODL_PORT and host == ALL_INTERFACES:
        lines.append(f"AutoDL：控制台 → 容器实例 → 自定义服务，打开的就是 {AUTODL_PORT} 端口 / "
                     f"AutoDL console → instance → custom service (自定义服务) opens port {AUTODL_PORT}")
    elif on_autodl() and port == AUTODL_PORT:
        lines.append(f"AutoDL 的自定义服务要求监听 {ALL_INTERFACES}（现在是 {host}）/ the custom service needs "
                     f"host {ALL_INTERFACES} (now {host})")
    lines.append(f"自己电脑的浏览器 / from your own computer: 在自己电脑的终端运行 / run on your computer:\n"
                 f"  {tunnel}\n"
                 f"  （-p 和主机换成 AutoDL 控制台“登录指令”里的 / take -p and the host from the console's SSH "
                 f"login command, e.g. ssh -p 12345 root@region-1.autodl.com），然后打开 / then open {local}")
    return "\n".join(lines)


SERVICES = (  # (lesson, what, command on 6006)
    ("08", "聊天网页 / chat page", "python scripts/chat_app.py --lesson nekoqa   # AutoDL 上默认 0.0.0.0:6006"),
    ("11", "OpenAI 兼容 API", "transformers serve outputs/merged/nekoqa-gpu --host 0.0.0.0 --port 6006"),
    ("03", "TensorBoard", "tensorboard --logdir outputs/checkpoints --host 0.0.0.0 --port 6006"),
    ("10", "LLaMA-Factory 网页 / web UI",
     "GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=6006 .venv-llamafactory-gpu/bin/llamafactory-cli webui"),
)


def port_plan() -> str:
    """The course's services on AutoDL's one port, whether it is free here now, and how to open it."""
    lines = [f"端口 {AUTODL_PORT}：课程的网页和接口一次只开一个 / one service at a time on port {AUTODL_PORT}:"]
    lines += [f"  第 {lesson} 课 {what}:\n    {command}" for lesson, what, command in SERVICES]
    taken = port_in_use(AUTODL_PORT, ALL_INTERFACES)
    lines.append(f"现在 {AUTODL_PORT} " + ("已被占用 / is taken now: lsof -i :6006" if taken else "空闲 / is free now"))
    lines.append(how_to_open(AUTODL_PORT, ALL_INTERFACES))
    return "\n".join(lines)


def main() -> int:
    print(port_plan())
    return 0


if __name__ == "__main__":
    sys.exit(main())
