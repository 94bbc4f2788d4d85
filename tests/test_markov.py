"""The synthetic Markov language (exact metrics) and the byte tokenizer."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from didi.data.corpora import DataConfig, build_tokenizer, load_corpus
from didi.data.markov import MARKOV_CORPUS, MarkovLanguage, markov_metrics, transition_counts
from didi.data.tokenizer import ByteTokenizer, load_tokenizer


def test_language_is_deterministic_sparse_and_irreducible():
    a, b = MarkovLanguage.build(seed=3), MarkovLanguage.build(seed=3)
    assert np.array_equal(a.transitions, b.transitions)
    assert not np.array_equal(a.transitions, MarkovLanguage.build(seed=4).transitions)
    t = a.transitions
    assert t.shape == (48, 48) and np.allclose(t.sum(1), 1.0)
    assert ((t > 0).sum(1) == 3).all()
    assert (np.linalg.matrix_power(t, 4 * 48) > 0).all()  # irreducible and aperiodic: one stationary law
    pi = a.stationary()
    assert np.allclose(pi @ t, pi) and abs(pi.sum() - 1) < 1e-12


def test_generated_text_follows_the_chain():
    language = MarkovLanguage.build(seed=0)
    docs = language.generate(40, 2000, seed=1)
    assert len(docs) == 40 and all(len(d) == 2000 and set(d) <= set(language.letters) for d in docs)
    m = markov_metrics(language, docs)
    assert m["invalid_rate"] == 0.0 and m["transitions"] == 40 * 1999
    # the empirical conditional entropy and the mean NLL both estimate the entropy rate
    assert abs(m["conditional_entropy"] - language.entropy_rate()) < 0.03
    assert abs(m["nll_per_transition"] - language.entropy_rate()) < 0.03
    counts = transition_counts(language, docs)
    assert np.allclose(counts / counts.sum(1, keepdims=True), language.transitions, atol=0.1)


def test_metrics_count_invalid_transitions_exactly():
    language = MarkovLanguage.build(seed=0)
    letters, t = language.letters, language.transitions
    a = 0
    valid_b, invalid_b = int(np.flatnonzero(t[a] > 0)[0]), int(np.flatnonzero(t[a] == 0)[0])
    row = letters[a] + letters[valid_b] + " " + letters[a] + letters[invalid_b]  # the space breaks the run
    m = markov_metrics(language, [row])
    assert m["transitions"] == 2 and m["invalid_rate"] == 0.5
    assert m["nll_per_transition"] == pytest.approx(-np.log(t[a, valid_b]))
    # byte-tokenizer ids give the same counts; end-of-text (256) and [MASK] (257) break runs like the space
    ids = [ord(c) for c in letters[a] + letters[valid_b]] + [256] + [ord(c) for c in letters[a] + letters[invalid_b]]
    assert markov_metrics(language, [ids]) == m
    assert markov_metrics(language, [ids[:2] + [257] + ids[3:]]) == m


def test_markov_corpus_is_registered_with_its_language():
    corpus = load_corpus(DataConfig(data="markov"))
    assert len(corpus.train) == MARKOV_CORPUS["train_documents"]
    assert len(corpus.valid) == MARKOV_CORPUS["valid_documents"]
    assert isinstance(build_tokenizer(DataConfig(data="markov"), corpus), ByteTokenizer)
    language = MarkovLanguage.from_json(json.loads(corpus.run_files["markov.json"]))
    assert markov_metrics(language, corpus.valid[:5])["invalid_rate"] == 0.0


@settings(max_examples=50, deadline=None)
@given(st.text())
def test_byte_tokenizer_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids) and tok.decode(ids) == text
    with_ends = tok.encode("<|endoftext|>" + text + "<|endoftext|>")
    assert with_ends == [256, *ids, 256] and tok.decode(with_ends) == "<|endoftext|>" + text + "<|endoftext|>"


def test_byte_tokenizer_specials_and_spec(tmp_path):
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.diffusion_mask_id, tok.model_vocab_size) == (257, 256, 256,
                                                                                                       257, 258)
    assert tok.decode([104, 105, 256, 257]) == "hi<|endoftext|>[MASK]"
    assert tok.encode(tok.decode([256, 104, 256, 256, 105, 256])) == [256, 104, 256, 256, 105, 256]
    again = load_tokenizer(tmp_path, tok.save(tmp_path))
    assert isinstance(again, ByteTokenizer) and again.encode("é") == [195, 169]
