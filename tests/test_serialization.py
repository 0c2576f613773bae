"""Loading converted files: the model comes back from the file alone; foreign or damaged files are refused."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from converters.convert import convert_checkpoint
from perceiver_io.checkpoint_file import c_contiguous
from perceiver_io.errors import CheckpointFileError, InputError
from perceiver_io.pipelines import fill_mask
from perceiver_io.serialization import load, save
from perceiver_io.tokenizer import NUM_SPECIAL_TOKENS, BytesTokenizer


@pytest.fixture(scope="module")
def converted_path(golden_language, tmp_path_factory):
    path = tmp_path_factory.mktemp("converted") / "language.safetensors"
    convert_checkpoint(golden_language.checkpoint, path, "language_mlm", golden_language.config)
    return path


def test_save_and_load_round_trip(converted_path, tmp_path):
    model = load(converted_path)
    with torch.no_grad():
        model.embedding_decoder.bias.add_(1.0)  # as if fine-tuned
    save(model, tmp_path / "tuned.safetensors")
    again = load(tmp_path / "tuned.safetensors")
    for (key, ours), (_, theirs) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(ours, theirs), key
    with pytest.raises(FileExistsError):
        save(model, tmp_path / "tuned.safetensors")


@pytest.mark.parametrize("dtype, expected", [(torch.float64, torch.float64), ("bfloat16", torch.bfloat16),
                                             ("torch.float16", torch.float16), ("bf16", torch.bfloat16),
                                             ("double", torch.float64)])
def test_load_casts_dtype(converted_path, dtype, expected):
    model = load(converted_path, dtype=dtype)
    assert all(p.dtype == expected for p in model.parameters())


@pytest.mark.parametrize("device, dtype, words", [
    ("gpu", None, "unknown device 'gpu'; use 'cpu', 'cuda', 'cuda:N' or a torch.device"),
    ("cpu", "bfloat", "unknown dtype 'bfloat'; use one of float32, bfloat16, float16, float64"),
    ("cpu", torch.int8, "dtype torch.int8 is not one a model computes in"),
    ("cpu", 16, "dtype must be a torch dtype or its name, got int"),
])
def test_a_bad_device_or_dtype_is_refused_before_loading(converted_path, device, dtype, words):
    with pytest.raises(InputError) as error:
        load(converted_path, device=device, dtype=dtype)
    assert str(error.value).startswith(words), error.value


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_without_a_cuda_device_says_so(converted_path):
    with pytest.raises(InputError, match=r"^device 'cuda': PyTorch sees no CUDA device here"):
        load(converted_path, device="cuda")


def test_foreign_safetensors_file_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"weight": np.zeros(3, np.float32)}, path)
    with pytest.raises(CheckpointFileError, match="without this project's metadata"):
        load(path)


def test_truncated_and_missing_files_are_refused(converted_path, tmp_path):
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(converted_path.read_bytes()[:100])
    with pytest.raises(CheckpointFileError, match="cut.safetensors"):
        load(truncated)
    with pytest.raises(CheckpointFileError, match="does not exist"):
        load(tmp_path / "absent.safetensors")


def test_save_and_load_bfloat16_bit_for_bit(converted_path, tmp_path):
    model = load(converted_path, dtype=torch.bfloat16)
    save(model, tmp_path / "bf16.safetensors")
    again = load(tmp_path / "bf16.safetensors")
    for (key, ours), (_, theirs) in zip(model.state_dict().items(), again.state_dict().items()):
        assert theirs.dtype == ours.dtype and torch.equal(ours, theirs), key


def test_a_model_without_values_is_not_saved(converted_path, tmp_path):
    with pytest.raises(ValueError, match="meta device"):
        save(load(converted_path).to("meta"), tmp_path / "meta.safetensors")
    assert not (tmp_path / "meta.safetensors").exists()


@pytest.mark.parametrize("device", ["cpu:0", torch.device("cpu", 0), "meta"])
def test_load_takes_any_device_spelling(converted_path, device):
    model = load(converted_path, device=device)
    assert all(p.device.type == torch.device(device).type for p in model.parameters())


def test_a_converted_file_is_known_by_its_content_not_its_name(converted_path, tmp_path):
    renamed = tmp_path / "model.st"
    renamed.write_bytes(converted_path.read_bytes())
    assert torch.equal(load(renamed).embedding_decoder.bias, load(converted_path).embedding_decoder.bias)


def _rewritten(source, folder, change):
    """A copy of the converted file with its tensors and metadata passed through `change(tensors, metadata)`."""
    from safetensors import safe_open

    with safe_open(source, framework="np") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    change(tensors, metadata)
    path = folder / "changed.safetensors"
    save_file(tensors, path, metadata)
    return path


def _first_float(tensors):
    return next(key for key, value in tensors.items() if value.dtype == np.float32)


@pytest.mark.parametrize("change, words", [
    (lambda t, m: t.update({_first_float(t): t[_first_float(t)].astype(np.int32)}), "wrong dtypes"),
    (lambda t, m: t.update({_first_float(t): t[_first_float(t)].astype(np.float64)}), "mixes floating dtypes"),
    (lambda t, m: m.update(task="[1]"), "unknown task"),
])
def test_tampered_files_are_refused_naming_the_problem(converted_path, tmp_path, change, words):
    with pytest.raises(CheckpointFileError, match=words):
        load(_rewritten(converted_path, tmp_path, change))


def test_files_damaged_after_the_header_or_not_files_are_refused(converted_path, tmp_path):
    data = converted_path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointFileError, match="damaged or truncated"):
        load(cut)
    (tmp_path / "folder.safetensors").mkdir()
    with pytest.raises(CheckpointFileError, match="is a directory, not a converted checkpoint file"):
        load(tmp_path / "folder.safetensors")


def test_a_pipe_is_refused_without_being_opened(tmp_path):
    """Opening a FIFO for reading blocks until a writer comes: `load` must refuse it before that."""
    for name in ("pipe.safetensors", "pipe.pickle"):
        os.mkfifo(tmp_path / name)
    with pytest.raises(CheckpointFileError, match="is a FIFO, not a converted checkpoint file"):
        load(tmp_path / "pipe.safetensors")
    with pytest.raises(ValueError, match="is a FIFO, not a regular file"):
        load(tmp_path / "pipe.pickle", task="language_mlm")


def test_fill_mask_fills_each_marker_with_the_models_best_byte(converted_path):
    model = load(converted_path)
    text = "Perceiver [MASK][MASK] bytes"
    filled = fill_mask(model, text)
    prefix, suffix = "Perceiver ", " bytes"
    assert filled.startswith(prefix) and filled.endswith(suffix)

    tokenizer = BytesTokenizer()
    ids = np.concatenate([tokenizer.encode(prefix), [3, 3], tokenizer.encode(suffix)]).astype(np.int32)
    ids, mask = tokenizer.pad(ids, model.config.max_seq_len)
    with torch.inference_mode():
        logits = model(torch.from_numpy(ids)[None], torch.from_numpy(mask)[None])[0]
    best = logits[len(prefix): len(prefix) + 2, NUM_SPECIAL_TOKENS:].argmax(-1) + NUM_SPECIAL_TOKENS
    expected = tokenizer.decode(np.concatenate([tokenizer.encode(prefix), best.numpy(), tokenizer.encode(suffix)]))
    assert filled == expected
    with pytest.raises(ValueError, match="mask_marker must not be empty"):
        fill_mask(model, text, mask_marker="")
    with pytest.raises(ValueError, match="no '\\[MASK\\]'"):
        fill_mask(model, "nothing to fill")


@pytest.mark.parametrize("shape", [(1280, 1280), (256, 300), (300, 2049), (65, 4000), (3, 5), (1, 7)])
def test_c_contiguous_transposes_in_panels_exactly(shape):
    rng = np.random.default_rng(0)
    source = rng.standard_normal(shape, dtype=np.float32)
    for view in (source.T, source[:, ::2].T, source.reshape(-1)[::-1]):
        out = c_contiguous(view)
        assert out.flags.c_contiguous and out.dtype == view.dtype
        np.testing.assert_array_equal(out, view)
    assert c_contiguous(source) is source
