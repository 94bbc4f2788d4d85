"""Text and protein data: tokenizers (:mod:`.tokenizer`), FASTA files and protein metrics (:mod:`.protein`),
corpora, packing and batches (:mod:`.corpora`). Imports only :mod:`didi.runtime` and below."""
