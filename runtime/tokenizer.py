"""Instruction tokenizer: a Hugging Face `tokenizers` file that travels in the bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from edgevla.runtime.errors import InferenceInputError

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"


def vocabulary_problem(tokenizer: Tokenizer, vocab_size: int) -> str | None:
    """Why `tokenizer` cannot feed a model with `vocab_size` embedding rows, or None if it can.

    An id at or past `vocab_size` would index past the embedding table: onnxruntime's Gather
    then fails or reads out of bounds, depending on the provider.
    """
    missing = [t for t in (PAD_TOKEN, UNK_TOKEN) if tokenizer.token_to_id(t) is None]
    if missing:
        return f"lacks the {' and '.join(missing)} token"
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    top = max(tokenizer.get_vocab(with_added_tokens=True).values())
    if size > vocab_size or top >= vocab_size:
        return (
            f"has {size} tokens (highest id {top}) but the model embeds only {vocab_size} "
            "(model.vocab_size)"
        )
    return None


class InstructionTokenizer:
    """Turns an instruction into fixed-length ids and a validity mask for the prefix graph."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int) -> None:
        pad_id = tokenizer.token_to_id(PAD_TOKEN)
        unk_id = tokenizer.token_to_id(UNK_TOKEN)
        if pad_id is None or unk_id is None:
            raise InferenceInputError(f"tokenizer lacks the {PAD_TOKEN} or {UNK_TOKEN} token")
        self._tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.pad_id = pad_id
        self.unk_id = unk_id

    @classmethod
    def from_file(cls, path: Path, max_tokens: int) -> InstructionTokenizer:
        return cls(Tokenizer.from_file(str(path)), max_tokens)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def tokens(self, instruction: str) -> list[str]:
        return self._tokenizer.encode(instruction).tokens

    def encode(self, instruction: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (ids int64 [1, T], mask bool [1, T]); refuses instructions longer than T."""
        if not isinstance(instruction, str):
            raise InferenceInputError(
                f"instruction must be a str, got {type(instruction).__name__}"
            )
        ids = self._tokenizer.encode(instruction).ids
        if len(ids) > self.max_tokens:
            raise InferenceInputError(
                f"instruction has {len(ids)} tokens; this bundle takes at most {self.max_tokens}: "
                f"{instruction!r}"
            )
        out = np.full((1, self.max_tokens), self.pad_id, dtype=np.int64)
        mask = np.zeros((1, self.max_tokens), dtype=bool)
        out[0, : len(ids)] = ids
        mask[0, : len(ids)] = True
        return out, mask
