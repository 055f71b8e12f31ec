"""An opt-in check in a real browser: start the chat page, chat once in headless Chromium, save a screenshot.

    make check-browser                                  # the same, after `make setup`
    python scripts/check_browser.py --lesson huanhuan   # tiny profile; --message "..." to ask something else

It installs what is missing (Debian's chromium, chromium-driver and a Chinese font with apt-get, selenium pinned in
requirements-browser.txt), trains the lesson's tiny adapter if there is none (``train_lesson``, about 1-2 minutes
on 2 CPU cores), starts ``scripts/chat_app.py`` on a free localhost port, types a message into the chat box, waits
for the streamed reply and saves ``outputs/browser-check/<lesson>.png``. Exit code 1, with the reason, on failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without `pip install -e .`

from helpers.paths import REPO_ROOT, display_path, outputs_dir
from helpers.ports import free_port
from helpers.profiles import PROFILES
from helpers.registry import SFT_LESSONS
from helpers.serve import log_tail

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHINESE_FONT = "fonts-wqy-microhei"  # 1.6 MB; Debian's Chromium brings no Chinese font
REQUIREMENTS = REPO_ROOT / "requirements-browser.txt"
# Headless, and nothing that reaches beyond localhost: on a closed network Chromium's own connections are refused.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,900")
CHAT_APP = REPO_ROOT / "scripts" / "chat_app.py"
MESSAGE = "你好，请介绍一下你自己。"
# gradio 6's ChatInterface: the message box, the assistant's bubbles, and the stop button shown while it streams.
TEXTBOX = "textarea[data-testid='textbox']"
USER_MESSAGE, BOT_MESSAGE = "[data-testid='user']", "[data-testid='bot']"
STOP_BUTTON = "button.stop-button"


class CheckFailed(RuntimeError):
    """The check failed; the message (Chinese and English) says at which step and why."""


def run(command: list[str]) -> None:
    """Run an install command, echoing it; a failure becomes CheckFailed."""
    print("$", " ".join(command), flush=True)
    if subprocess.run(command).returncode != 0:
        raise CheckFailed(f"安装失败 / install failed: {' '.join(command)}")


def has_chinese_font() -> bool:
    """Whether fontconfig knows a Chinese font: without one the screenshot shows boxes instead of the chat."""
    if shutil.which("fc-list") is None:
        return False
    return bool(subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True).stdout.strip())


def missing_packages() -> list[str]:
    """The Debian packages of the check that are not installed: the browser, its driver and a Chinese font."""
    present = {"chromium": CHROMIUM.exists(), "chromium-driver": CHROMEDRIVER.exists(),
               CHINESE_FONT: has_chinese_font()}
    return [package for package, there in present.items() if not there]


def ensure_browser() -> None:
    """Install the missing Debian packages with apt-get (as root, else through sudo)."""
    missing = missing_packages()
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    if (sudo and shutil.which("sudo") is None) or shutil.which("apt-get") is None:
        raise CheckFailed(
            f"缺少 {' '.join(missing)}，且这里无法用 apt-get 安装：请先手动安装。\n"
            f"{' '.join(missing)} missing and apt-get cannot install them here: install them yourself."
        )
    print(f"安装 / installing {' '.join(missing)} (apt-get, about a minute)", flush=True)
    run([*sudo, "apt-get", "update", "-qq"])
    run([*sudo, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq", *missing])


def ensure_selenium() -> None:
    """selenium at the version pinned in requirements-browser.txt, installed with pip when it cannot be imported."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", str(REQUIREMENTS)])


def ensure_adapter(lesson: str, profile_name: str) -> None:
    """The lesson's adapter, which the chat page merges and loads: trained now if missing (tiny: about 1-2 minutes)."""
    from helpers.lessons import train_lesson
    from helpers.profiles import get_profile

    train_lesson(lesson, get_profile(profile_name))


@contextmanager
def chat_server(lesson: str, profile_name: str, port: int, log: Path, timeout: float) -> Iterator[str]:
    """``scripts/chat_app.py`` on 127.0.0.1:``port`` until the block ends; yields its address once it answers."""
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, str(CHAT_APP), "--lesson", lesson, "--profile", profile_name,
               "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w", encoding="utf-8") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                  env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})  # no calls home
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise CheckFailed(f"聊天页面的服务进程退出了（退出码 {server.returncode}）/ the chat server exited "
                                  f"(code {server.returncode}); {display_path(log)}:\n{log_tail(log)}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise CheckFailed(f"聊天页面 {timeout:.0f} 秒内没有启动 / the chat server did not answer within "
                                  f"{timeout:.0f} s at {url}; {display_path(log)}:\n{log_tail(log)}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def chat_in_browser(url: str, message: str, screenshot: Path, timeout: float) -> str:
    """Open ``url`` in headless Chromium, send ``message``, wait until the reply has streamed; return its text."""
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile_dir = tempfile.mkdtemp(prefix="check-browser-")  # a fresh, empty user-data-dir each run
    options.add_argument(f"--user-data-dir={profile_dir}")
    try:
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    except WebDriverException as error:
        shutil.rmtree(profile_dir, ignore_errors=True)
        raise CheckFailed(f"Chromium 没有启动 / Chromium did not start: {error.msg}") from error

    def bubbles(selector: str) -> list[str]:
        return [bubble.text.strip() for bubble in driver.find_elements(By.CSS_SELECTOR, selector)]

    def streaming() -> bool:
        return any(button.is_displayed() for button in driver.find_elements(By.CSS_SELECTOR, STOP_BUTTON))

    try:
        driver.get(url)
        try:
            box = WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.CSS_SELECTOR, TEXTBOX))
        except TimeoutException as error:
            raise CheckFailed(f"页面 {timeout:.0f} 秒内没有出现聊天输入框 / the page showed no chat box within "
                              f"{timeout:.0f} s: {url}") from error
        box.send_keys(message, Keys.ENTER)
        # The reply is complete once it is non-empty and gradio has hidden its stop button again.
        try:
            WebDriverWait(driver, timeout).until(lambda _: any(bubbles(BOT_MESSAGE)) and not streaming())
        except TimeoutException as error:
            driver.save_screenshot(str(screenshot))
            raise CheckFailed(f"{timeout:.0f} 秒内没有看到模型的回复 / no reply from the model within {timeout:.0f} s; "
                              f"screenshot: {display_path(screenshot)}") from error
        driver.save_screenshot(str(screenshot))
        if bubbles(USER_MESSAGE)[-1:] != [message.strip()]:
            raise CheckFailed(f"页面上的用户消息不是发送的那句 / the page shows {bubbles(USER_MESSAGE)!r} as the "
                              f"user's message, not {message!r}; screenshot: {display_path(screenshot)}")
        return bubbles(BOT_MESSAGE)[-1]
    finally:
        driver.quit()
        shutil.rmtree(profile_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="在真实浏览器里检查聊天页面 / check the chat page in a real browser")
    parser.add_argument("--lesson", choices=SFT_LESSONS, default="huanhuan")
    parser.add_argument("--profile", choices=list(PROFILES), default="tiny", help="课程配置 / course profile")
    parser.add_argument("--message", default=MESSAGE, help="发送的消息 / the message to send")
    parser.add_argument("--server-timeout", type=float, default=180, help="秒 / seconds for the page to start")
    parser.add_argument("--reply-timeout", type=float, default=120, help="秒 / seconds for the page, then the reply")
    args = parser.parse_args(argv)
    folder = outputs_dir("browser-check")
    screenshot = folder / f"{args.lesson}.png"
    start = time.monotonic()
    try:
        ensure_browser()
        ensure_selenium()
        ensure_adapter(args.lesson, args.profile)
        with chat_server(args.lesson, args.profile, free_port(), folder / "server.log", args.server_timeout) as url:
            print(f"聊天页面已启动 / chat page up after {time.monotonic() - start:.0f} s: {url}", flush=True)
            reply = chat_in_browser(url, args.message, screenshot, args.reply_timeout)
    except CheckFailed as error:
        print(f"[check-browser] 失败 / FAILED: {error}", file=sys.stderr)
        return 1
    print(f"[check-browser] 通过 / passed in {time.monotonic() - start:.0f} s\n"
          f"  问 / asked: {args.message}\n  答 / reply: {reply}\n  截图 / screenshot: {display_path(screenshot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
