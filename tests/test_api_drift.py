"""Every keyword the course passes to transformers, peft, trl, bitsandbytes and datasets exists in the pinned versions.

The code is read, not run: ``ast`` finds each call whose callee comes from those libraries (through the
file's imports, e.g. ``SFTConfig(...)`` or ``AutoModelForCausalLM.from_pretrained(...)``, plus a few methods
such as ``model.generate``), and ``inspect.signature`` of the installed callee says which keywords it takes.
Old tutorials' arguments (``SFTTrainer(tokenizer=...)``, ``SFTConfig(max_seq_length=...)``, ``torch_dtype=``)
fail here with the file, line and callee, instead of in a student's notebook.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers.paths import REPO_ROOT

LIBRARIES = ("transformers", "peft", "trl", "bitsandbytes", "datasets")
# Methods called on objects the code does not name by class: the classes they belong to in the course.
METHODS = {
    "generate": ("transformers.GenerationMixin.generate",),
    "train": ("transformers.Trainer.train",),
    "batch_decode": ("transformers.PreTrainedTokenizerBase.batch_decode",),
    "save_pretrained": ("transformers.PreTrainedModel.save_pretrained", "peft.PeftModel.save_pretrained",
                        "transformers.PreTrainedTokenizerBase.save_pretrained"),
}
# Still accepted with a deprecation warning, or a deprecated alias: flagged all the same.
DEPRECATED = {"torch_dtype": "dtype"}
DEPRECATED_TRAINING_ARGS = {"gradient_checkpointing": "activation_checkpointing",
                            "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs"}


def popped(function: Callable) -> set[str]:
    """Keyword names a ``**kwargs`` function reads with ``kwargs.pop("name")`` / ``kwargs.get("name")``."""
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return set()
    return set(re.findall(r"kwargs\.(?:pop|get)\(\s*[\"'](\w+)", source))


def parameters(function: Callable) -> set[str]:
    return {p.name for p in inspect.signature(function).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def model_kwargs() -> set[str]:
    """What ``from_pretrained`` of a model takes: its own and the auto class's keywords, and config fields."""
    import transformers
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    config_fields = set(transformers.PretrainedConfig().to_dict())
    for config in (transformers.LlamaConfig, transformers.Qwen2Config):  # the course's model families
        config_fields |= parameters(config)
    model = transformers.PreTrainedModel.from_pretrained
    return parameters(model) | popped(model) | popped(_BaseAutoModelClass.from_pretrained) | config_fields


def tokenizer_kwargs() -> set[str]:
    """What ``AutoTokenizer.from_pretrained`` takes: its keywords, the base class's, and the tokenizer's init."""
    import transformers
    from transformers import PreTrainedTokenizerBase

    base = PreTrainedTokenizerBase
    names = parameters(base.from_pretrained) | popped(transformers.AutoTokenizer.from_pretrained)
    names |= popped(base.from_pretrained) | popped(base._from_pretrained) | popped(base.__init__)
    names |= parameters(transformers.PreTrainedTokenizerFast.__init__) | set(base.SPECIAL_TOKENS_ATTRIBUTES)
    return names


def bnb_kwargs() -> set[str]:
    """BitsAndBytesConfig only warns about unknown keywords (a typo is silently ignored): what it reads."""
    from transformers import BitsAndBytesConfig

    return popped(BitsAndBytesConfig.__init__)


def generate_kwargs() -> set[str]:
    """What ``generate`` takes: its keywords, the generation config's fields, and the model inputs."""
    from transformers import GenerationConfig, GenerationMixin

    inputs = {"input_ids", "attention_mask", "inputs_embeds", "position_ids", "use_cache", "past_key_values"}
    return parameters(GenerationMixin.generate) | set(GenerationConfig().to_dict()) | inputs


# For callees with **kwargs, the names they accept; any other **kwargs callee accepts anything.
KWARGS = {
    "_BaseAutoModelClass.from_pretrained": model_kwargs,
    "PreTrainedModel.from_pretrained": model_kwargs,
    "AutoTokenizer.from_pretrained": tokenizer_kwargs,
    "GenerationMixin.generate": generate_kwargs,
    "BitsAndBytesConfig.__init__": bnb_kwargs,
}


def resolve(dotted: str) -> object:
    """The installed object at ``package.module.attr...``; ImportError / AttributeError when it is gone."""
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[: i + 1]))
    return obj


@functools.cache
def accepted(dotted: str) -> frozenset[str] | None:
    """The keywords the callee at ``dotted`` accepts; None when it takes any."""
    obj = resolve(dotted)
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    names = {p.name for p in signature.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return frozenset(names)
    target = obj.__init__ if inspect.isclass(obj) else obj
    extra = KWARGS.get(getattr(target, "__qualname__", ""))
    return None if extra is None else frozenset(names | extra())


def deprecated(dotted: str, keyword: str) -> str | None:
    """The new name of a deprecated keyword of this callee, or None."""
    from transformers import TrainingArguments

    obj = resolve(dotted)
    if inspect.isclass(obj) and issubclass(obj, TrainingArguments) and keyword in DEPRECATED_TRAINING_ARGS:
        return DEPRECATED_TRAINING_ARGS[keyword]
    return DEPRECATED.get(keyword)


def library_imports(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted path, for every name imported from the checked libraries (anywhere in the code)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in LIBRARIES:
                    names[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LIBRARIES:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def dotted_name(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def course_modules(tree: ast.AST) -> set[str]:
    """Local names of the course's own modules (``from helpers import lesson03_cells as cells``)."""
    return {alias.asname or alias.name for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "helpers" for alias in node.names}


def callees(call: ast.Call, imports: dict[str, str], own: set[str] = frozenset()) -> tuple[str, ...]:
    """The library callables this call may reach: through the imports, or a known method name (not on ``own``)."""
    name = dotted_name(call.func)
    if name is not None and name.split(".")[0] in own:  # cells.train(...) is lesson 03's cell, not Trainer.train
        return ()
    if name is not None and name.split(".")[0] in imports:
        head, _, rest = name.partition(".")
        return (f"{imports[head]}.{rest}" if rest else imports[head],)
    if isinstance(call.func, ast.Attribute):
        return METHODS.get(call.func.attr, ())
    return ()


def check_code(code: str, label: str, imports: dict[str, str] | None = None) -> list[str]:
    """Problems in ``code``: library names that no longer exist, and keywords their callees do not take."""
    tree = ast.parse(code)
    imports = library_imports(tree) if imports is None else imports
    own, problems = course_modules(tree), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LIBRARIES:
            for alias in node.names:
                try:
                    resolve(f"{node.module}.{alias.name}")
                except (ImportError, AttributeError):
                    problems.append(f"{label}:{node.lineno}: {node.module}.{alias.name} 不存在 / no longer exists")
        if not isinstance(node, ast.Call):
            continue
        candidates = callees(node, imports, own)
        keywords = [k.arg for k in node.keywords if k.arg is not None]  # **unpacked dicts cannot be checked
        if not candidates or not keywords:
            continue
        try:
            allowed = [accepted(c) for c in candidates]
        except (ImportError, AttributeError):
            problems.append(f"{label}:{node.lineno}: {candidates[0]} 不存在 / no longer exists")
            continue
        for keyword in keywords:
            if all(a is not None and keyword not in a for a in allowed):
                problems.append(f"{label}:{node.lineno}: {candidates[0]}({keyword}=...) 参数不存在 / no such argument")
            elif (new := deprecated(candidates[0], keyword)) is not None:
                problems.append(f"{label}:{node.lineno}: {candidates[0]}({keyword}=...) 已弃用，请用 / "
                                f"deprecated, use {new}=")
    return problems


def code_cells(notebook: Path) -> Iterator[tuple[str, str]]:
    """(label, code) of each code cell; IPython magics and shell lines become ``pass``."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    for number, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            code = re.sub(r"(?m)^(\s*)[%!].*$", r"\1pass", source)
            yield f"{notebook.relative_to(REPO_ROOT)} cell {number}", code


def python_files() -> list[Path]:
    """The course's own Python; not ``scripts/*_side.py``, which run in another tool's environment (LLaMA-Factory's,
    llama-cpp-python's) against that tool's API, where ``generate(temp=...)`` is llama.cpp's, not transformers'."""
    return sorted(p for folder in ("helpers", "scripts", "benchmarks") for p in (REPO_ROOT / folder).glob("*.py")
                  if not p.name.endswith("_side.py"))


def check_notebook(notebook: Path) -> list[str]:
    """A notebook's cells share their imports, as in a running kernel."""
    cells = list(code_cells(notebook))
    imports = library_imports(ast.parse("\n".join(code for _, code in cells)))
    return [problem for label, code in cells for problem in check_code(code, label, imports)]


def test_course_code_uses_only_existing_arguments():
    # Prevents: TypeError "unexpected keyword argument" in a lesson after a library upgrade or from an old tutorial.
    problems = [p for path in python_files() for p in check_code(path.read_text(encoding="utf-8"),
                                                                  str(path.relative_to(REPO_ROOT)))]
    problems += [p for notebook in sorted(REPO_ROOT.glob("notebooks/*.ipynb")) for p in check_notebook(notebook)]
    assert not problems, "\n".join(problems)


def test_the_checker_sees_the_course_calls():
    # Prevents: a drift test that passes because it recognises no call at all.
    # The training path lives in notebook 03 (its "# @save" cells, which helpers/train.py runs); generation in
    # helpers/generation.py.
    notebook = "\n".join(code for _, code in code_cells(REPO_ROOT / "notebooks" / "03_qlora_nekoqa.ipynb"))
    helpers = [(REPO_ROOT / "helpers" / name).read_text(encoding="utf-8") for name in ("train.py", "generation.py")]
    code = "\n".join((notebook, *helpers))
    imports = library_imports(ast.parse(code))
    seen = {c for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Call) for c in callees(node, imports)}
    assert {"trl.SFTConfig", "trl.SFTTrainer", "peft.LoraConfig", "transformers.BitsAndBytesConfig",
            "transformers.AutoModelForCausalLM.from_pretrained", "transformers.GenerationMixin.generate"} <= seen


OLD_TUTORIAL = """
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainingArguments
from trl import SFTConfig, SFTTrainer, DataCollatorForCompletionOnlyLM
from peft import LoraConfig

quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_typ="nf4")
model = AutoModelForCausalLM.from_pretrained("m", torch_dtype="auto", load_in_4bit=True)
tokenizer = AutoTokenizer.from_pretrained("m", use_fast=True)
args = SFTConfig(output_dir="o", max_seq_length=512, gradient_checkpointing=True)
TrainingArguments(output_dir="o", evaluation_strategy="steps")
LoraConfig(r=8, target_module=["q_proj"])
trainer = SFTTrainer(model=model, tokenizer=tokenizer, dataset_text_field="text", packing=True, args=args)
model.generate(max_new_tokens=8, do_sample=False, max_lenght=20)
"""


@pytest.mark.parametrize(
    "expected",
    [
        "AutoModelForCausalLM.from_pretrained(torch_dtype=...) 已弃用，请用 / deprecated, use dtype=",
        "AutoModelForCausalLM.from_pretrained(load_in_4bit=...) 参数不存在",
        "transformers.BitsAndBytesConfig(bnb_4bit_quant_typ=...) 参数不存在",
        "trl.SFTConfig(max_seq_length=...) 参数不存在",
        "trl.SFTConfig(gradient_checkpointing=...) 已弃用，请用 / deprecated, use activation_checkpointing=",
        "transformers.TrainingArguments(evaluation_strategy=...) 参数不存在",
        "peft.LoraConfig(target_module=...) 参数不存在",
        "trl.SFTTrainer(tokenizer=...) 参数不存在",
        "trl.SFTTrainer(dataset_text_field=...) 参数不存在",
        "trl.SFTTrainer(packing=...) 参数不存在",
        "GenerationMixin.generate(max_lenght=...) 参数不存在",
        "trl.DataCollatorForCompletionOnlyLM 不存在",
    ],
)
def test_removed_arguments_of_old_tutorials_are_reported(expected):
    # Prevents: the checker missing exactly the arguments students copy from 2023-2024 tutorials.
    problems = check_code(OLD_TUTORIAL, "old.py")
    assert any(expected in p for p in problems), "\n".join(problems)
    assert not any("use_fast" in p or "do_sample" in p or "max_new_tokens" in p for p in problems)
