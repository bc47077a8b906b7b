"""Tiny models of each architecture, built from a config and a locally trained tokenizer, saved to a folder.

Tests load them back with the ordinary `from_pretrained(path)`, the same path real hub models take.
"""

from pathlib import Path

import torch

CORPUS = [
    "#Person1#: Hello, how are you doing today?",
    "#Person2#: I am good, thanks. What about you?",
    "#Person1#: I hate mondays, they are bad and boring.",
    "#Person2#: I love music and good food with friends.",
    "Summarize the following conversation.",
    "Summary: the two people talk about their day.",
    "They agree to meet tomorrow at the park at three.",
    "#Person1#: Let's go workout later today.",
    "#Person2#: Sure. What time do you want to go?",
    "The weather is nice and the sun is shining.",
    "You are stupid and I hate you.",
    "Thank you so much, that is very kind.",
    "0123456789 .,!?'\"-:;()",
]

LLAMA_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIALS = {
    "t5": ["<pad>", "</s>", "<unk>"],
    "llama": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
}


def build_tokenizer(kind: str):
    """A byte-level BPE (every string round-trips) with the special tokens of the given family."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIALS[kind]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    if kind == "t5":
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    if kind == "roberta":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<s>",
            pad_token="<pad>",
            eos_token="</s>",
            unk_token="<unk>",
            mask_token="<mask>",
        )
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    out.chat_template = LLAMA_CHAT_TEMPLATE
    return out


def build_tiny_t5(path: Path, seed: int = 0) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    tok = build_tokenizer("t5")
    config = T5Config(
        vocab_size=len(tok),
        d_model=32,
        d_ff=64,
        d_kv=16,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        dropout_rate=0.1,
        feed_forward_proj="relu",
    )
    torch.manual_seed(seed)
    return _save(T5ForConditionalGeneration(config), tok, path)


def build_tiny_llama(path: Path, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer("llama")
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        attention_dropout=0.0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return _save(LlamaForCausalLM(config), tok, path)


def build_tiny_roberta_classifier(path: Path, labels: tuple[str, ...] = ("nothate", "hate"), seed: int = 0) -> Path:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    tok = build_tokenizer("roberta")
    config = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=514,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    tok.model_max_length = 512
    torch.manual_seed(seed)
    return _save(RobertaForSequenceClassification(config), tok, path)


def _save(model, tok, path: Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
