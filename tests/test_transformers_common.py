"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`) run against VAEmotion.

The mixins come from the transformers sdist via tests/transformers_common.py; without the sdist every test here is
skipped with the command that fetches it. Inputs cover all three pathways of the composite at once: every sample has
text, one Whisper window (partly valid) and one Qwen2.5-VL image.

Every mixin test that does not apply to VAEmotion is overridden here with `@unittest.skip` and a comment saying why;
nothing is deselected. The mixin skips some tests itself, with its own reason: those needing a GPU, several GPUs, MPS,
flash-attn, `kernels` or DeepSpeed, and those for features VAEmotion does not have (`_keep_in_fp32_modules`, MoE
experts, a TP plan, sliding windows, encoder-decoder heads, a text-only `base_model_class` for the rope tests).
"""

import tempfile
import unittest
from unittest import mock

import pytest
import torch

from transformers_common import SKIP_REASON, load
from vaemotion import VAEmotionConfig, VAEmotionForConditionalGeneration, num_audio_tokens
from vaemotion.tiny import SPECIAL_TOKENS, build_tiny_tokenizer, tiny_vaemotion_config


common = load()
if common is None:
    pytest.skip(SKIP_REASON, allow_module_level=True)
ModelTesterMixin = common.test_modeling_common.ModelTesterMixin
ConfigTester = common.test_configuration_common.ConfigTester


class VAEmotionModelTester:
    """Tiny VAEmotion (Qwen2.5-VL + Whisper) and a batch whose every row holds text, one audio window and one image."""

    def __init__(
        self,
        parent,
        batch_size=3,
        text_length=6,
        window_seconds=1,  # a 100-frame Whisper window
        valid_mel_frames=60,  # -> 30 encoder frames -> 15 audio tokens at pool stride 2
        image_grid=(1, 4, 4),  # a 56x56 image: 16 patches of 14x14x2, merged 2x2 into 4 LLM tokens
        is_training=True,
    ):
        self.parent = parent
        self.tokenizer = build_tiny_tokenizer()
        self.batch_size = batch_size
        self.text_length = text_length
        self.window_seconds = window_seconds
        self.valid_mel_frames = valid_mel_frames
        self.image_grid = image_grid
        self.is_training = is_training

        config = self.get_config()
        text_config = config.get_text_config()
        vision_config = config.vlm_config.vision_config
        self.vocab_size = text_config.vocab_size
        self.hidden_size = text_config.hidden_size
        self.num_hidden_layers = text_config.num_hidden_layers  # hidden states/attentions come from the LLM
        self.num_attention_heads = text_config.num_attention_heads
        self.num_mel_bins = config.audio_config.num_mel_bins
        self.window_frames = config.audio_config.max_source_positions * 2
        self.patch_dim = vision_config.in_channels * vision_config.temporal_patch_size * vision_config.patch_size**2
        t, h, w = image_grid
        self.num_patches = t * h * w
        self.num_image_tokens = self.num_patches // vision_config.spatial_merge_size**2
        self.num_audio_tokens = num_audio_tokens(valid_mel_frames, config.audio_pool_stride)
        self.num_emotions = config.num_emotions
        # text, then <|vision_start|> image <|vision_end|>, then <|audio_bos|> audio <|audio_eos|>
        self.seq_length = text_length + self.num_image_tokens + 2 + self.num_audio_tokens + 2

    def get_config(self):
        return tiny_vaemotion_config(self.tokenizer, window_seconds=self.window_seconds)

    def _ids(self, *tokens):
        return [self.tokenizer.convert_tokens_to_ids(token) for token in tokens]

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        first_word = len(SPECIAL_TOKENS) + 1  # the tiny vocabulary: <unk>, the special tokens, then words
        text = torch.randint(first_word, self.vocab_size, (self.batch_size, self.text_length))
        image_start, image_pad, image_end, audio_bos, audio_pad, audio_eos = self._ids(
            "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|audio_bos|>", "<|audio_pad|>", "<|audio_eos|>"
        )
        media = (
            [image_start] + [image_pad] * self.num_image_tokens + [image_end]
            + [audio_bos] + [audio_pad] * self.num_audio_tokens + [audio_eos]
        )  # fmt: skip
        media = torch.tensor(media).expand(self.batch_size, -1)
        # Media in the middle of the text, as in a chat prompt.
        input_ids = torch.cat([text[:, :2], media, text[:, 2:]], dim=1)
        feature_attention_mask = torch.zeros(self.batch_size, self.window_frames, dtype=torch.long)
        feature_attention_mask[:, : self.valid_mel_frames] = 1
        inputs = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "input_features": torch.randn(self.batch_size, self.num_mel_bins, self.window_frames),
            "feature_attention_mask": feature_attention_mask,
            "pixel_values": torch.randn(self.batch_size * self.num_patches, self.patch_dim),
            "image_grid_thw": torch.tensor([list(self.image_grid)] * self.batch_size),
        }
        return config, inputs


def _skipped(reason):
    """A replacement for an inherited mixin test that does not apply; the reason is the justification."""
    return unittest.skip(reason=reason)(lambda self: None)


# VAEmotion's get_{audio,image,video}_features deliberately return the flattened `(num_tokens, hidden_size)` matrix
# that forward scatters into the placeholder tokens (documented API, used by tests/test_modeling.py); transformers 5.x
# models return a `BaseModelOutputWithPooling` there, which these tests check field by field. Nothing in transformers
# (generation, pipelines, Trainer) calls these methods on a model, so the divergence is API style, not a defect.
FEATURES_API_REASON = (
    "get_*_features return the flattened (tokens, hidden) matrix scattered into the placeholders, not a "
    "BaseModelOutputWithPooling (VAEmotion API, see tests/test_modeling.py)"
)


class VAEmotionModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (VAEmotionForConditionalGeneration,)
    _is_composite = True  # three towers with their own sub-configs (vlm_config, audio_config)
    test_torch_exportable = False  # export tests come from ExportTesterMixin, stubbed (see transformers_common.py)

    def setUp(self):
        self.model_tester = VAEmotionModelTester(self)
        self.config_tester = ConfigTester(self, config_class=VAEmotionConfig, has_text_modality=False)
        # VAEmotion is an image-text-to-text model (vaemotion registers it with AutoModelForImageTextToText), but the
        # mixin recognises such heads by class name in transformers' static table. Listing it there for the test
        # makes the mixin treat it as the VLM it is: LM labels in `_prepare_for_class`, and the checks that are
        # gated on it (`test_causal_lm_loss_honors_shift_labels`).
        names = common.test_modeling_common.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
        patcher = mock.patch.dict(names, {VAEmotionConfig.model_type: VAEmotionForConditionalGeneration.__name__})
        patcher.start()
        self.addCleanup(patcher.stop)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels:  # emotion targets too, so the EmoAdapter's heads take part in the loss (and get gradients)
            batch_size = self.model_tester.batch_size
            inputs_dict["emotion_labels"] = torch.arange(batch_size) % self.model_tester.num_emotions
            inputs_dict["valence"] = torch.linspace(-0.5, 0.5, batch_size)
            inputs_dict["arousal"] = torch.linspace(0.5, -0.5, batch_size)
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()

    # ------------------------------------------------------------------------------------------------ adapted tests
    def test_tied_weights_keys(self):
        # The VLM ties its LM head from its own config, `vlm_config.tie_word_embeddings` (True for some checkpoints,
        # e.g. Qwen2.5-VL-3B); the mixin flips only the text config and the top-level config, and a VLM nested one
        # level deeper never sees those. Run the mixin's check with the VLM's own flag flipped as well.
        prepare = self.model_tester.prepare_config_and_inputs_for_common

        def prepare_tied():
            config, inputs = prepare()
            config.vlm_config.tie_word_embeddings = True
            return config, inputs

        with mock.patch.object(self.model_tester, "prepare_config_and_inputs_for_common", prepare_tied):
            super().test_tied_weights_keys()

    def test_sdpa_can_dispatch_composite_models(self):
        # The mixin's version looks for `model.base_model.<tower>` and `.language_model`; VAEmotion's towers are
        # `audio_tower`, `vlm.model.visual` and `vlm.model.language_model`. Same check on those.
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        model = VAEmotionForConditionalGeneration(config)

        def towers(model):
            return {
                "audio": model.audio_tower,
                "vision": model.vlm.model.visual,
                "language": model.vlm.model.language_model,
            }

        with tempfile.TemporaryDirectory() as tmpdirname:
            model.save_pretrained(tmpdirname)
            model_sdpa = VAEmotionForConditionalGeneration.from_pretrained(tmpdirname)
            for name, tower in towers(model_sdpa).items():
                expected = "sdpa" if tower._supports_sdpa else "eager"
                self.assertEqual(tower.config._attn_implementation, expected, name)
            model_eager = VAEmotionForConditionalGeneration.from_pretrained(tmpdirname, attn_implementation="eager")
            for name, tower in towers(model_eager).items():
                self.assertEqual(tower.config._attn_implementation, "eager", name)
            for name, submodule in model_eager.named_modules():
                config_of = getattr(submodule, "config", None)
                if type(submodule).__name__.endswith("Attention") and config_of is not None:
                    self.assertNotEqual(config_of._attn_implementation, "sdpa", name)

    # pytest.ini ignores FutureWarning, the category of transformers' `past_key_values` deprecation notice that this
    # test asserts is raised; let it through for this test only.
    @pytest.mark.filterwarnings("always::FutureWarning")
    def test_bc_cache_name_forward(self):
        super().test_bc_cache_name_forward()

    # ------------------------------------------------------------------------------------------------ not applicable
    # GenerationTesterMixin lives in tests/generation/, which the sdist does not ship (transformers_common.py stubs
    # it); this test only asserts that the tester inherits it. VAEmotion's generation (first step equals forward,
    # audio encoded once, cache vs no cache, LLaVA family) is tested in tests/test_modeling.py.
    test_generation_tester_mixin_inheritance = _skipped(
        "GenerationTesterMixin is not in the transformers sdist; generation is tested in tests/test_modeling.py"
    )
    # The test assumes "generative model = base model + LM head" (`base_model_prefix`). VAEmotion is a composition:
    # the whole VLM (with its own LM head) is one part beside the audio tower and the EmoAdapter, so there is no base
    # model to point at; `base_model_prefix = ""` keeps checkpoint keys as `vlm.*`/`audio_tower.*` and stops
    # transformers from treating a bare Qwen/LLaVA checkpoint as our base model.
    test_model_base_model_prefix = _skipped("composite model: no base-model + LM-head split (base_model_prefix='')")

    test_get_audio_features_output_0 = _skipped(FEATURES_API_REASON)
    test_get_audio_features_output_1 = _skipped(FEATURES_API_REASON)
    test_get_audio_features_output_2 = _skipped(FEATURES_API_REASON)
    test_get_audio_features_hidden_states = _skipped(FEATURES_API_REASON)
    test_get_audio_features_attentions = _skipped(FEATURES_API_REASON)
    test_get_image_features_output_0 = _skipped(FEATURES_API_REASON)
    test_get_image_features_output_1 = _skipped(FEATURES_API_REASON)
    test_get_image_features_output_2 = _skipped(FEATURES_API_REASON)
    test_get_image_features_hidden_states = _skipped(FEATURES_API_REASON)
    test_get_image_features_attentions = _skipped(FEATURES_API_REASON)
    test_get_image_features_pooler_output = _skipped(FEATURES_API_REASON)
    test_get_video_features_output_0 = _skipped(FEATURES_API_REASON)
    test_get_video_features_output_1 = _skipped(FEATURES_API_REASON)
    test_get_video_features_output_2 = _skipped(FEATURES_API_REASON)
    test_get_video_features_hidden_states = _skipped(FEATURES_API_REASON)
    test_get_video_features_attentions = _skipped(FEATURES_API_REASON)
    test_get_video_features_pooler_output = _skipped(FEATURES_API_REASON)
