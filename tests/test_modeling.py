"""VAEmotionForConditionalGeneration on tiny random Qwen2.5-VL and LLaVA backbones (CPU, offline)."""

import copy

import pytest
import torch
from transformers import AutoModel, AutoModelForImageTextToText, WhisperModel

from vaemotion import VAEmotionConfig, VAEmotionForConditionalGeneration, num_audio_tokens
from vaemotion.tiny import build_tiny_tokenizer, tiny_qwen2_5_vl_config, tiny_vaemotion_config, tiny_whisper_config

WINDOW_SECONDS = 2  # tiny Whisper window: 200 mel frames
MEL_BINS = 16


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def build_model(tokenizer, family="qwen2_5_vl", seed=0, **config_kwargs):
    torch.manual_seed(seed)
    config = tiny_vaemotion_config(tokenizer, family=family, window_seconds=WINDOW_SECONDS, **config_kwargs)
    return VAEmotionForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def qwen_model(tokenizer):
    return build_model(tokenizer)


@pytest.fixture(scope="module")
def llava_model(tokenizer):
    return build_model(tokenizer, family="llava")


# ------------------------------------------------------------------------------------------------ input builders
def audio_inputs(valid_frames):
    """Whisper-style windows: full-length features, `valid_frames` of each marked valid."""
    features = torch.randn(len(valid_frames), MEL_BINS, WINDOW_SECONDS * 100)
    mask = torch.zeros(len(valid_frames), WINDOW_SECONDS * 100, dtype=torch.long)
    for row, valid in enumerate(valid_frames):
        mask[row, :valid] = 1
    return {"input_features": features, "feature_attention_mask": mask}


def audio_block(valid_frames, stride=2):
    return "<|audio_bos|>" + "<|audio_pad|>" * num_audio_tokens(valid_frames, stride) + "<|audio_eos|>"


def qwen_image_inputs(num_images=1):
    # A 56x56 image at patch 14 is a 4x4 grid of 14x14x2-frame patches, merged 2x2 into 4 LLM tokens.
    return {
        "pixel_values": torch.randn(16 * num_images, 3 * 2 * 14 * 14),
        "image_grid_thw": torch.tensor([[1, 4, 4]] * num_images),
    }


def qwen_video_inputs():
    return {
        "pixel_values_videos": torch.randn(2 * 16, 3 * 2 * 14 * 14),
        "video_grid_thw": torch.tensor([[2, 4, 4]]),
        "second_per_grid_ts": torch.tensor([1.0]),
    }


IMAGE_BLOCK = "<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>"
VIDEO_BLOCK = "<|vision_start|>" + "<|video_pad|>" * 8 + "<|vision_end|>"
LLAVA_IMAGE_BLOCK = "<image>" * 4


def encode(tokenizer, texts, padding_side="right"):
    tokenizer.padding_side = padding_side
    return dict(tokenizer(texts, return_tensors="pt", padding=True))


def prompt(tokenizer, media="", question="describe the mood of this clip"):
    return f"<|im_start|>user {media} {question}<|im_end|><|im_start|>assistant"


def modality_case(tokenizer, case, family="qwen2_5_vl"):
    """(inputs, number of modality tokens) for one routing case."""
    image_block = IMAGE_BLOCK if family == "qwen2_5_vl" else LLAVA_IMAGE_BLOCK
    image_inputs = qwen_image_inputs() if family == "qwen2_5_vl" else {"pixel_values": torch.randn(1, 3, 28, 28)}
    media, extra = "", {}
    if "audio" in case:
        media += audio_block(150)
        extra.update(audio_inputs([150]))
    if "image" in case:
        media += image_block
        extra.update(image_inputs)
    if "video" in case:
        media += VIDEO_BLOCK
        extra.update(qwen_video_inputs())
    return {**encode(tokenizer, [prompt(tokenizer, media)]), **extra}


# ------------------------------------------------------------------------------------------------ config
def test_config_round_trip(tmp_path, tokenizer):
    config = tiny_vaemotion_config(tokenizer, emotion_labels=["calm", "tense", "joy"], audio_pool_stride=4)
    again = VAEmotionConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    config.save_pretrained(tmp_path)
    loaded = VAEmotionConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.vlm_config.model_type == "qwen2_5_vl" and loaded.audio_config.model_type == "whisper"
    assert loaded.get_text_config() is loaded.vlm_config.text_config
    assert loaded.num_emotions == 3 and loaded.emotion2id["joy"] == 2


def test_config_defaults_and_validation():
    config = VAEmotionConfig()
    assert config.vlm_config.model_type == "qwen2_5_vl"
    assert config.emotion_labels == ["amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness"]
    with pytest.raises(ValueError, match="emotion_labels"):
        VAEmotionConfig(emotion_labels=["a", "a"])
    with pytest.raises(ValueError, match="audio_pool_stride"):
        VAEmotionConfig(audio_pool_stride=0)


def test_num_audio_tokens_matches_encoder_and_pooling():
    # Independent reference: Whisper's conv stack (k=3, s=1, p=1 then k=3, s=2, p=1) and floor pooling.
    for frames in [1, 2, 3, 99, 100, 101, 3000]:
        conv2 = (frames + 2 * 1 - 3) // 2 + 1
        for stride in [1, 2, 4]:
            assert num_audio_tokens(frames, stride) == max(conv2 // stride, 1)
    assert num_audio_tokens(100, 2) == 25  # 1 s of audio is 25 tokens at the default stride
    assert num_audio_tokens(3000, 2) == 750


# ------------------------------------------------------------------------------------------------ forward
QWEN_CASES = ["text", "audio", "image", "video", "audio+image", "audio+video"]


@pytest.mark.parametrize("case", QWEN_CASES)
def test_qwen_modality_routing_shapes_and_losses(qwen_model, tokenizer, case):
    inputs = modality_case(tokenizer, case)
    targets = {"emotion_labels": torch.tensor([3]), "valence": torch.tensor([0.5]), "arousal": torch.tensor([-0.2])}
    out = qwen_model(**inputs, labels=inputs["input_ids"], **targets)
    seq = inputs["input_ids"].shape[1]
    assert out.logits.shape == (1, seq, qwen_model.config.get_text_config().vocab_size)
    assert out.valence.shape == out.arousal.shape == (1,)
    assert out.emotion_logits.shape == (1, 8)
    assert -1 <= out.valence.item() <= 1 and -1 <= out.arousal.item() <= 1
    has_modality = case != "text"
    assert (out.aux_emotion_loss is not None) == has_modality
    config = qwen_model.config
    expected = config.lm_loss_weight * out.lm_loss + config.emotion_loss_weight * (
        config.va_loss_weight * out.va_loss + config.category_loss_weight * out.category_loss
    )
    if has_modality:
        expected = expected + config.aux_emotion_loss_weight * out.aux_emotion_loss
    torch.testing.assert_close(out.loss, expected)
    # Emotion parts against independent formulas.
    reference_va = ((out.valence - 0.5) ** 2 + (out.arousal + 0.2) ** 2).mean() / 2
    torch.testing.assert_close(out.va_loss, reference_va.squeeze())
    torch.testing.assert_close(out.category_loss, -out.emotion_logits.log_softmax(-1)[0, 3])


@pytest.mark.parametrize("case", ["text", "audio", "image", "audio+image"])
def test_llava_family_modality_routing(llava_model, tokenizer, case):
    inputs = modality_case(tokenizer, case, family="llava")
    out = llava_model(**inputs, labels=inputs["input_ids"], emotion_labels=torch.tensor([1]))
    assert out.logits.shape[:2] == inputs["input_ids"].shape
    assert torch.isfinite(out.loss)
    assert out.emotion_logits.shape == (1, 8)


def test_modality_features_really_enter_the_llm(qwen_model, tokenizer):
    inputs = modality_case(tokenizer, "audio+image")
    base = qwen_model(**inputs).logits
    other_audio = {**inputs, "input_features": torch.randn_like(inputs["input_features"])}
    other_image = {**inputs, "pixel_values": torch.randn_like(inputs["pixel_values"])}
    assert not torch.allclose(qwen_model(**other_audio).logits, base)
    assert not torch.allclose(qwen_model(**other_image).logits, base)


def test_audio_features_match_manual_pipeline(qwen_model):
    inputs = audio_inputs([150, 37])
    features = qwen_model.get_audio_features(**inputs)
    states = qwen_model.audio_tower(inputs["input_features"]).last_hidden_state
    reference = []
    for window, valid in zip(states, [150, 37]):
        keep = num_audio_tokens(valid, 2)
        pooled = window[: 2 * keep].reshape(keep, 2, -1).mean(1)  # average pairs of encoder frames
        projector = qwen_model.audio_projector
        reference.append(projector.linear_2(projector.act(projector.linear_1(pooled))))
    torch.testing.assert_close(features, torch.cat(reference))


def test_placeholder_mismatch_raises_clear_error(qwen_model, tokenizer):
    inputs = {**encode(tokenizer, [prompt(tokenizer, audio_block(150))]), **audio_inputs([100])}
    with pytest.raises(ValueError, match=r"audio placeholders do not match.*37 placeholder tokens.*25 feature"):
        qwen_model(**inputs)
    image_inputs = {**encode(tokenizer, [prompt(tokenizer, IMAGE_BLOCK + IMAGE_BLOCK)]), **qwen_image_inputs(1)}
    with pytest.raises(ValueError, match="image placeholders do not match"):
        qwen_model(**image_inputs)


def test_logits_to_keep(qwen_model, tokenizer):
    inputs = modality_case(tokenizer, "audio")
    full = qwen_model(**inputs).logits
    last = qwen_model(**inputs, logits_to_keep=3).logits
    torch.testing.assert_close(last, full[:, -3:])
    positions = torch.tensor([0, 5, 9])
    picked = qwen_model(**inputs, logits_to_keep=positions).logits
    torch.testing.assert_close(picked, full[:, positions])


def test_untrained_enhancer_is_identity(tokenizer):
    with_enhancer = build_model(tokenizer, seed=3)
    without = build_model(tokenizer, seed=3, use_emotion_enhancer=False)
    without.load_state_dict(with_enhancer.state_dict(), strict=False)
    inputs = modality_case(tokenizer, "audio+video")
    torch.testing.assert_close(with_enhancer(**inputs).logits, without(**inputs).logits)


def test_supervisor_reads_the_last_prompt_token(qwen_model, tokenizer):
    prompt_inputs = modality_case(tokenizer, "audio")
    answer = tokenizer(" happy<|im_end|>", return_tensors="pt").input_ids
    full_ids = torch.cat([prompt_inputs["input_ids"], answer], dim=1)
    labels = full_ids.clone()
    labels[:, : prompt_inputs["input_ids"].shape[1]] = -100
    with_answer = {**prompt_inputs, "input_ids": full_ids, "attention_mask": torch.ones_like(full_ids)}
    trained_view = qwen_model(**with_answer, labels=labels)
    inference_view = qwen_model.predict_emotion(**prompt_inputs)
    torch.testing.assert_close(trained_view.valence, inference_view.valence)
    torch.testing.assert_close(trained_view.emotion_logits.softmax(-1), inference_view.probabilities)


@pytest.mark.parametrize("labels_cover", ["the whole sequence", "nothing"])
def test_supervisor_reads_the_last_prompt_token_however_labels_are_given(qwen_model, tokenizer, labels_cover):
    """transformers-style labels (``labels=input_ids``) or none at all: the Supervisor still reads the token that
    ends the generation prompt, as at inference, not position 0 or the answer's last token."""
    assert qwen_model.config.generation_prompt_ids == tokenizer("<|im_start|>assistant\n").input_ids
    prompt_inputs = modality_case(tokenizer, "audio")
    answer = tokenizer(" happy<|im_end|>\n", return_tensors="pt").input_ids
    full_ids = torch.cat([prompt_inputs["input_ids"], answer], dim=1)
    labels = full_ids.clone() if labels_cover == "the whole sequence" else None
    with_answer = {**prompt_inputs, "input_ids": full_ids, "attention_mask": torch.ones_like(full_ids)}
    trained_view = qwen_model(**with_answer, labels=labels)
    inference_view = qwen_model.predict_emotion(**prompt_inputs)
    torch.testing.assert_close(trained_view.valence, inference_view.valence)
    torch.testing.assert_close(trained_view.emotion_logits.softmax(-1), inference_view.probabilities)


def test_supervisor_position_falls_back_without_a_generation_prompt(tokenizer):
    """A config without ``generation_prompt_ids`` (a checkpoint from before it existed) keeps the label rule."""
    model = build_model(tokenizer, generation_prompt_ids=None)
    prompt_inputs = modality_case(tokenizer, "audio")
    answer = tokenizer(" happy<|im_end|>", return_tensors="pt").input_ids
    full_ids = torch.cat([prompt_inputs["input_ids"], answer], dim=1)
    labels = full_ids.masked_fill(torch.arange(full_ids.shape[1]) < prompt_inputs["input_ids"].shape[1], -100)
    trained_view = model(**prompt_inputs | {"input_ids": full_ids, "attention_mask": torch.ones_like(full_ids)},
                         labels=labels)
    torch.testing.assert_close(trained_view.valence, model.predict_emotion(**prompt_inputs).valence)


def test_generation_prompt_ids_must_be_token_ids():
    from huggingface_hub.errors import StrictDataclassFieldValidationError

    with pytest.raises(StrictDataclassFieldValidationError, match="generation_prompt_ids"):  # the config's type check
        VAEmotionConfig(generation_prompt_ids=["<|im_start|>"])
    with pytest.raises(ValueError, match="generation_prompt_ids"):
        VAEmotionConfig(generation_prompt_ids=[151644, -1])


# ------------------------------------------------------------------------------------------------ batching and padding
def test_mixed_batch_with_left_padding_matches_single_samples(qwen_model, tokenizer):
    texts = [prompt(tokenizer, audio_block(150)), prompt(tokenizer, IMAGE_BLOCK, "what"), prompt(tokenizer)]
    audio, image = audio_inputs([150]), qwen_image_inputs()
    batch = {**encode(tokenizer, texts, padding_side="left"), **audio, **image}
    batched = qwen_model.predict_emotion(**batch)
    singles = [
        qwen_model.predict_emotion(**encode(tokenizer, [texts[0]]), **audio),
        qwen_model.predict_emotion(**encode(tokenizer, [texts[1]]), **image),
        qwen_model.predict_emotion(**encode(tokenizer, [texts[2]])),
    ]
    for row, single in enumerate(singles):
        torch.testing.assert_close(batched.probabilities[row], single.probabilities[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batched.valence[row], single.valence[0], atol=1e-5, rtol=1e-4)


def test_predict_emotion_is_one_prefill(qwen_model, tokenizer):
    calls = []
    hook = qwen_model.language_backbone.register_forward_hook(lambda *args: calls.append(1))
    try:
        prediction = qwen_model.predict_emotion(**modality_case(tokenizer, "audio+image"))
    finally:
        hook.remove()
    assert len(calls) == 1
    assert torch.allclose(prediction.probabilities.sum(-1), torch.ones(1))
    row = prediction.to_list()[0]
    assert row["emotion"] in qwen_model.config.emotion_labels and set(row["scores"]) == set(prediction.labels)
    assert prediction.top_labels() == [max(row["scores"], key=row["scores"].get)]


# ------------------------------------------------------------------------------------------------ generation
@pytest.mark.parametrize("case", ["audio", "image", "video", "audio+image"])
def test_generate_first_step_equals_forward_and_encodes_audio_once(qwen_model, tokenizer, case):
    inputs = modality_case(tokenizer, case)
    calls = []
    hook = qwen_model.audio_tower.register_forward_hook(lambda *args: calls.append(1))
    try:
        generated = qwen_model.generate(
            **inputs, max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True,
            eos_token_id=None, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    finally:
        hook.remove()
    assert generated.sequences.shape[1] == inputs["input_ids"].shape[1] + 4
    assert len(calls) == ("audio" in case)
    first_step = qwen_model(**inputs).logits[:, -1]
    torch.testing.assert_close(generated.scores[0], first_step, atol=1e-5, rtol=1e-4)
    # Greedy decoding again with full recomputation (no cache) gives the same tokens.
    no_cache = qwen_model.generate(
        **inputs, max_new_tokens=4, do_sample=False, use_cache=False, eos_token_id=None,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    assert torch.equal(no_cache, generated.sequences)


def test_llava_family_generates(llava_model, tokenizer):
    inputs = modality_case(tokenizer, "audio+image", family="llava")
    generated = llava_model.generate(
        **inputs, max_new_tokens=3, do_sample=False, output_scores=True, return_dict_in_generate=True,
        eos_token_id=None, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.testing.assert_close(generated.scores[0], llava_model(**inputs).logits[:, -1], atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ save / load
@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_save_load_round_trip_and_auto_classes(tmp_path, tokenizer, family):
    model = build_model(tokenizer, family=family, seed=5)
    with torch.no_grad():  # make the Enhancer non-trivial so its weights must survive the trip
        model.emotion_enhancer.up.weight.normal_()
    inputs = modality_case(tokenizer, "audio+image", family=family)
    reference = model(**inputs)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    for loader in (VAEmotionForConditionalGeneration, AutoModel, AutoModelForImageTextToText):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert type(loaded) is VAEmotionForConditionalGeneration
        out = loaded(**inputs)
        torch.testing.assert_close(out.logits, reference.logits)
        torch.testing.assert_close(out.emotion_logits, reference.emotion_logits)


def test_from_vlm_and_audio_pretrained_keeps_weights(tmp_path, tokenizer):
    torch.manual_seed(11)
    vlm = AutoModelForImageTextToText.from_config(tiny_qwen2_5_vl_config(tokenizer))
    whisper = WhisperModel(tiny_whisper_config(window_seconds=WINDOW_SECONDS))
    vlm.save_pretrained(tmp_path / "vlm")
    whisper.save_pretrained(tmp_path / "audio")
    model = VAEmotionForConditionalGeneration.from_vlm_and_audio_pretrained(
        tmp_path / "vlm", tmp_path / "audio", tokenizer=tokenizer, attn_implementation="eager", enhancer_bottleneck_size=8
    )
    assert model.config.audio_token_id == tokenizer.audio_token_id
    assert model.config.enhancer_bottleneck_size == 8
    assert model.vlm.config._attn_implementation == "eager"
    assert model.config.get_text_config()._attn_implementation == "eager"
    for name, tensor in vlm.state_dict().items():
        torch.testing.assert_close(model.vlm.state_dict()[name], tensor, rtol=0, atol=0)
    encoder_state = whisper.get_encoder().state_dict()
    for name, tensor in model.audio_tower.state_dict().items():
        torch.testing.assert_close(tensor, encoder_state[name], rtol=0, atol=0)
    # The composite's text-only path is the VLM itself (the Enhancer and heads sit beside it).
    ids = encode(tokenizer, [prompt(tokenizer)])
    torch.testing.assert_close(model.eval()(**ids).logits, vlm.eval()(**ids).logits)


def test_from_vlm_and_audio_pretrained_grows_vocab_without_audio_tokens(tmp_path, tokenizer):
    vlm_config = tiny_qwen2_5_vl_config(tokenizer)
    AutoModelForImageTextToText.from_config(vlm_config).save_pretrained(tmp_path / "vlm")
    WhisperModel(tiny_whisper_config()).save_pretrained(tmp_path / "audio")
    model = VAEmotionForConditionalGeneration.from_vlm_and_audio_pretrained(tmp_path / "vlm", tmp_path / "audio")
    vocab = vlm_config.text_config.vocab_size
    assert (model.config.audio_token_id, model.config.audio_eos_token_id) == (vocab, vocab + 2)
    assert model.get_input_embeddings().weight.shape[0] >= vocab + 3
    assert model.config.get_text_config().vocab_size == model.get_input_embeddings().weight.shape[0]


def test_resize_token_embeddings(tokenizer):
    model = build_model(tokenizer)
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(old + 7)
    assert model.get_input_embeddings().weight.shape[0] == old + 7
    assert model.get_output_embeddings().weight.shape[0] == old + 7
    assert model.config.get_text_config().vocab_size == old + 7
    out = model(**modality_case(tokenizer, "audio"))
    assert out.logits.shape[-1] == old + 7


# ------------------------------------------------------------------------------------------------ training setup
def trainable_prefixes(model):
    return {name.split(".", 1)[0] for name, p in model.named_parameters() if p.requires_grad}


def params_with_grad(model):
    return {name.split(".", 1)[0] for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


@pytest.mark.parametrize(
    "stage, kwargs, expected",
    [
        ("vg_align", {}, {"audio_projector", "audio_delimiters"}),
        ("vg_align", {"train_audio_delimiters": False}, {"audio_projector"}),
        ("vg_align", {"train_audio_encoder": True}, {"audio_projector", "audio_delimiters", "audio_tower"}),
        ("emo_adapter", {}, {"emotion_enhancer", "emotion_supervisor"}),
        ("emo_adapter", {"train_projector": True}, {"emotion_enhancer", "emotion_supervisor", "audio_projector"}),
    ],
)
def test_gradients_reach_exactly_the_stage_trainable_set(tokenizer, stage, kwargs, expected):
    model = build_model(tokenizer).train()
    with torch.no_grad():  # a zero up-projection would block gradients into the bottleneck heads' input path only
        model.emotion_enhancer.up.weight.normal_(std=0.02)
    report = model.set_trainable(stage, **kwargs)
    assert set(report["modules"]) == expected
    assert trainable_prefixes(model) == expected
    assert 0 < report["trainable"] < report["total"]
    inputs = modality_case(tokenizer, "audio+image")
    out = model(**inputs, labels=inputs["input_ids"], emotion_labels=torch.tensor([0]), valence=torch.tensor([0.1]))
    out.loss.backward()
    assert params_with_grad(model) == expected
    untouched = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert untouched == []


def test_frozen_audio_tower_keeps_no_graph(tokenizer):
    model = build_model(tokenizer).train()
    model.set_trainable("vg_align")
    features = model.get_audio_features(**audio_inputs([150]))
    assert features.requires_grad  # the projector trains
    calls = []
    hook = model.audio_tower.register_forward_hook(lambda mod, args, out: calls.append(out.last_hidden_state.requires_grad))
    model.get_audio_features(**audio_inputs([150]))
    hook.remove()
    assert calls == [False]


def test_activation_checkpointing_gives_the_same_gradients(tokenizer):
    inputs = modality_case(tokenizer, "audio+image")
    grads = []
    for checkpointing in (False, True):
        model = build_model(tokenizer, seed=21).train()
        model.set_trainable("vg_align")
        if checkpointing:
            model.activation_checkpointing_enable()
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name])


def test_eager_and_sdpa_agree(tokenizer):
    model = build_model(tokenizer, seed=8)
    inputs = modality_case(tokenizer, "audio+image")
    sdpa = model(**inputs).logits
    eager_model = copy.deepcopy(model)
    eager_model.set_attn_implementation("eager")
    assert eager_model.vlm.config.get_text_config()._attn_implementation == "eager"
    torch.testing.assert_close(eager_model(**inputs).logits, sdpa, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def fast_qwen_model(tokenizer):
    return build_model(tokenizer, fast_vision_tower=True)


def test_the_fast_vision_tower_is_opt_in_and_keeps_modules_it_does_not_fit(qwen_model, tokenizer, monkeypatch):
    """By default the VLM keeps transformers' own vision modules; with the flag they are swapped, except a module
    lacking an internal the fast code reads (as another transformers release might)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionPatchEmbed, Qwen2_5_VLVisionAttention

    import vaemotion.modeling_vaemotion as modeling

    visual = qwen_model.vlm.model.visual
    assert all(type(block.attn) is Qwen2_5_VLVisionAttention for block in visual.blocks)
    assert type(visual.patch_embed) is Qwen2_5_VisionPatchEmbed
    monkeypatch.setattr(modeling, "_attention_fits_batched_windows", lambda module: False)
    fast = build_model(tokenizer, fast_vision_tower=True).vlm.model.visual
    assert all(type(block.attn) is Qwen2_5_VLVisionAttention for block in fast.blocks)
    assert type(fast.patch_embed) is modeling.VAEmotionLinearPatchEmbed
    monkeypatch.undo()
    stock_attention = copy.deepcopy(visual.blocks[0].attn)
    assert modeling._attention_fits_batched_windows(stock_attention)
    del stock_attention.scaling
    assert not modeling._attention_fits_batched_windows(stock_attention)


def test_batched_window_attention_equals_the_stock_vision_attention(fast_qwen_model):
    """Windows of equal length are attended in one SDPA call; uneven grids give windows of several lengths."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionAttention

    from vaemotion.modeling_vaemotion import VAEmotionWindowedVisionAttention

    qwen_model = fast_qwen_model
    blocks = qwen_model.vlm.model.visual.blocks
    assert all(type(block.attn) is VAEmotionWindowedVisionAttention for block in blocks)
    grid = torch.tensor([[2, 10, 6], [2, 8, 16], [4, 6, 6]])
    pixels = torch.randn(int(grid.prod(-1).sum()), 3 * 2 * 14 * 14)
    batched = qwen_model.get_video_features(pixels, grid)
    try:
        for block in blocks:
            block.attn.__class__ = Qwen2_5_VLVisionAttention
        stock = qwen_model.get_video_features(pixels, grid)
    finally:
        for block in blocks:
            block.attn.__class__ = VAEmotionWindowedVisionAttention
    torch.testing.assert_close(batched, stock, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_patch_embedding_equals_the_stock_conv3d(fast_qwen_model, dtype):
    """The patch embedding's Conv3d (stride == kernel) computed as one matmul of the flattened patches."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionPatchEmbed

    from vaemotion.modeling_vaemotion import VAEmotionLinearPatchEmbed

    embed = fast_qwen_model.vlm.model.visual.patch_embed
    assert type(embed) is VAEmotionLinearPatchEmbed
    embed = copy.deepcopy(embed).to(dtype)
    stock = copy.deepcopy(embed)
    stock.__class__ = Qwen2_5_VisionPatchEmbed
    patches = torch.randn(37, embed.in_channels * embed.temporal_patch_size * embed.patch_size**2)
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(embed(patches).float(), stock(patches).float(), **tolerance)


def test_window_groups_are_found_once_per_forward_not_once_per_layer(tokenizer, monkeypatch):
    """Finding the window lengths syncs with the device: it happens once per cu_seqlens tensor (one per kind of
    layer, windowed or full attention), not once per layer."""
    import vaemotion.modeling_vaemotion as modeling

    config = tiny_vaemotion_config(tokenizer, window_seconds=WINDOW_SECONDS)
    config.vlm_config = tiny_qwen2_5_vl_config(tokenizer, vision_depth=6)  # five windowed layers, one full
    config.fast_vision_tower = True
    model = VAEmotionForConditionalGeneration(config).eval()
    computed = []
    original = modeling._compute_window_groups
    monkeypatch.setattr(modeling, "_compute_window_groups", lambda cu: computed.append(cu) or original(cu))
    grid = torch.tensor([[2, 8, 16]])
    model.get_video_features(torch.randn(int(grid.prod()), 3 * 2 * 14 * 14), grid)
    assert len(computed) == 2
    groups = modeling.window_groups(computed[0])
    assert groups is modeling.window_groups(computed[0])  # kept on the tensor
    computed[0].add_(0)  # an in-place edit bumps the version: the groups are found again
    assert modeling.window_groups(computed[0]) is not groups


@pytest.mark.parametrize(
    "targets, message",
    [
        ({"emotion_labels": torch.tensor([8])}, r"emotion_labels must lie in \[0, 8\) .* got 8"),
        ({"emotion_labels": torch.tensor([-3])}, r"emotion_labels must lie in \[0, 8\) .* got -3"),
        ({"emotion_labels": torch.tensor([0, 1])}, r"emotion_labels must be integer indices of shape \(1,\)"),
        ({"emotion_labels": torch.tensor([0.0])}, "emotion_labels must be integer indices"),
        ({"valence": torch.tensor([1.5])}, r"valence targets must lie in \[-1, 1\] .* got 1.5"),
        ({"arousal": torch.tensor([float("inf")])}, r"arousal targets must lie in \[-1, 1\]"),
        ({"valence": torch.tensor([0.1, 0.2])}, r"valence must have shape \(1,\)"),
    ],
)
def test_bad_emotion_targets_are_named_before_they_reach_a_loss(tokenizer, targets, message):
    model = build_model(tokenizer)
    inputs = modality_case(tokenizer, "audio+image")
    with pytest.raises(ValueError, match=message):
        model(**inputs, **targets)
    unknown = model(**inputs, valence=torch.tensor([float("nan")]), emotion_labels=torch.tensor([-100]))
    assert unknown.va_loss is None and unknown.category_loss is None  # NaN and -100 mean "unknown", not an error


def _without(inputs: dict, key: str) -> dict:
    return {name: value for name, value in inputs.items() if name != key}


@pytest.mark.parametrize(
    "case, damage, message",
    [
        ("audio", lambda x: {**x, "input_features": x["input_features"][:, :-3]},
         r"input_features has \d+ mel bins but the audio encoder takes \d+: .*feature_size="),
        ("audio", lambda x: {**x, "feature_attention_mask": x["feature_attention_mask"][:, :-1]},
         r"feature_attention_mask must be \(num_windows, frames\)"),
        ("image", lambda x: _without(x, "image_grid_thw"), "pixel_values needs image_grid_thw beside it"),
        ("image", lambda x: {**x, "image_grid_thw": torch.tensor([[1, 4, 8]])},
         r"pixel_values has shape \(16, 1176\) but image_grid_thw describes 32 patch rows"),
        ("image", lambda x: {**x, "image_grid_thw": torch.tensor([1, 4, 4])}, r"integer \(num_pictures, 3\) tensor"),
        ("video", lambda x: _without(x, "video_grid_thw"), "pixel_values_videos needs video_grid_thw beside it"),
    ],
)  # fmt: skip
def test_malformed_media_inputs_are_named_before_they_reach_a_tower(tokenizer, case, damage, message):
    """What a training script can get wrong at the model's door: another encoder's mel bins, a mask of the wrong
    shape, Qwen pixels without (or with another call's) patch grids. Before: conv and attribute errors."""
    model = build_model(tokenizer)
    with pytest.raises(ValueError, match=message):
        model(**damage(modality_case(tokenizer, case)))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda x: {**x, "input_ids": x["input_ids"].float()}, r"input_ids must be an integer \(batch_size"),
        (lambda x: {**x, "input_ids": x["input_ids"][0]}, r"input_ids must be an integer .* torch.int64 \(\d+,\)"),
        (lambda x: {**x, "input_ids": x["input_ids"] + 10_000}, r"input_ids must lie in \[0, \d+\)"),
        (lambda x: {**x, "attention_mask": x["attention_mask"][:, :3]}, r"attention_mask has shape \(1, 3\)"),
        (lambda x: {**x, "emotion_positions": torch.tensor([10_000])}, r"emotion_positions must be one integer position"),
    ],
)
def test_malformed_token_inputs_are_named(tokenizer, damage, message):
    model = build_model(tokenizer)
    with pytest.raises(ValueError, match=message):
        model(**damage(modality_case(tokenizer, "audio")))
