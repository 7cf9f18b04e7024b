"""Train the byte-level BPE tokenizer that the locally trained decoder tiers share.

No model hub is reachable here, so every tier's tokenizer is trained from the task texts. It is
saved with `save_pretrained` so that transformers and vLLM both load it from the checkpoint
folder, exactly as they would load a hub model's tokenizer at a GPU site.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = [BOS, EOS, PAD, UNK]


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: Path | None = None,
    *,
    model_max_length: int = 2048,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and wrap it as a transformers fast tokenizer.

    Byte-level means any input string encodes (no unknown characters at serving time), so <unk>
    exists only because transformers and vLLM expect the attribute. When `out_dir` is given the
    tokenizer is saved there with `save_pretrained`.
    """
    backend = Tokenizer(models.BPE(unk_token=UNK))
    # add_prefix_space=False: "answer:" + " abc" must tokenize the same whether the answer is
    # encoded alone (training) or after the prompt (what vLLM generates), so spaces stay explicit.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        # All 256 byte symbols are in the vocabulary even if the corpus never uses them.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    bos_id = backend.token_to_id(BOS)
    # Prepend <s> Llama-style. vLLM encodes prompts with add_special_tokens=True, so putting BOS in
    # the post-processor makes training and serving see identical prompt token ids.
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
        # Batches are right-padded for training; generation goes through vLLM, which never pads.
        padding_side="right",
    )
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer
