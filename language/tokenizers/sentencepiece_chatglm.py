"""ChatGLM-6B (GLM v1, VisualGLM-6B's) and ChatGLM3-6B tokenizers over `sentencepiece`, without
remote code.

THUDM publish both tokenizers as a sentencepiece model plus a `tokenization_chatglm.py` that
transformers can only load with trust_remote_code (and that predates transformers 5). These
two small classes re-implement the published behaviour with the `sentencepiece` package
alone; they offer what this project calls (encode / decode / convert_tokens_to_ids and the
usual *_token_id properties), not the whole PreTrainedTokenizer API.

GlmV1Tokenizer -- `ice_text.model` (THUDM/chatglm-6b, THUDM/visualglm-6b):
- Text ids are the sentencepiece ids plus `num_image_tokens` (tokenizer_config.json; 0 in
  THUDM/visualglm-6b and today's THUDM/chatglm-6b, whose config.json puts [gMASK] at 130001.
  The very first ChatGLM-6B release kept 20000 icetk image ids in front: vocab 150528,
  [gMASK] 150001). Ids below the offset are "<image_N>".
- Before sentencepiece: "\\n" -> "<n>", "\\t" -> "<|tab|>", runs of 2..80 spaces ->
  "<|blank_N|>" (longest first). Those are pieces of the model, so whitespace survives.
- Sentencepiece adds its dummy-prefix space ("▁") in front of the text; `add_dummy_prefix=False`
  encodes "<n>" + text and drops the pieces of that "<n>", as published.
- [MASK] [gMASK] [sMASK] <unused_0> <sop> <eop> <ENC> <dBLOCK> are pieces inside the model;
  their ids come from the model (piece id + offset), so a stand-in model works too.
  `add_special_tokens=True` appends [gMASK] <sop>, as build_inputs_with_special_tokens does.
- decode: the published path turns ids into pieces and the pieces into text
  (DecodePieces), where these special pieces (control pieces) read as nothing; then
  "<n>" / "<|tab|>" / "<|blank_N|>" are turned back into whitespace. Here the special
  pieces are always left out (also from a stand-in model where they are ordinary pieces),
  <pad> too; `skip_special_tokens=True` also drops <unk>, <s>, </s>.

Chatglm3Tokenizer -- `tokenizer.model` (THUDM/chatglm3-6b; ChatGLM2-6B ships the same
class with the first five specials only):
- encode is plain sentencepiece (dummy prefix included: "\\n" is [30910 "▁", 13 <0x0A>]).
- [MASK] [gMASK] [sMASK] sop eop <|system|> <|user|> <|assistant|> <|observation|> are not
  in the model: they get the ids right after its pieces, in that order (64789.. for the real
  one, so [gMASK] 64790). `add_special_tokens=True` prefixes [gMASK] sop.
- unk = pad = sentencepiece's unk (0), bos 1, eos 2 (</s>, the end of an answer).
- decode: the appended specials read as their names, in place (published SPTokenizer.decode);
  `skip_special_tokens=True` drops them and <unk> instead.

Both: text is never scanned for special-token names (the published default; the HF
wrapper's own splitting on its few registered specials is not reproduced). Ids past the
vocabulary (the nets' padded rows, e.g. 130344..130527 or 64798..65023) decode to nothing
instead of raising (the published v1 tokenizer raised there).
"""
from __future__ import annotations

import json
import numbers
import re
from pathlib import Path

V1_MODEL_FILE = "ice_text.model"
V3_MODEL_FILE = "tokenizer.model"
CONFIG_FILE = "tokenizer_config.json"
CHATGLM_TOKENIZER_CLASS = "ChatGLMTokenizer"

V1_SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>")
V1_REQUIRED_PIECES = ("[gMASK]", "<sop>", "<eop>", "<n>")
V3_SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop",
                     "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
V3_TELLTALES = ("[gMASK]", "<|user|>", "<|assistant|>")  # pieces a ChatGLM3 model cannot have

NEWLINE_PIECE = "<n>"
TAB_PIECE = "<|tab|>"
MAX_BLANK_LENGTH = 80
IMAGE_TOKEN = re.compile(r"<image_(\d+)>")


def blank_piece(length: int) -> str:
    """The piece for a run of `length` (2..80) spaces."""
    if length < 2:
        raise ValueError(f"a blank piece covers 2 or more spaces, not {length}")
    return f"<|blank_{length}|>"


# Replacements in the published order: encode maps the longest runs first.
_BLANKS_DOWN = [(" " * n, blank_piece(n)) for n in range(MAX_BLANK_LENGTH, 1, -1)]
_BLANK_PIECE = re.compile(r"<\|blank_(\d+)\|>")

# transformers' clean_up_tokenization, for `decode(..., clean_up_tokenization_spaces=True)`: the
# HF wrapper of ChatGLM-6B left it to transformers' default (ChatGLM3's turns it off); off here.
_CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _load_sentencepiece(model_file: Path):
    try:
        import sentencepiece  # imported late: only ChatGLM folders need it
    except ImportError:
        raise ImportError("ChatGLM tokenizers need the sentencepiece package: "
                          "pip install 'sentencepiece==0.2.*' (see requirements.txt)") from None

    model_file = Path(model_file)
    if not model_file.is_file():
        raise FileNotFoundError(f"no sentencepiece model at {model_file}")
    try:
        return sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    except (RuntimeError, OSError) as error:
        raise ValueError(f"{model_file} is not a sentencepiece model ({error})") from None


def _ids(ids) -> list[int]:
    """One id (int or numpy integer) or a sequence of them -> a list of ints."""
    if isinstance(ids, numbers.Integral):
        return [int(ids)]
    return [int(i) for i in ids]


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    return config if isinstance(config, dict) else {}


class GlmV1Tokenizer:
    """ChatGLM-6B / VisualGLM-6B's `ice_text.model` with the published pre- and post-processing."""

    def __init__(self, model_file, num_image_tokens: int = 0, max_blank_length: int = MAX_BLANK_LENGTH,
                 do_lower_case: bool = False, remove_space: bool = False):
        self.model_file = Path(model_file)
        self.sp = _load_sentencepiece(self.model_file)
        self.num_image_tokens = int(num_image_tokens)
        if self.num_image_tokens < 0:
            raise ValueError(f"num_image_tokens must be >= 0, not {num_image_tokens}")
        if not 2 <= max_blank_length <= MAX_BLANK_LENGTH:
            raise ValueError(f"max_blank_length must be in 2..{MAX_BLANK_LENGTH}, not {max_blank_length}")
        self.max_blank_length = max_blank_length
        self.do_lower_case, self.remove_space = do_lower_case, remove_space
        missing = [piece for piece in V1_REQUIRED_PIECES if self._piece_id(piece) is None]
        if missing:
            raise ValueError(f"{self.model_file} is not ChatGLM-6B's ice_text.model: it has no "
                             f"{', '.join(missing)} piece(s) (an icetk-era model without the special pieces, "
                             "or another model's file)")
        self.special_tokens = {token: self._piece_id(token) + self.num_image_tokens
                               for token in V1_SPECIAL_TOKENS if self._piece_id(token) is not None}
        self._dropped = frozenset(self.special_tokens.values()) | self._optional_ids("<pad>")
        self._skipped = self._dropped | frozenset(
            i + self.num_image_tokens for i in (self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id()) if i >= 0)
        self._prefix_pieces = len(self.sp.encode(NEWLINE_PIECE))  # "▁" "<n>": what add_dummy_prefix=False drops

    @classmethod
    def from_folder(cls, folder) -> "GlmV1Tokenizer":
        """`folder`/ice_text.model with the settings of `folder`/tokenizer_config.json."""
        folder = Path(folder)
        config = _read_config(folder)
        return cls(folder / V1_MODEL_FILE, num_image_tokens=config.get("num_image_tokens", 0),
                   do_lower_case=bool(config.get("do_lower_case", False)),
                   remove_space=bool(config.get("remove_space", False)))

    # ---------------------------------------------------------------- vocabulary

    def _piece_id(self, piece: str) -> int | None:
        found = self.sp.piece_to_id(piece)
        return found if self.sp.id_to_piece(found) == piece else None

    def _optional_ids(self, *pieces: str) -> frozenset[int]:
        return frozenset(found + self.num_image_tokens for found in map(self._piece_id, pieces) if found is not None)

    @property
    def vocab_size(self) -> int:
        """Image ids + sentencepiece pieces (130344 for the real model with offset 0)."""
        return self.num_image_tokens + self.sp.get_piece_size()

    def __len__(self) -> int:
        return self.vocab_size

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(token) for token in tokens]

    def _token_to_id(self, token: str) -> int:
        image = IMAGE_TOKEN.fullmatch(token)
        if image:
            return int(image.group(1))
        return self.sp.piece_to_id(token) + self.num_image_tokens  # unknown: <unk>'s id, as published

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, numbers.Integral):
            return self._id_to_token(int(ids))
        return [self._id_to_token(i) for i in _ids(ids)]

    def _id_to_token(self, index: int) -> str:
        if 0 <= index < self.num_image_tokens:
            return f"<image_{index}>"
        if not 0 <= index < self.vocab_size:
            raise IndexError(f"token id {index} is outside the vocabulary of {self.vocab_size}")
        return self.sp.id_to_piece(index - self.num_image_tokens)

    def _id(self, piece: str) -> int | None:
        found = self._piece_id(piece)
        return None if found is None else found + self.num_image_tokens

    @property
    def unk_token_id(self) -> int:
        return self.sp.unk_id() + self.num_image_tokens

    @property
    def pad_token_id(self) -> int | None:
        return self._id("<pad>")

    @property
    def bos_token_id(self) -> int:
        return self.special_tokens["<sop>"]

    @property
    def eos_token_id(self) -> int:
        """<eop>: the end of an answer (the published eos_token)."""
        return self.special_tokens["<eop>"]

    eop_token_id = eos_token_id

    @property
    def end_token_id(self) -> int | None:
        """</s>, the published `end_token`."""
        return self._id("</s>")

    @property
    def gmask_token_id(self) -> int:
        return self.special_tokens["[gMASK]"]

    @property
    def mask_token_id(self) -> int | None:
        return self.special_tokens.get("[MASK]")

    @property
    def all_special_ids(self) -> list[int]:
        return sorted(self._skipped)

    # ---------------------------------------------------------------- text

    def _preprocess(self, text: str) -> str:
        if self.remove_space:
            text = " ".join(text.strip().split())
        if self.do_lower_case:
            text = text.lower()
        text = text.replace("\n", NEWLINE_PIECE).replace("\t", TAB_PIECE)
        for spaces, piece in _BLANKS_DOWN[MAX_BLANK_LENGTH - self.max_blank_length:]:
            text = text.replace(spaces, piece)
        return text

    def _postprocess(self, text: str) -> str:
        text = text.replace(NEWLINE_PIECE, "\n").replace(TAB_PIECE, "\t")

        def spaces(match: re.Match) -> str:
            n = int(match.group(1))
            return " " * n if 2 <= n <= self.max_blank_length else match.group(0)

        return _BLANK_PIECE.sub(spaces, text)

    def tokenize(self, text: str, add_dummy_prefix: bool = True) -> list[str]:
        return [self._id_to_token(i) for i in self.encode(text, add_dummy_prefix=add_dummy_prefix)]

    def encode(self, text: str, add_special_tokens: bool = False, add_dummy_prefix: bool = True) -> list[int]:
        text = self._preprocess(text)
        if add_dummy_prefix:
            ids = self.sp.encode(text)
        else:
            ids = self.sp.encode(NEWLINE_PIECE + text)[self._prefix_pieces:]
        ids = [i + self.num_image_tokens for i in ids]
        if add_special_tokens:
            ids += [self.gmask_token_id, self.bos_token_id]
        return ids

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool = False,
               **_ignored) -> str:
        """Text of `ids`. Image ids, ids past the vocabulary, <pad> and the special pieces read as
        nothing; `skip_special_tokens` also drops <unk>, <s>, </s>."""
        dropped = self._skipped if skip_special_tokens else self._dropped
        pieces = [i - self.num_image_tokens for i in _ids(ids)
                  if self.num_image_tokens <= i < self.vocab_size and i not in dropped]
        text = self._postprocess(self.sp.decode(pieces)) if pieces else ""
        if clean_up_tokenization_spaces:
            for before, after in _CLEANUPS:
                text = text.replace(before, after)
        return text

    def __repr__(self) -> str:
        return (f"GlmV1Tokenizer({str(self.model_file)!r}, num_image_tokens={self.num_image_tokens}, "
                f"vocab_size={self.vocab_size})")


class Chatglm3Tokenizer:
    """ChatGLM3-6B's `tokenizer.model` with its special tokens appended after the pieces."""

    def __init__(self, model_file):
        self.model_file = Path(model_file)
        self.sp = _load_sentencepiece(self.model_file)
        pieces = self.sp.get_piece_size()
        if self.sp.vocab_size() != pieces:
            raise ValueError(f"{self.model_file}: vocab_size {self.sp.vocab_size()} != piece size {pieces}")
        # "sop" / "eop" could be ordinary pieces of a real vocabulary; these names cannot
        taken = [token for token in V3_TELLTALES if self.sp.id_to_piece(self.sp.piece_to_id(token)) == token]
        if taken:
            raise ValueError(f"{self.model_file} already has {', '.join(taken)} as pieces: not ChatGLM3's "
                             "tokenizer.model (its special tokens come after the pieces; ChatGLM-6B's "
                             f"model is {V1_MODEL_FILE})")
        self.special_tokens = {token: pieces + i for i, token in enumerate(V3_SPECIAL_TOKENS)}
        self.index_special_tokens = {i: token for token, i in self.special_tokens.items()}
        self._skipped = frozenset(self.index_special_tokens) | frozenset(
            i for i in (self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id()) if i >= 0)

    @classmethod
    def from_folder(cls, folder) -> "Chatglm3Tokenizer":
        return cls(Path(folder) / V3_MODEL_FILE)

    # ---------------------------------------------------------------- vocabulary

    @property
    def vocab_size(self) -> int:
        """Pieces + the nine specials (64798 for the real model; the nets pad to 65024)."""
        return self.sp.get_piece_size() + len(V3_SPECIAL_TOKENS)

    def __len__(self) -> int:
        return self.vocab_size

    def get_command(self, token: str) -> int:
        """Published name for a special id: "<bos>" "<eos>" "<unk>" "<pad>" or one of the specials."""
        commands = {"<bos>": self.bos_token_id, "<eos>": self.eos_token_id,
                    "<unk>": self.unk_token_id, "<pad>": self.pad_token_id}
        if token in commands:
            return commands[token]
        if token not in self.special_tokens:
            raise KeyError(f"{token} is not a special token of ChatGLM3")
        return self.special_tokens[token]

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(token) for token in tokens]

    def _token_to_id(self, token: str) -> int:
        if token in self.special_tokens:
            return self.special_tokens[token]
        return self.sp.piece_to_id(token)  # unknown: <unk>'s id

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, numbers.Integral):
            return self._id_to_token(int(ids))
        return [self._id_to_token(i) for i in _ids(ids)]

    def _id_to_token(self, index: int) -> str:
        if index in self.index_special_tokens:
            return self.index_special_tokens[index]
        if not 0 <= index < self.sp.get_piece_size():
            raise IndexError(f"token id {index} is outside the vocabulary of {self.vocab_size}")
        return self.sp.id_to_piece(index)

    @property
    def unk_token_id(self) -> int:
        return self.sp.unk_id()

    @property
    def pad_token_id(self) -> int:
        return self.sp.unk_id()  # published: pad is unk

    @property
    def bos_token_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_token_id(self) -> int:
        return self.sp.eos_id()

    @property
    def gmask_token_id(self) -> int:
        return self.special_tokens["[gMASK]"]

    @property
    def all_special_ids(self) -> list[int]:
        return sorted(self._skipped)

    # ---------------------------------------------------------------- text

    def tokenize(self, text: str) -> list[str]:
        return self.sp.encode(text, out_type=str)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        if add_special_tokens:
            ids = [self.special_tokens["[gMASK]"], self.special_tokens["sop"]] + ids
        return ids

    def decode(self, ids, skip_special_tokens: bool = False, **_ignored) -> str:
        """Text of `ids`, the specials by name in place (dropped, with <unk>, when
        `skip_special_tokens`); ids past the vocabulary read as nothing."""
        pieces_end = self.sp.get_piece_size()
        text, run = [], []
        for i in _ids(ids):
            if skip_special_tokens and i in self._skipped:
                continue
            if i in self.index_special_tokens:
                if run:
                    text.append(self.sp.decode(run))
                    run = []
                text.append(self.index_special_tokens[i])
            elif 0 <= i < pieces_end:
                run.append(i)
        if run:
            text.append(self.sp.decode(run))
        return "".join(text)

    def __repr__(self) -> str:
        return f"Chatglm3Tokenizer({str(self.model_file)!r}, vocab_size={self.vocab_size})"


# -------------------------------------------------------------------- folders

def chatglm_kind(folder) -> str | None:
    """"glm" (ice_text.model), "chatglm3" (tokenizer.model + a tokenizer_config.json naming
    ChatGLMTokenizer) or None (not a ChatGLM sentencepiece folder). A config naming
    ChatGLMTokenizer without either model file is an error."""
    folder = Path(folder)
    if (folder / V1_MODEL_FILE).is_file():
        return "glm"
    config = _read_config(folder)
    if config.get("tokenizer_class") != CHATGLM_TOKENIZER_CLASS:
        return None
    if (folder / V3_MODEL_FILE).is_file():
        return "chatglm3"
    raise FileNotFoundError(f"{folder}/{CONFIG_FILE} names {CHATGLM_TOKENIZER_CLASS}, but the folder holds "
                            f"neither {V1_MODEL_FILE} (ChatGLM-6B / VisualGLM-6B) nor {V3_MODEL_FILE} (ChatGLM3-6B)")


def load_chatglm_tokenizer(folder) -> GlmV1Tokenizer | Chatglm3Tokenizer | None:
    """The wrapper for a ChatGLM tokenizer folder, or None when it is not one."""
    kind = chatglm_kind(folder)
    if kind == "glm":
        return GlmV1Tokenizer.from_folder(folder)
    if kind == "chatglm3":
        return Chatglm3Tokenizer.from_folder(folder)
    return None


__all__ = ["GlmV1Tokenizer", "Chatglm3Tokenizer", "chatglm_kind", "load_chatglm_tokenizer",
           "blank_piece", "V1_SPECIAL_TOKENS", "V3_SPECIAL_TOKENS"]
