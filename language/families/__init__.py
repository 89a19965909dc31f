"""Model families by name; the model's config.json says which one it needs."""
from __future__ import annotations

from language.families.base import Family, Prompt, Turn
from language.families.chatglm3 import Chatglm3Family
from language.families.glm import GlmFamily
from language.families.llama import LlamaFamily

FAMILIES = {"llama": LlamaFamily, "glm": GlmFamily, "chatglm3": Chatglm3Family}


def load_family(name: str, tokenizer) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name](tokenizer)


__all__ = ["Family", "Prompt", "Turn", "load_family", "FAMILIES"]
