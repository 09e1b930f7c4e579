"""A model with internlm2_5-1_8b-chat's shapes and random weights, for speed and memory figures.

The real weights cannot reach the lent GPU machine (no network, 64 MiB per call). Speed and
memory depend on the shapes, not the values, so this builds them from the model's public
config in the Llama layout (InternLM2 is Llama with fused QKV): hidden 2048, 24 layers,
16 attention heads, 8 KV heads, intermediate 8192, vocabulary 92,544, RoPE theta 1e6.
The tokenizer is a small byte-level BPE trained on the knowledge base (token ids stay below
the vocabulary size); with random weights the answers are noise, which `ignore_eos` makes
exactly as long as asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

SHAPES = {
    "vocab_size": 92544,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "rope_theta": 1_000_000.0,
    "tie_word_embeddings": False,
}
SPECIAL = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(texts: Sequence[str], out: Path, vocab: int = 8000) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.save_pretrained(str(out))


def build_model(texts: Sequence[str], out: Path) -> int:
    """Writes a bf16 model folder; returns its parameter count."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(texts, out)
    config = LlamaConfig(**SHAPES, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    if isinstance(getattr(config, "rope_parameters", None), dict):  # transformers 5 keeps theta here
        config.rope_parameters["rope_theta"] = SHAPES["rope_theta"]
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.config.torch_dtype = torch.bfloat16
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1)
    model.save_pretrained(str(out), safe_serialization=True)
    count = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    return count


def main() -> None:
    import argparse

    from rag.ingest.documents import read_document

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--texts", type=Path, required=True, help="a folder of documents to train the tokenizer on")
    args = parser.parse_args()
    texts = ["\n\n".join(p.text for p in read_document(path).parts) for path in sorted(args.texts.iterdir()) if path.is_file()]
    print(build_model(texts, args.out))


if __name__ == "__main__":
    main()
