"""Weights in Hugging Face transformers' format imported into the port: a transformers Perceiver built at
reduced size with random weights and saved with `save_pretrained` loads through `perceiver_io.load(folder)`
and `convert-checkpoint`, every tensor used once, and computes what transformers computes where
transformers is faithful to the official numerics (tanh GELU, no padding)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from converters.cli import main  # noqa: E402
from perceiver_io.errors import CheckpointFormatError, ConfigError, MappingError  # noqa: E402
from perceiver_io.serialization import load  # noqa: E402
from perceiver_io.tasks import build_model  # noqa: E402

TOLERANCE = 1e-5
"""Of the logits' scale: transformers and the port on the same weights, where both compute the same."""


def language_model(hidden_act: str = "gelu_pytorch_tanh", **options) -> torch.nn.Module:
    """transformers' `PerceiverForMaskedLM` at reduced size, two blocks, widths of q/k and v apart, weights
    drawn N(0, 0.3^2) (so that every layer matters), in eval mode; `options` are other config fields."""
    config = transformers.PerceiverConfig(
        num_latents=16, d_latents=48, d_model=32, num_blocks=2, num_self_attends_per_block=3,
        num_self_attention_heads=2, num_cross_attention_heads=2, qk_channels=16, v_channels=48,
        max_position_embeddings=64, vocab_size=262, hidden_act=hidden_act, attention_probs_dropout_prob=0.0,
        **options)
    torch.manual_seed(0)
    model = transformers.PerceiverForMaskedLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(6, 262, (3, 64), generator=generator), torch.ones(3, 64, dtype=torch.long)


@torch.inference_mode()
def _relative_error(theirs: torch.nn.Module, ours: torch.nn.Module) -> float:
    ids, mask = _inputs()
    expected = theirs(inputs=ids, attention_mask=mask).logits
    return float((ours(ids, mask) - expected).abs().max() / expected.abs().max())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tanh-GELU model and the folder `save_pretrained` wrote it to (model.safetensors)."""
    model = language_model()
    folder = tmp_path_factory.mktemp("language-perceiver")
    model.save_pretrained(folder)
    return model, folder


def test_the_port_computes_what_transformers_computes_on_its_weights(saved):
    model, folder = saved
    ours = load(folder)
    assert ours.task == "language_mlm" and ours.config.encoder.num_blocks == 2
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in model.parameters())
    error = _relative_error(model, ours)
    print(f"transformers (tanh GELU) vs the port on its weights: {error:.2e} of the logits' scale")
    assert error <= TOLERANCE


def image_classifier(kind: str, folder, image_size: int = 16) -> torch.nn.Module:
    """transformers' `PerceiverForImageClassification{kind}` at reduced size (16x16 images, 10 classes),
    weights drawn N(0, 0.3^2), saved to `folder`."""
    config = transformers.PerceiverConfig(
        num_latents=8, d_latents=32, num_blocks=2, num_self_attends_per_block=2, num_self_attention_heads=2,
        num_cross_attention_heads=1, image_size=image_size, num_labels=10, hidden_act="gelu_pytorch_tanh",
        attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = getattr(transformers, f"PerceiverForImageClassification{kind}")(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    return model


@torch.inference_mode()
def _image_error(theirs: torch.nn.Module, ours: torch.nn.Module) -> float:
    """The largest difference of the logits on the same images (channels first there, last here), relative
    to their scale."""
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    expected = theirs(pixel_values=images).logits
    return float((ours(images.permute(0, 2, 3, 1).contiguous()) - expected).abs().max() / expected.abs().max())


def test_the_fourier_image_classifier_computes_what_transformers_computes(tmp_path):
    """`PerceiverForImageClassificationFourier`: pixels, Fourier positions of the released 224x224 grid, a
    classification decoder with its query residual, as the official model."""
    model = image_classifier("Fourier", tmp_path, image_size=56)  # transformers' default, which its class ignores
    ours = load(tmp_path)
    assert ours.task == "imagenet_fourier" and ours.config.num_classes == 10
    assert ours.config.image_size == (224, 224)  # the size of its positions, which classify_image resizes to
    error = _image_error(model, ours)
    print(f"transformers' Fourier classifier (tanh GELU) vs the port on its weights: {error:.2e} of the scale")
    assert error <= TOLERANCE


def test_the_learned_position_classifier_keeps_the_official_decoder(tmp_path):
    """`PerceiverForImageClassificationLearned`: a 1x1 convolution and projected learned positions. Its
    weights map exactly (a port model given transformers' query residual computes transformers' logits), and
    the imported model keeps the official decoder, without that residual."""
    model = image_classifier("Learned", tmp_path)
    ours = load(tmp_path)
    assert ours.task == "imagenet_learned" and not ours.config.decoder.use_query_residual
    decoder = dataclasses.replace(ours.config.decoder, use_query_residual=True)
    as_transformers = build_model("imagenet_learned", dataclasses.replace(ours.config, decoder=decoder)).eval()
    as_transformers.load_state_dict(ours.state_dict())
    mapped, official = _image_error(model, as_transformers), _image_error(model, ours)
    print(f"transformers' learned classifier vs the port with its residual: {mapped:.2e}; vs the official "
          f"decoder: {official:.2e} of the scale")
    assert mapped <= TOLERANCE and official > 100 * TOLERANCE


@pytest.mark.parametrize("options", [
    {"use_query_residual": False},
    {"cross_attention_shape_for_attention": "q"},
    {"cross_attention_widening_factor": 2, "self_attention_widening_factor": 3},
])
def test_the_encoders_options_are_imported(tmp_path, options):
    model = language_model(**options)
    model.save_pretrained(tmp_path)
    error = _relative_error(model, load(tmp_path))
    print(f"{options}: {error:.2e}")
    assert error <= TOLERANCE


def test_transformers_exact_gelu_is_not_the_official_numerics(tmp_path):
    """With transformers' default `hidden_act='gelu'` (exact erf) the outputs differ from the port's, which
    keeps the official tanh approximation whatever the config says."""
    model = language_model("gelu")
    model.save_pretrained(tmp_path)
    error = _relative_error(model, load(tmp_path))
    print(f"transformers (exact GELU) vs the port: {error:.2e} of the logits' scale")
    assert error > 2 * TOLERANCE


def test_pickled_and_sharded_weights_and_the_command_line_give_the_same_model(saved, tmp_path, capsys):
    model, folder = saved
    pickled = tmp_path / "pickled"  # as transformers 4 and the Hub's older repositories hold weights
    pickled.mkdir()
    (pickled / "config.json").write_text((folder / "config.json").read_text())
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("*.safetensors"))) > 1
    converted = tmp_path / "language.safetensors"
    assert main(["convert", str(folder), "-o", str(converted)]) == 0
    assert "converted language_mlm from the transformers folder" in capsys.readouterr().out
    reference = load(folder).state_dict()
    for other in (load(pickled), load(sharded), load(converted)):
        state = other.state_dict()
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[key], value) for key, value in reference.items())


def _weights_without(folder, tmp_path, drop=None, extra=None):
    """A copy of the folder whose weights lack `drop` and hold `extra`."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "edited"
    copy.mkdir()
    (copy / "config.json").write_text((folder / "config.json").read_text())
    tensors = load_file(folder / "model.safetensors")
    tensors.pop(drop, None)
    tensors.update(extra or {})
    save_file(tensors, copy / "model.safetensors")
    return copy


@pytest.mark.parametrize("drop, extra, words", [
    ("perceiver.decoder.decoding_cross_attention.attention.self.layernorm2.bias", None,
     "missing ['perceiver.decoder.decoding_cross_attention.attention.self.layernorm2.bias'], unused []"),
    (None, {"perceiver.stray.weight": torch.zeros(2)}, "missing [], unused ['perceiver.stray.weight']"),
])
def test_every_tensor_is_used_once_and_every_one_needed_is_there(saved, tmp_path, drop, extra, words):
    _, folder = saved
    with pytest.raises(MappingError) as error:
        load(_weights_without(folder, tmp_path, drop, extra))
    assert "its weights do not fit the language_mlm model its config.json describes" in str(error.value)
    assert words in str(error.value)


def test_a_transformers_model_not_imported_yet_is_named(saved, tmp_path):
    _, folder = saved
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["PerceiverForOpticalFlow"]}))
    with pytest.raises(ConfigError, match=r"architectures \['PerceiverForOpticalFlow'\] name no transformers "
                       r"Perceiver this port imports yet; it imports PerceiverForMaskedLM, "
                       r"PerceiverForImageClassificationFourier, PerceiverForImageClassificationLearned"):
        load(tmp_path)
    with pytest.raises(ConfigError, match="pass neither task= nor config="):
        load(folder, task="language_mlm")


@pytest.mark.parametrize("change, words", [
    ({"hidden_act": "relu"}, "hidden_act 'relu' is not a GELU"),
    ({"architectures": [["PerceiverForMaskedLM"]]}, "architectures must be a list of class names"),
    ({"d_model": None}, r"language_mlm.D_MODEL: expected an integer in \[1, 16777216\], found None"),
    ({"architectures": ["PerceiverForImageClassificationFourier"], "id2label": 5},
     "a field of the transformers config has the wrong type"),
])
def test_a_config_json_this_port_cannot_compute_is_one_line(saved, tmp_path, change, words):
    model, folder = saved
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    shutil.copy(folder / "model.safetensors", tmp_path)
    with pytest.raises(ConfigError, match=words):
        load(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object of transformers config fields, found list"):
        load(tmp_path)


def test_a_folder_with_a_config_and_no_weights_says_so(saved, tmp_path):
    _, folder = saved
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(CheckpointFormatError, match="holds config.json but no weights"):
        load(tmp_path)


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _prefilled_hub_cache(cache, repo_id: str, folder) -> None:
    """huggingface_hub's cache as a download of `repo_id` leaves it: `refs/main` naming a commit, and that
    commit's snapshot holding the folder's files."""
    repository = cache / f"models--{repo_id.replace('/', '--')}"
    (repository / "refs").mkdir(parents=True)
    (repository / "refs" / "main").write_text(COMMIT)
    shutil.copytree(folder, repository / "snapshots" / COMMIT)


def test_a_hub_id_loads_from_huggingface_hubs_cache_offline(saved, tmp_path):
    """`HF_HUB_OFFLINE=1` with a pre-filled cache: the id loads and converts, and the endpoint (a closed
    port) is never asked; an id the cache lacks is one line naming it."""
    model, folder = saved
    cache = tmp_path / "hub"
    _prefilled_hub_cache(cache, "deepmind/language-perceiver", folder)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_ENDPOINT": "http://127.0.0.1:9"}
    env.pop("HF_HUB_OFFLINE", None)
    code = ("import os, perceiver_io\n"
            "os.environ['HF_HUB_OFFLINE'] = '1'  # set after the imports: read at each call\n"
            "m = perceiver_io.load('deepmind/language-perceiver')\n"
            f"again = perceiver_io.load('deepmind/language-perceiver', revision='{COMMIT}')\n"
            "print(m.task, sum(p.numel() for p in m.parameters()), sum(p.numel() for p in again.parameters()))")
    loaded = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    count = str(sum(p.numel() for p in model.parameters()))
    assert loaded.stdout.split() == ["language_mlm", count, count]
    env["HF_HUB_OFFLINE"] = "1"

    def convert(repo_id, output):
        return subprocess.run([sys.executable, "-m", "perceiver_io", repo_id, "-o", str(output)], env=env,
                              capture_output=True, text=True, timeout=300)

    converted = convert("deepmind/language-perceiver", tmp_path / "language.safetensors")
    assert converted.returncode == 0, converted.stderr
    assert load(tmp_path / "language.safetensors").task == "language_mlm"
    missing = convert("deepmind/vision-perceiver-conv", tmp_path / "conv.safetensors")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "convert-checkpoint: error: deepmind/vision-perceiver-conv: HF_HUB_OFFLINE is set and the cache has no "
        "copy of it; download it once online (hf download deepmind/vision-perceiver-conv)"]
    assert not (tmp_path / "conv.safetensors").exists()


def test_revision_is_only_for_a_hub_id(saved):
    _, folder = saved
    with pytest.raises(ConfigError, match="revision= is for a Hugging Face Hub id"):
        load(folder, revision="main")
