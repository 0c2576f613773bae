"""The conversion engine and `convert-checkpoint` on good and bad input."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from converters.cli import main
from converters.convert import convert_checkpoint, convert_tree, export_tree
from converters.haiku_pickle import load_haiku_checkpoint, save_haiku_pickle
from perceiver_io.errors import CheckpointFormatError, ConversionError, MappingError, UnsafePickleError
from perceiver_io.serialization import load, save

from .conftest import GOLDEN


@pytest.fixture
def language_tree(golden_language):
    checkpoint = load_haiku_checkpoint(golden_language.checkpoint)
    return {module: dict(leaves) for module, leaves in checkpoint.params.items()}


def test_round_trip_haiku_torch_haiku_is_identity(golden_language, language_tree):
    state_dict = convert_tree(language_tree, "language_mlm", golden_language.config)
    params, state = export_tree(state_dict, "language_mlm", golden_language.config)
    assert state == {}
    assert params.keys() == language_tree.keys()
    for module, leaves in language_tree.items():
        assert params[module].keys() == leaves.keys()
        for name, value in leaves.items():
            np.testing.assert_array_equal(params[module][name], value, err_msg=f"{module}/{name}")


def test_written_file_carries_task_config_and_source_hash(golden_language, tmp_path):
    import hashlib

    from perceiver_io.checkpoint_file import read_metadata

    output = tmp_path / "out.safetensors"
    convert_checkpoint(golden_language.checkpoint, output, "language_mlm", golden_language.config)
    metadata = read_metadata(output)
    assert metadata["task"] == "language_mlm"
    assert json.loads(metadata["config"])["D_MODEL"] == 32
    assert metadata["source_sha256"] == hashlib.sha256(golden_language.checkpoint.read_bytes()).hexdigest()
    assert metadata["source_file"] == golden_language.checkpoint.name
    assert load(output).config.to_official() == json.loads(metadata["config"])


def test_existing_output_is_kept_without_force(golden_language, tmp_path):
    output = tmp_path / "out.safetensors"
    output.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="--force"):
        convert_checkpoint(golden_language.checkpoint, output, "language_mlm", golden_language.config)
    assert output.read_bytes() == b"precious"
    convert_checkpoint(golden_language.checkpoint, output, "language_mlm", golden_language.config, overwrite=True)
    assert load(output) is not None


def _assert_nothing_written(folder):
    assert sorted(os.listdir(folder)) == ["src"], sorted(os.listdir(folder))


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "src").mkdir()
    return tmp_path


def _convert_cli(source, workdir, golden_language, capsys, *extra):
    config = workdir / "src" / "config.json"
    config.write_text(json.dumps(golden_language.config))
    code = main([str(source), "-o", str(workdir / "out.safetensors"), "--task", "language_mlm",
                 "--config", str(config), *extra])
    return code, capsys.readouterr()


def test_cli_converts(golden_language, workdir, capsys):
    code, printed = _convert_cli(golden_language.checkpoint, workdir, golden_language, capsys)
    assert code == 0, printed.err
    assert "70,822 parameters" in printed.out
    assert (workdir / "out.safetensors").exists()


def test_truncated_file(golden_language, workdir, capsys):
    source = workdir / "src" / "truncated.pickle"
    data = golden_language.checkpoint.read_bytes()
    source.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match="truncated.pickle"):
        convert_checkpoint(source, workdir / "out.safetensors", "language_mlm", golden_language.config)
    code, printed = _convert_cli(source, workdir, golden_language, capsys)
    assert code == 2 and "truncated.pickle" in printed.err
    assert not (workdir / "out.safetensors").exists()


class _RunsShell:
    def __reduce__(self):
        return (os.system, ("echo owned > owned.txt",))


def test_pickle_that_calls_os_system_is_refused(golden_language, workdir, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    source = workdir / "src" / "evil.pickle"
    source.write_bytes(pickle.dumps({"embed": {"embeddings": _RunsShell()}}))
    with pytest.raises(UnsafePickleError, match="system"):
        convert_checkpoint(source, workdir / "out.safetensors", "language_mlm", golden_language.config)
    code, printed = _convert_cli(source, workdir, golden_language, capsys)
    assert code == 2 and "system" in printed.err
    assert not (workdir / "owned.txt").exists()
    assert not (workdir / "out.safetensors").exists()


def test_wrong_task_for_the_file(golden_language, workdir, capsys):
    source = GOLDEN / "imagenet_learned" / "imagenet_learned_position_encoding.pystate"
    code, printed = _convert_cli(source, workdir, golden_language, capsys)
    assert code == 2
    assert "missing leaves" in printed.err and "unused leaves" in printed.err and "--task" in printed.err
    assert not (workdir / "out.safetensors").exists()


def test_missing_leaf(golden_language, language_tree, workdir, capsys):
    del language_tree["perceiver_encoder/~/self_attention_1/mlp/linear"]["w"]
    source = workdir / "src" / "missing.pickle"
    save_haiku_pickle(source, language_tree)
    with pytest.raises(MappingError, match=r"missing leaves \(1\): params:perceiver_encoder/~/self_attention_1/mlp/linear/w"):
        convert_checkpoint(source, workdir / "out.safetensors", "language_mlm", golden_language.config)
    code, printed = _convert_cli(source, workdir, golden_language, capsys)
    assert code == 2 and "self_attention_1/mlp/linear/w" in printed.err
    assert not (workdir / "out.safetensors").exists()


def test_wrong_shape(golden_language, language_tree, workdir, capsys):
    language_tree["basic_decoder/cross_attention/attention/linear_3"]["w"] = np.zeros((32, 33), np.float32)
    source = workdir / "src" / "shape.pickle"
    save_haiku_pickle(source, language_tree)
    with pytest.raises(MappingError, match=r"linear_3/w: expected \(32, 32\), found \(32, 33\)"):
        convert_checkpoint(source, workdir / "out.safetensors", "language_mlm", golden_language.config)
    code, printed = _convert_cli(source, workdir, golden_language, capsys)
    assert code == 2 and "found (32, 33)" in printed.err
    assert not (workdir / "out.safetensors").exists()


def test_released_config_is_refused_for_a_reduced_checkpoint(golden_language, workdir, capsys):
    code = main([str(golden_language.checkpoint), "-o", str(workdir / "out.safetensors"), "--task", "language_mlm"])
    assert code == 2 and "wrong shapes" in capsys.readouterr().err
    assert not (workdir / "out.safetensors").exists()


def test_bad_config_file(golden_language, workdir, capsys):
    config = workdir / "src" / "config.json"
    config.write_text(json.dumps({**golden_language.config, "D_MODLE": 3}))
    code = main([str(golden_language.checkpoint), "-o", str(workdir / "out.safetensors"), "--task", "language_mlm",
                 "--config", str(config)])
    assert code == 2 and "unknown keys ['D_MODLE']" in capsys.readouterr().err


def test_cli_export_writes_back_the_original_tree(golden_language, language_tree, workdir, capsys):
    converted = workdir / "model.safetensors"
    convert_checkpoint(golden_language.checkpoint, converted, "language_mlm", golden_language.config)
    for suffix in (".pickle", ".npz"):
        exported = workdir / f"back{suffix}"
        assert main(["export", str(converted), "-o", str(exported)]) == 0, capsys.readouterr().err
        back = load_haiku_checkpoint(exported)
        assert back.params.keys() == language_tree.keys() and back.state == {}
        for module, leaves in language_tree.items():
            for name, value in leaves.items():
                np.testing.assert_array_equal(back.params[module][name], value)
        assert main(["export", str(converted), "-o", str(exported)]) == 2
        assert "--force" in capsys.readouterr().err


@pytest.mark.parametrize("container", [False, True])
def test_cli_export_gives_back_the_layout_of_the_source(golden_language, language_tree, workdir, capsys, container):
    """A checkpoint saved as `{'params': ..., 'state': {}}` comes back so (the user's `ckpt['params']` works), and
    bare params come back bare."""
    source = workdir / "src" / "model.pickle"
    save_haiku_pickle(source, language_tree, {} if container else None)
    converted = workdir / "model.safetensors"
    convert_checkpoint(source, converted, "language_mlm", golden_language.config)
    exported = workdir / "back.pickle"
    assert main(["export", str(converted), "-o", str(exported)]) == 0, capsys.readouterr().err
    back = load_haiku_checkpoint(exported)
    assert back.container is container and set(back.params) == set(language_tree) and back.state == {}
    tuned = load(converted)
    with torch.no_grad():
        tuned.embedding_decoder.bias.add_(1.0)  # as if fine-tuned
    saved = save(tuned, workdir / "tuned.safetensors")  # keeps the layout for a later export
    assert main(["export", str(saved), "-o", str(workdir / "tuned.pickle")]) == 0
    assert load_haiku_checkpoint(workdir / "tuned.pickle").container is container
    other = "params" if container else "params_and_state"
    assert main(["export", str(converted), "-o", str(exported), "--force", "--layout", other]) == 0
    assert load_haiku_checkpoint(exported).container is not container  # --layout overrides the record


def _save_npz(path, tree, dtypes=None):
    """`tree` as an npz file with the documented keys, each leaf cast to `dtypes.get(key, its dtype)`."""
    dtypes = dtypes or {}
    np.savez(path, **{f"params/{module}/{name}": leaf.astype(dtypes.get(f"{module}/{name}", leaf.dtype))
                      for module, leaves in tree.items() for name, leaf in leaves.items()})


@pytest.mark.parametrize("dtype", ["int32", "bool"])
def test_non_floating_leaves_are_refused_naming_them(golden_language, language_tree, workdir, capsys, dtype):
    source = workdir / "src" / f"{dtype}.npz"
    _save_npz(source, language_tree, dict.fromkeys(["embed/embeddings", "trainable_position_encoding/pos_embs"], dtype))
    with pytest.raises(MappingError, match=rf"wrong dtypes \(2\): params:embed/embeddings: expected float32, found "
                       rf"{dtype}, params:trainable_position_encoding/pos_embs: expected float32, found {dtype}\n"
                       r"  Cast every floating leaf to the checkpoint's floating dtype, float32"):
        convert_checkpoint(source, workdir / "out.safetensors", "language_mlm", golden_language.config)
    code, printed = _convert_cli(source, workdir, golden_language, capsys)
    assert code == 2 and f"found {dtype}" in printed.err
    assert not (workdir / "out.safetensors").exists()


def test_a_leaf_of_another_floating_dtype_is_refused_naming_it(golden_language, language_tree, workdir):
    source = workdir / "src" / "mixed.npz"
    _save_npz(source, language_tree, {"embed/embeddings": "float64"})
    with pytest.raises(MappingError, match=r"configuration:\n  wrong dtypes \(1\): params:embed/embeddings: "
                       r"expected float32, found float64\n  Cast every floating leaf"):
        convert_checkpoint(source, workdir / "out.safetensors", "language_mlm", golden_language.config)


@pytest.mark.parametrize("dtype, loaded", [("float16", "float16"), (">f4", "float32")])
def test_float16_checkpoints_and_big_endian_leaves_convert(golden_language, language_tree, workdir, dtype, loaded):
    source = workdir / "src" / "cast.npz"
    _save_npz(source, language_tree, {f"{m}/{n}": dtype for m, leaves in language_tree.items() for n in leaves})
    convert_checkpoint(source, workdir / "out.safetensors", "language_mlm", golden_language.config)
    weight = load(workdir / "out.safetensors").perceiver.input_preprocessor.token_embedding.weight
    assert weight.dtype == getattr(torch, loaded)
    np.testing.assert_array_equal(weight.detach().numpy(), language_tree["embed"]["embeddings"].astype(dtype))


def test_the_source_itself_is_never_the_output(golden_language, workdir, capsys):
    source = workdir / "src" / "model.pickle"
    source.write_bytes(golden_language.checkpoint.read_bytes())
    for output in (source, workdir / "src" / "." / "model.pickle"):
        code = main([str(source), "-o", str(output), "--task", "language_mlm", "--force"])
        assert code == 2 and "the file written is .safetensors" in capsys.readouterr().err
        with pytest.raises(ConversionError, match="is the source checkpoint"):
            convert_checkpoint(source, output, "language_mlm", overwrite=True)
    assert source.read_bytes() == golden_language.checkpoint.read_bytes()
