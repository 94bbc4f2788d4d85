"""A didi tokenizer in the form ``transformers.AutoTokenizer`` reads: ``tokenizer.json`` (the ``tokenizers`` library's
format) and ``tokenizer_config.json`` (``PreTrainedTokenizerFast``, special tokens, ``[MASK]``).

* BPE and GPT-2: ``tokenizer.json`` is the run's own file (didi reads the same file back); the diffusion [MASK]
  (id ``vocab_size``) is declared in ``tokenizer_config.json``, so that Transformers appends it with that id.
* bytes: a byte-level BPE without merges whose 256 base tokens are the bytes in order (GPT-2's byte-to-character
  table), ``<|endoftext|>`` = 256, ``[MASK]`` = 257: ids and texts are :class:`didi.data.tokenizer.ByteTokenizer`'s.
* proteins: a word-level model over the 29 tokens of :class:`didi.data.tokenizer.ProteinTokenizer` (one token per
  residue; lower case upper-cased, whitespace dropped; an unknown character reads as ``X``, the unknown residue,
  where didi refuses it); special tokens ``<pad> <bos> <eos> <mask>``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.tokenizer import AMINO_ACIDS, EOT, MASK_RESIDUE, MASK_TEXT, Tokenizer
from ..runtime.checkpoint import write_json

TOKENIZER_FILE, TOKENIZER_CONFIG = "tokenizer.json", "tokenizer_config.json"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the alphabet of byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def byte_backend() -> Any:
    """``tokenizers`` tokenizer with didi's byte ids: byte ``b`` is id ``b``, then ``<|endoftext|>``, ``[MASK]``."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(EOT, special=True), AddedToken(MASK_TEXT, special=True)])
    return backend


def protein_backend(tokens: tuple[str, ...]) -> Any:
    """``tokenizers`` tokenizer with didi's protein ids (one token per residue)."""
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    backend = HFTokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=MASK_RESIDUE))
    backend.normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"\s+"), "")]
                                              + [normalizers.Replace(c.lower(), c) for c in AMINO_ACIDS])
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(t, special=True) for t in tokens if t.startswith("<")])
    return backend


def write_hf_tokenizer(tokenizer: Tokenizer, directory: Path, *, mask_id: int, model_length: int) -> dict[str, int]:
    """Write the Transformers files of ``tokenizer`` into ``directory`` (the run's own ``tokenizer.json`` must be
    there already for a BPE); return the special token ids for ``config.json``."""
    directory = Path(directory)
    names: dict[str, str] = {}
    if tokenizer.kind == "byte":
        byte_backend().save(str(directory / TOKENIZER_FILE))
        names = {"bos_token": EOT, "eos_token": EOT, "mask_token": MASK_TEXT}
    elif tokenizer.kind == "protein":
        protein_backend(tokenizer.tokens).save(str(directory / TOKENIZER_FILE))
        names = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "mask_token": "<mask>"}
    else:  # bpe, gpt2: the run's tokenizer.json; Transformers appends [MASK] at id vocab_size
        eot = getattr(tokenizer, "eot", EOT)
        names = {"bos_token": eot, "eos_token": eot, "mask_token": MASK_TEXT}
    ids = {"bos_token": tokenizer.bos_id, "eos_token": tokenizer.eos_id, "pad_token": tokenizer.pad_id,
           "mask_token": mask_id}
    added = {str(ids[role]): {"content": text, "special": True, "lstrip": False, "rstrip": False,
                              "normalized": False, "single_word": False} for role, text in names.items()}
    write_json(directory / TOKENIZER_CONFIG, {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_length,
        "clean_up_tokenization_spaces": False, "added_tokens_decoder": added, **names})
    return {f"{role}_id": ids[role] for role in names}
