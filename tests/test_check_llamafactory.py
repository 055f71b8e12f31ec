"""The pure parts of ``scripts/check_llamafactory.py``; the check itself (a venv, LLaMA-Factory) is opt-in."""

import importlib.util
import sys

import pytest
from script_module import load_script

from helpers.templates import IGNORE_INDEX

check = load_script("check_llamafactory")


def test_llamafactory_requirements_leave_torch_and_its_audio_and_vision_packages_out():
    # Prevents: pip swapping the course's CPU torch for a CUDA build, or failing on torchaudio / torchvision.
    declared = ["torch>=2.4.0", "torchaudio>=2.4.0", "torchvision>=0.19.0", "peft<=0.18.1,>=0.18.0",
                "transformers!=4.52.0,<=5.6.0,>=4.55.0", 'deepspeed>=0.10; extra == "deepspeed"']
    assert check.wanted_requirements(declared) == ["peft<=0.18.1,>=0.18.0", "transformers!=4.52.0,<=5.6.0,>=4.55.0"]


def test_the_venv_uses_the_course_pins():
    pins = check.course_pins()
    assert pins["torch"].startswith("torch==") and all(pins[name].startswith(f"{name}==") for name in check.FROM_COURSE)


def test_equal_rows_pass_and_the_first_difference_is_shown_decoded(tiny_tokenizer):
    ids = tiny_tokenizer("喵~ 主人好", add_special_tokens=False)["input_ids"]
    ours = [{"input_ids": ids, "labels": [IGNORE_INDEX, *ids[1:]]}] * 2
    theirs = {"input_ids": [ids, ids], "labels": [row["labels"] for row in ours]}
    assert check.first_difference(tiny_tokenizer, "x", ours, theirs) is None
    theirs["labels"] = [ours[0]["labels"], [IGNORE_INDEX, IGNORE_INDEX, *ids[2:]]]
    report = check.first_difference(tiny_tokenizer, "x", ours, theirs)
    assert "row 1 differs at token 1" in report and f">{ids[1]}/{ids[1]}" in report
    assert "course rows, LLaMA-Factory 1" in check.first_difference(tiny_tokenizer, "x", ours, {"input_ids": [ids]})


def test_the_torchaudio_stand_in_imports_and_refuses_any_use(tmp_path):
    # Prevents: the stand-in breaking LLaMA-Factory's import, or silently pretending to load audio.
    (tmp_path / "torchaudio").mkdir()
    (tmp_path / "torchaudio" / "__init__.py").write_text(check.TORCHAUDIO_STUB, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("torchaudio_stub", tmp_path / "torchaudio" / "__init__.py")
    stub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stub)
    with pytest.raises(AttributeError, match="stand-in"):
        stub.load("speech.wav")


gpu = load_script("llamafactory_gpu")


@pytest.mark.slow
def test_the_gpu_route_holds_the_installed_torch_and_its_venv_sees_it(tmp_path):
    # Prevents: LLaMA-Factory's install swapping the image's CUDA torch, or a venv that cannot see it at all.
    import subprocess
    import venv
    from importlib import metadata

    held = gpu.held_versions()
    assert held[0] == f"torch=={metadata.version('torch')}"
    if sys.prefix != sys.base_prefix:  # tests in a venv: the script refuses to build from one, before any change
        with pytest.raises(gpu.lf.CheckFailed, match="venv"):
            gpu.ensure_gpu_venv(rebuild=True)
        return
    folder = tmp_path / "venv"
    venv.create(folder, with_pip=False, system_site_packages=True)  # as the script builds it, without pip's minutes
    shown = subprocess.run([str(folder / "bin" / "python"), "-c", "import torch; print(torch.__file__)"],
                           capture_output=True, text=True, check=True).stdout.strip()
    import torch

    assert shown == torch.__file__


def test_the_gpu_route_prints_train_and_the_web_ui_on_6006():
    # Prevents: a build that ends without the next command, or a web UI on gradio's 7860 that AutoDL cannot show.
    steps = gpu.next_steps()
    assert "llamafactory-cli train outputs/llamafactory/data/course_nekoqa_sft.yaml" in steps
    assert "GRADIO_SERVER_PORT=6006" in steps and "GRADIO_SERVER_NAME=0.0.0.0" in steps and "webui" in steps
    assert "ssh -CNg -L 6006:127.0.0.1:6006" in steps
