# Copyright 2026 The VAEmotion Authors. Licensed under the Apache License, Version 2.0.
"""LoRA on the shared LLM only, with peft, for Stage 1 and Stage 2.

peft knows no default targets for a custom ``model_type``, and ``"all-linear"`` would also adapt the vision tower,
the audio encoder and the emotion heads. The default target is therefore an explicit regex on the LLM's attention
and MLP projections, as the module names of Qwen2.5-VL and LLaVA spell them
(``vlm.model.language_model.layers.<i>.self_attn.q_proj``, ``...mlp.gate_proj``).

Modules that a stage trains in full (``audio_projector``, the EmoAdapter) become peft ``modules_to_save``, so the
saved adapter holds everything the stage learned: ``base.load_adapter(dir)`` or
``PeftModel.from_pretrained(base, dir).merge_and_unload()`` restores the trained model.

Example:

>>> import torch
>>> from vaemotion import VAEmotionForConditionalGeneration
>>> from vaemotion.tiny import tiny_vaemotion_config
>>> model = VAEmotionForConditionalGeneration(tiny_vaemotion_config())
>>> _ = model.set_trainable("vg_align")
>>> sorted({name.split(".")[-1] for name in lora_target_names(model)})
['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']
>>> peft_model = apply_lora(model, r=4, modules_to_save=["audio_projector"])
>>> sorted({name.split(".")[2] for name, p in peft_model.named_parameters() if p.requires_grad})
['audio_projector', 'vlm']
>>> any("lora_" in name for name, _ in peft_model.named_parameters() if "visual" in name or "audio_tower" in name)
False
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

# The LLM's attention and MLP projections (Qwen2.5-VL, LLaVA/Llama); never the vision tower or the audio encoder.
LLM_LORA_TARGET = r".*vlm\.model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def lora_target_names(model: torch.nn.Module, target_modules: str = LLM_LORA_TARGET) -> list[str]:
    """Names of the ``nn.Linear`` modules that ``target_modules`` selects (peft's full-match rule for a regex)."""
    pattern = re.compile(target_modules)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and pattern.fullmatch(name)
    ]


def apply_lora(
    model,
    *,
    r: int,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: str = LLM_LORA_TARGET,
    modules_to_save: Sequence[str] = (),
):
    """Wrap ``model`` in a peft ``PeftModel`` with LoRA adapters on the modules ``target_modules`` selects.

    Args:
        model: a VAEmotion model whose stage trainable set is already chosen (``model.set_trainable(...)``).
        r / alpha / dropout: LoRA rank, scaling numerator and dropout.
        target_modules: a regex matched in full against module names (default: the LLM's projections only).
        modules_to_save: top-level modules trained in full next to the adapters (e.g. ``["audio_projector"]``);
            peft keeps a trainable copy of each and saves it with the adapter.

    Raises:
        ValueError: when the regex selects no linear layer (the message shows names it could have matched).
    """
    from peft import LoraConfig, get_peft_model

    if r < 1:
        raise ValueError(f"LoRA rank r must be at least 1, got {r}")
    targets = lora_target_names(model, target_modules)
    if not targets:
        examples = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)][:5]
        raise ValueError(f"lora_target_modules {target_modules!r} matches no linear layer; names look like {examples}")
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        modules_to_save=list(modules_to_save) or None,
    )
    return get_peft_model(model, config)
