"""Tiny random LLaVA and Qwen2-VL models with processors built in memory (nothing downloaded).

The tokenizer is a word-level ``tokenizers`` model over a small made-up vocabulary; the image processors are
constructed from arguments. Each model has well under 0.2 M parameters and runs a forward in milliseconds.
``TwoPass`` is the sequential text-only correction that PAINT's batched text row is tested against.
"""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from vizoo.vlm.paint import contrast_scores

VOCAB_SIZE = 128
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>", "<|im_start|>", "<|im_end|>"]
WORDS = ("a an the is are of on in with and to this image picture photo what where how many color question "
         "answer using single word or phrase write general description describe detail please help me yes no "
         "not there person man woman dog cat car bus bicycle table chair cup bottle pizza cake tree sky red blue "
         "green white black two three one left right top bottom sitting standing user assistant system USER "
         "ASSISTANT you : . , ? "
         "\n").split(" ")


class TwoPass:
    """The straightforward text-only correction (PAINT's earlier implementation, uncached here): a second,
    sequential forward per token over the prompt without its image tokens plus the tokens generated so far."""

    def __init__(self, adapter, inputs, gamma):
        self.adapter, self.gamma = adapter, gamma
        self.text, self.n = adapter.text_only(inputs)["input_ids"], inputs["input_ids"].shape[1]

    def __call__(self, input_ids, scores):
        with torch.no_grad(), self.adapter.disabled():
            ids = torch.cat([self.text, input_ids[:, self.n:]], 1)
            text_logits = self.adapter.model(input_ids=ids, use_cache=False).logits[:, -1]
        return contrast_scores(scores, text_logits, self.gamma)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tokens = SPECIALS + [w for w in dict.fromkeys(WORDS) if w]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) <= VOCAB_SIZE
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", padding_side="left")


def _text(**kw):
    return dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, **kw)


def tiny_llava(num_layers: int = 3, seed: int = 0, image_size: int = 28, patch_size: int = 7, width: int = 32):
    """(model, processor): CLIP 28 px / patch 7 (16 image tokens, a 4x4 grid), Llama decoder; the GPU tests
    ask for LLaVA-1.5's real image shapes (336 px, patch 14: a 24x24 grid) with a wider model."""
    tokenizer = tiny_tokenizer()
    vision = CLIPVisionConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                              num_attention_heads=4, image_size=image_size, patch_size=patch_size,
                              projection_dim=width)
    text = LlamaConfig(num_hidden_layers=num_layers, **dict(_text(), hidden_size=width, intermediate_size=2 * width))
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         image_seq_length=(image_size // patch_size) ** 2, vision_feature_layer=-2,
                         vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = None  # random weights: keep answers at full length
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return model, processor


def tiny_qwen2_vl(num_layers: int = 3, seed: int = 0, max_pixels: int = 112 * 112):
    """(model, processor): Qwen2-VL with patch 14 and a 2x2 merge; a 56x56 image gives a 2x2 token grid."""
    tokenizer = tiny_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    text = _text(num_hidden_layers=num_layers,
                 rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 1, 1]})
    vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                           video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                           vision_end_token_id=ids("<|vision_end|>"), pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = None
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": 56 * 56, "longest_edge": max_pixels}, patch_size=14,
                                            merge_size=2, temporal_patch_size=2)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=Qwen2VLVideoProcessor())
    return model, processor


def tiny_qwen2_5_vl(num_layers: int = 3, seed: int = 0):
    """(model, processor): Qwen2.5-VL (windowed vision attention, one full-attention block) at the same sizes."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    _, processor = tiny_qwen2_vl()
    ids = processor.tokenizer.convert_tokens_to_ids
    text = _text(num_hidden_layers=num_layers,
                 rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 1, 1]})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                              video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                              vision_end_token_id=ids("<|vision_end|>"), pad_token_id=0, bos_token_id=1,
                              eos_token_id=2)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = None
    processor = Qwen2_5_VLProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                                    video_processor=processor.video_processor)
    return model, processor


def tiny_llava_next(num_layers: int = 3, seed: int = 0):
    """(model, processor): LLaVA-NeXt with a 28 px CLIP (a 4x4 base grid) and 28/56 px any-resolution tiles."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tokenizer = tiny_tokenizer()
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=28, patch_size=7, projection_dim=32)
    text = LlamaConfig(num_hidden_layers=num_layers, **_text())
    config = LlavaNextConfig(vision_config=vision, text_config=text,
                             image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                             image_grid_pinpoints=[[28, 28], [28, 56], [56, 28]], vision_feature_layer=-2,
                             vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = None
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                              image_grid_pinpoints=[[28, 28], [28, 56], [56, 28]])
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=7,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return model, processor
