from language.streaming import REPLACEMENT, StopAt, TextStream
from language.tokenizers import load_tokenizer

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


def stop_at(text: str, stops: tuple[str, ...]) -> tuple[list[str], StopAt]:
    stream = StopAt(TextStream(TOKENIZER), stops)
    deltas = []
    for token in TOKENIZER.encode(text, add_special_tokens=False):
        deltas.append(stream.push(token))
        if stream.stopped:
            break
    deltas.append(stream.flush())
    return deltas, stream


def test_text_ends_before_a_stop_string_and_no_part_of_it_is_streamed():
    deltas, stream = stop_at("The cat sat on the mat. The end.", ("on the", "zebra"))
    assert stream.stopped and "".join(deltas) == "The cat sat " == stream.text
    assert not any("o" in d for d in deltas)  # "on the" was held back, never half-sent


def test_without_a_stop_string_everything_streams():
    deltas, stream = stop_at("The cat sat on the mat.", ("zebra",))
    assert not stream.stopped and "".join(deltas) == "The cat sat on the mat."
    assert len([d for d in deltas if d]) > 3  # held back only a few characters at a time
