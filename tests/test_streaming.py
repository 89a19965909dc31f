from language.streaming import REPLACEMENT, TextStream
from token_config import load_tokenizer

TOKENIZER = load_tokenizer("smollm2-135m-instruct")


def stream_all(text: str) -> list[str]:
    stream = TextStream(TOKENIZER)
    deltas = [stream.push(t) for t in TOKENIZER.encode(text, add_special_tokens=False)]
    deltas.append(stream.flush())
    return deltas


def test_multibyte_characters_are_never_split():
    text = "Bonjour 你好世界 🙂 ça va? Привет"
    ids = TOKENIZER.encode(text, add_special_tokens=False)
    pieces = [TOKENIZER.decode([i]) for i in ids]
    assert any(REPLACEMENT in p for p in pieces)  # the tokenizer really does cut characters
    deltas = stream_all(text)
    assert all(REPLACEMENT not in d for d in deltas)
    assert "".join(deltas) == text


def test_special_tokens_are_not_shown():
    stream = TextStream(TOKENIZER)
    ids = TOKENIZER.encode("Hi", add_special_tokens=False) + [TOKENIZER.convert_tokens_to_ids("<|im_end|>")]
    assert "".join(stream.push(i) for i in ids) + stream.flush() == "Hi"
