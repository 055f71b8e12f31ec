"""helpers.ports: one port plan for AutoDL's 6006, and how a student's browser reaches each service."""

from __future__ import annotations

from helpers import ports


# Prevents: a page on AutoDL listening where the custom service cannot reach it (127.0.0.1, or gradio's 7860).
def test_web_pages_default_to_6006_on_all_interfaces_on_autodl(monkeypatch):
    monkeypatch.setattr(ports, "on_autodl", lambda: True)
    assert ports.web_address() == ("0.0.0.0", 6006)
    monkeypatch.setattr(ports, "on_autodl", lambda: False)
    assert ports.web_address() == ("127.0.0.1", 7860)


# Prevents: "it's running, but where do I click?": the custom service on AutoDL, the ssh -L tunnel written out.
def test_how_to_open_names_the_custom_service_and_writes_the_tunnel_out(monkeypatch):
    monkeypatch.setattr(ports, "on_autodl", lambda: True)
    text = ports.how_to_open(6006, "0.0.0.0")
    assert "自定义服务" in text and "custom service" in text
    assert "ssh -CNg -L 6006:127.0.0.1:6006 -p <SSH端口> root@<SSH主机>" in text and "http://127.0.0.1:6006" in text
    assert "0.0.0.0" in ports.how_to_open(6006, "127.0.0.1")  # the custom service cannot reach 127.0.0.1
    monkeypatch.setattr(ports, "on_autodl", lambda: False)
    text = ports.how_to_open(7860, "127.0.0.1")
    assert "自定义服务" not in text and "ssh -CNg -L 7860:127.0.0.1:7860" in text


# Prevents: two services silently fighting over 6006: the message says they take turns and how to see the holder.
def test_taken_6006_says_the_services_take_turns():
    message = ports.port_taken_message(6006, "0.0.0.0", "--port 6007")
    assert "lsof -i :6006" in message and "--port 6007" in message
    assert "TensorBoard" in message and "take turns" in message and "同一时间只能有一个" in message
    assert "take turns" not in ports.port_taken_message(8000, "127.0.0.1", "--port 8001")


# Prevents: the README's and lesson 00's port plan drifting from the commands the lessons use.
def test_port_plan_lists_every_service_on_6006():
    plan = ports.port_plan()
    for command in ("scripts/chat_app.py", "transformers serve", "tensorboard --logdir outputs/checkpoints",
                    "GRADIO_SERVER_PORT=6006"):
        assert command in plan
    assert plan.count("6006") >= 5
