import pytest

from helpers.encoding import encode_conversations
from helpers.templates import (
    IGNORE_INDEX,
    TemplateError,
    encode_with_label_mask,
    get_template,
    label_mask_text,
    render_chatml,
)

SYSTEM = {"role": "system", "content": "你是一只猫娘。"}
TURNS = [
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "主人好喵~"},
    {"role": "user", "content": "今天吃什么？"},
    {"role": "assistant", "content": "吃小鱼干的说喵。"},
]
SMOL_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.mark.parametrize("messages", [[SYSTEM, *TURNS], TURNS, TURNS[:1]])
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_handwritten_chatml_equals_apply_chat_template(tiny_tokenizer, messages, generation_prompt):
    # Prevents: teaching a template that differs from what the model was trained on.
    official = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    assert render_chatml(messages, generation_prompt, default_system=SMOL_DEFAULT_SYSTEM) == official


def test_single_turn_labels_are_prompt_masked_then_response(tiny_tokenizer):
    # Prevents: learning the user's question, or dropping the end-of-turn token.
    messages = [SYSTEM, *TURNS[:2]]
    encoded = encode_with_label_mask(tiny_tokenizer, messages)
    expected_ids = tiny_tokenizer.apply_chat_template(messages)["input_ids"]
    prompt = tiny_tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True)["input_ids"]
    response = tiny_tokenizer("主人好喵~<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert encoded["input_ids"] == expected_ids
    assert encoded["labels"] == [IGNORE_INDEX] * len(prompt) + response
    assert encoded["attention_mask"] == [1] * len(expected_ids)


def test_every_assistant_turn_is_learned_in_multi_turn(tiny_tokenizer):
    messages = [SYSTEM, *TURNS]
    encoded = encode_with_label_mask(tiny_tokenizer, messages)
    assert encoded["input_ids"] == tiny_tokenizer.apply_chat_template(messages)["input_ids"]
    learned = tiny_tokenizer.decode([t for t in encoded["labels"] if t != IGNORE_INDEX])
    assert learned == "主人好喵~<|im_end|>\n吃小鱼干的说喵。<|im_end|>\n"
    eos = tiny_tokenizer.eos_token_id
    assert encoded["labels"].count(eos) == 2  # the model learns to stop after each reply


def test_conversation_without_reply_is_an_error_not_a_zero_loss(tiny_tokenizer):
    # Prevents: all labels -100, loss 0, nothing learned and no error.
    with pytest.raises(TemplateError, match="assistant"):
        encode_with_label_mask(tiny_tokenizer, [SYSTEM, TURNS[0]])


def test_unknown_template_lists_known_ones():
    with pytest.raises(TemplateError, match="llama2, llama3, chatml"):
        get_template("alpaca-ish")


def test_llama_templates_put_system_and_stops_where_expected():
    llama2 = get_template("llama2").render([SYSTEM, *TURNS[:2]])
    assert llama2 == "<s>[INST] <<SYS>>\n你是一只猫娘。\n<</SYS>>\n\n你好 [/INST] 主人好喵~ </s>"
    llama3 = get_template("llama3").render([SYSTEM, TURNS[0]], add_generation_prompt=True)
    assert llama3.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n你是一只猫娘。<|eot_id|>")
    assert llama3.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_mask_text_view_marks_learned_runs(tiny_tokenizer):
    encoded = encode_with_label_mask(tiny_tokenizer, [SYSTEM, *TURNS[:2]])
    lines = label_mask_text(tiny_tokenizer, encoded["input_ids"], encoded["labels"]).splitlines()
    assert len(lines) == 2 and lines[0].startswith("[忽略") and lines[1].startswith("[学习")


PADDED = [TURNS[0], {"role": "assistant", "content": "  主人好喵~\n"}]


def test_padded_reply_is_named_not_blamed_on_the_template(tiny_tokenizer):
    # Prevents: "this chat template rewrites earlier turns" when the real cause is "  reply\n" in the caller's data.
    with pytest.raises(TemplateError) as failure:
        encode_with_label_mask(tiny_tokenizer, PADDED)
    zh, en = str(failure.value).split("\n")
    assert "第 2 轮 assistant 开头有 '  '、结尾有 '\\n'" in zh
    assert "Leading/trailing whitespace in the messages (turn 2 (assistant) starts with '  ', ends with '\\n')" in en
    assert "rewrites" not in en
    with pytest.raises(TemplateError, match=r"conversation 2: Leading/trailing whitespace .*turn 2 \(assistant\)"):
        encode_conversations(tiny_tokenizer, [TURNS[:2], PADDED], 10_000)


def test_a_template_that_rewrites_earlier_turns_is_still_reported_as_such(tiny_tokenizer):
    # Prevents: blaming whitespace when stripping it would not help (a template dropping earlier replies).
    from transformers import AutoTokenizer

    rewriting = AutoTokenizer.from_pretrained(tiny_tokenizer.name_or_path)
    rewriting.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
        "{{ m['content'] if loop.last or m['role'] != 'assistant' else '...' }}{{ '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    with pytest.raises(TemplateError, match="rewrites earlier turns"):
        encode_with_label_mask(rewriting, [*PADDED, *TURNS[2:]])
