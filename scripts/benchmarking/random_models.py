"""Models of the real architectures and published folder layouts with random
weights: what the benchmarks time (speed does not depend on the weights) and
what the tests load through the very functions users call, without a download.

DNABERT-S: this project's architecture, its published config.json (with the
auto_map to remote code that the loader ignores), the published weight key
names and a BPE tokenizer trained on random DNA in its form. FastESM2_650 and
ESM2-3B: ESM-2 masked-LM folders ('esm.' keys); FastESM2_650's config says
``model_type: fast_esm`` with an auto_map, as FastPLMs writes it.
"""
from __future__ import annotations

import json
import os
import random

import torch

from virnucpro.models.dnabert_s import DnabertConfig, DnabertModel
from virnucpro.models.esm2 import Esm2Config, Esm2Model
from virnucpro.models.loaders import ESM2_ALPHABET

# Real shapes: (hidden, layers, heads, intermediate)
DNABERT_S_SHAPE = (768, 12, 12, 3072)
FASTESM2_650_SHAPE = (1280, 33, 20, 5120)
ESM2_3B_SHAPE = (2560, 36, 40, 10240)


# DNABERT-S's config.json as published (zhihan1996/DNABERT-S), less the shape fields.
DNABERT_S_CONFIG = {
    "_name_or_path": "zhihan1996/DNABERT-2-117M", "alibi_starting_size": 512, "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.0,
    "auto_map": {"AutoConfig": "configuration_bert.BertConfig", "AutoModel": "bert_layers.BertModel",
                 "AutoModelForMaskedLM": "bert_layers.BertForMaskedLM",
                 "AutoModelForSequenceClassification": "bert_layers.BertForSequenceClassification"},
    "classifier_dropout": None, "gradient_checkpointing": False, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "initializer_range": 0.02, "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
    "pad_token_id": 0, "position_embedding_type": "absolute", "torch_dtype": "float32",
    "transformers_version": "4.28.0", "type_vocab_size": 2, "use_cache": True,
}


def save_dna_tokenizer(folder, vocab_size=4096, seed=0):
    """A BPE tokenizer trained on random DNA, in DNABERT-S's form: [UNK]=0,
    [CLS]=1, [SEP]=2, [PAD]=3, [MASK]=4, whitespace pre-tokenizer, [CLS] x [SEP]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    rng = random.Random(seed)
    corpus = ["".join(rng.choices("ACGT", k=500)) for _ in range(2000)]
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                              show_progress=False))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(folder)
    return fast


def random_dnabert(shape, vocab_size, seed=0, device="cpu"):
    """Our DNABERT-S architecture with random weights (BERT's N(0, 0.02) init), made on ``device``."""
    hidden, layers, heads, intermediate = shape
    torch.manual_seed(seed)
    with torch.device(device):
        model = DnabertModel(DnabertConfig(
            vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=intermediate))
        return initialised(model)


def save_random_dnabert(folder, shape, vocab_size=4096, seed=0):
    """A folder in DNABERT-S's published layout (config.json with its auto_map,
    pytorch_model.bin with the published key names, tokenizer.json) that
    load_dnabert_s reads."""
    tokenizer = save_dna_tokenizer(folder, vocab_size, seed)
    return save_random_dnabert_weights(folder, shape, len(tokenizer), seed)


def save_random_dnabert_weights(folder, shape, vocab_size, seed=0):
    """DNABERT-S's config.json and pytorch_model.bin of random weights into ``folder`` (beside a tokenizer of
    ``vocab_size`` tokens, DNABERT-S's real one say)."""
    model = random_dnabert(shape, vocab_size, seed)
    hidden, layers, heads, intermediate = shape
    config = {**DNABERT_S_CONFIG, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
              "intermediate_size": intermediate, "vocab_size": vocab_size}
    with open(os.path.join(folder, "config.json"), "w") as handle:
        json.dump(config, handle, indent=2)
    torch.save(model.state_dict(), os.path.join(folder, "pytorch_model.bin"))
    return folder


def random_esm(shape, seed=0, device="cpu"):
    """Our ESM-2 of ``shape`` with random weights (rotary positions, token dropout, 33 tokens), made on
    ``device``: what the benchmarks time."""
    hidden, layers, heads, intermediate = shape
    torch.manual_seed(seed)
    with torch.device(device):
        model = Esm2Model(Esm2Config(vocab_size=len(ESM2_ALPHABET), hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=intermediate, layer_norm_eps=1e-5,
                                     token_dropout=True, mask_token_id=32, position_embedding_type="rotary",
                                     emb_layer_norm_before=False))
        return initialised(model)


def initialised(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in eval mode with BERT's initialisation: LayerNorms 1 and 0, every other tensor N(0, 0.02)."""
    for name, parameter in model.named_parameters():
        if "layernorm" in name.lower() or "layer_norm" in name:
            torch.nn.init.constant_(parameter, 1.0 if name.endswith("weight") else 0.0)
        else:
            torch.nn.init.normal_(parameter, std=0.02)
    return model.eval()


def random_esm_masked_lm(shape, seed=0):
    """transformers' ESM-2 masked LM of ``shape`` with random weights: what writes the published layout
    (``esm.`` keys, the heads, config.json) of facebook's ESM-2 folders."""
    from transformers import EsmConfig, EsmForMaskedLM

    hidden, layers, heads, intermediate = shape
    torch.manual_seed(seed)
    config = EsmConfig(vocab_size=len(ESM2_ALPHABET), hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=1026,
                       position_embedding_type="rotary", token_dropout=True, mask_token_id=32, pad_token_id=1,
                       emb_layer_norm_before=False, layer_norm_eps=1e-5)
    return EsmForMaskedLM(config).eval()


# What FastPLMs writes into FastESM2_650's config.json: its own model type and remote code.
FASTESM_CONFIG_KEYS = {
    "model_type": "fast_esm", "architectures": ["FastEsmForMaskedLM"],
    "auto_map": {"AutoConfig": "modeling_fastesm.FastEsmConfig", "AutoModel": "modeling_fastesm.FastEsmModel",
                 "AutoModelForMaskedLM": "modeling_fastesm.FastEsmForMaskedLM"},
}


def save_random_esm(folder, shape, seed=0, fast_esm=False):
    """An ESM-2 masked-LM folder ('esm.' keys), in ESM2-3B's layout or, with
    ``fast_esm``, FastESM2_650's (config with model_type fast_esm and an auto_map)."""
    random_esm_masked_lm(shape, seed).save_pretrained(folder)
    if fast_esm:
        path = os.path.join(folder, "config.json")
        with open(path) as handle:
            config = json.load(handle)
        with open(path, "w") as handle:
            json.dump({**config, **FASTESM_CONFIG_KEYS}, handle, indent=2)
    return folder
