"""Allow-listed loading and released-format saving of Haiku checkpoints (`converters.haiku_pickle`).

Checked against the six golden checkpoints (same format as the released files) and their
`param_manifest.json`, against plain `pickle.load` with haiku installed, and against hostile and broken
files. Array comparisons are exact: loading and saving never change a value.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import pickletools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters.haiku_pickle import HaikuCheckpoint, load_haiku_checkpoint, save_haiku_npz, save_haiku_pickle
from perceiver_io.errors import CheckpointFormatError, UnsafePickleError

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN = REPO_ROOT / "tests" / "data" / "golden"
GOLDEN_FILES = {
    path.parent.name: path for pattern in ("*/*.pickle", "*/*.pystate") for path in sorted(GOLDEN.glob(pattern))
}
RELEASED_GLOBALS = {
    "haiku._src.data_structures FlatMapping",
    "numpy.core.multiarray _reconstruct",
    "numpy ndarray",
    "numpy dtype",
}


def manifest_leaves(task: str) -> dict[str, dict[str, tuple[tuple[int, ...], str]]]:
    manifest = json.loads((GOLDEN / task / "param_manifest.json").read_text())
    return {
        part: {f"{leaf['module']}/{leaf['name']}": (tuple(leaf["shape"]), leaf["dtype"]) for leaf in manifest[part]}
        for part in ("params", "state")
    }


def leaf_table(tree: dict[str, dict[str, np.ndarray]]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {f"{module}/{name}": (a.shape, str(a.dtype)) for module, leaves in tree.items()
            for name, a in leaves.items()}


def assert_trees_equal(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for module in expected:
        assert sorted(actual[module]) == sorted(expected[module]), module
        for name, want in expected[module].items():
            got = actual[module][name]
            assert isinstance(got, np.ndarray), f"{module}/{name} is a {type(got).__name__}"
            assert got.dtype == np.asarray(want).dtype and got.shape == np.shape(want), f"{module}/{name}"
            assert np.array_equal(got, want), f"{module}/{name}: max |diff| {np.max(np.abs(got.astype(float) - want))}"


def pickle_globals(path: Path) -> set[str]:
    return {arg for op, arg, _ in pickletools.genops(path.read_bytes()) if op.name in ("GLOBAL", "STACK_GLOBAL")}


def small_tree(seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    params = {
        "perceiver_encoder/~/cross_attention/attention/linear": {
            "w": rng.standard_normal((48, 32), dtype=np.float32),
            "b": rng.standard_normal(32, dtype=np.float32),
        },
        "embed": {"embeddings": rng.standard_normal((262, 8), dtype=np.float32)},
    }
    state = {
        "image_preprocessor/~/conv2_d_downsample/~/batchnorm/~/mean_ema": {
            "counter": np.asarray(7, dtype=np.int32),
            "hidden": rng.standard_normal((1, 1, 1, 8), dtype=np.float32),
            "average": rng.standard_normal((1, 1, 1, 8), dtype=np.float32),
        }
    }
    return params, state


# --- The golden checkpoints ---------------------------------------------------------------------------


def test_all_six_golden_checkpoints_are_found():
    assert sorted(GOLDEN_FILES) == sorted(
        ["imagenet_conv", "imagenet_fourier", "imagenet_learned", "language_mlm", "multimodal_autoencoding",
         "optical_flow"]
    )


@pytest.mark.parametrize("task", sorted(GOLDEN_FILES))
def test_golden_checkpoint_loads_without_haiku_or_jax_and_matches_manifest(task):
    script = (
        "import json, sys\n"
        "sys.modules.update(haiku=None, jax=None, jaxlib=None)  # any `import haiku` now raises ImportError\n"
        "from converters.haiku_pickle import load_haiku_checkpoint\n"
        f"checkpoint = load_haiku_checkpoint({str(GOLDEN_FILES[task])!r})\n"
        "table = lambda tree: {f'{m}/{n}': [list(a.shape), str(a.dtype)]\n"
        "                      for m, leaves in tree.items() for n, a in leaves.items()}\n"
        "print(json.dumps({'params': table(checkpoint.params), 'state': table(checkpoint.state)}))\n"
    )
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": python_path},
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    expected = manifest_leaves(task)
    for part in ("params", "state"):
        found = {key: (tuple(shape), dtype) for key, (shape, dtype) in loaded[part].items()}
        assert found == expected[part], f"{part}: differs from {task}/param_manifest.json"
    manifest = json.loads((GOLDEN / task / "param_manifest.json").read_text())
    count = lambda part: sum(int(np.prod(shape)) for shape, _ in loaded[part].values())
    assert (count("params"), count("state")) == (manifest["total_param_count"], manifest["total_state_count"])


@pytest.mark.parametrize("task", sorted(GOLDEN_FILES))
def test_golden_checkpoint_equals_plain_pickle_load_with_haiku(task):
    pytest.importorskip("haiku")
    path = GOLDEN_FILES[task]
    with open(path, "rb") as file:
        reference = pickle.load(file)  # the colab's way; trusted test data
    reference_params, reference_state = (
        (reference["params"], reference["state"]) if "params" in reference else (reference, {})
    )
    checkpoint = load_haiku_checkpoint(path)
    assert_trees_equal(checkpoint.params, reference_params)
    assert_trees_equal(checkpoint.state, reference_state)
    assert checkpoint.source == str(path)
    assert checkpoint.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_conv_state_holds_int32_scalar_counters():
    state = load_haiku_checkpoint(GOLDEN_FILES["imagenet_conv"]).state
    counters = [leaves["counter"] for leaves in state.values()]
    assert len(counters) == 2 and all(c.shape == () and c.dtype == np.int32 for c in counters)


def test_extension_does_not_matter(tmp_path):
    renamed = tmp_path / "checkpoint.bin"
    renamed.write_bytes(GOLDEN_FILES["optical_flow"].read_bytes())
    assert leaf_table(load_haiku_checkpoint(renamed).params) == leaf_table(
        load_haiku_checkpoint(GOLDEN_FILES["optical_flow"]).params
    )


def test_repr_names_the_file_not_the_arrays():
    text = repr(load_haiku_checkpoint(GOLDEN_FILES["language_mlm"]))
    assert "language_perceiver_io_bytes.pickle" in text and "array(" not in text


# --- Other pickles a user may hold --------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_plain_dict_pickles_of_numpy_arrays_load(tmp_path, protocol):
    params, state = small_tree()
    state[next(iter(state))]["counter"] = np.int32(7)  # a numpy scalar leaf (`numpy.core.multiarray scalar`)
    path = tmp_path / f"protocol{protocol}.pystate"
    path.write_bytes(pickle.dumps({"params": params, "state": state}, protocol=protocol))
    checkpoint = load_haiku_checkpoint(path)
    assert_trees_equal(checkpoint.params, params)
    assert_trees_equal(checkpoint.state, state)


# --- Hostile and broken files -------------------------------------------------------------------------


class RunsShellCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_pickle_that_calls_os_system_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pickle"
    payload = {"linear": {"w": np.ones(3, np.float32), "b": RunsShellCommand(f"echo pwned > {marker}")}}
    path.write_bytes(pickle.dumps(payload, protocol=3))
    with pytest.raises(UnsafePickleError) as raised:
        load_haiku_checkpoint(path)
    assert not marker.exists()
    message = str(raised.value)
    # pickle names os.system by the module that defines it: `posix` on Linux and macOS, `nt` on Windows.
    assert os.system.__module__ in message and "system" in message and str(path) in message


@pytest.mark.parametrize(
    "module, name, argument",
    [("os", "system", "echo pwned > {marker}"), ("builtins", "eval", "open({marker!r}, 'w')"),
     ("subprocess", "Popen", "touch {marker}")],
)
def test_pickle_naming_a_dangerous_global_is_refused(tmp_path, module, name, argument):
    marker = tmp_path / "pwned"
    argument = argument.format(marker=str(marker)).encode()
    payload = (
        pickle.PROTO + b"\x03" + pickle.GLOBAL + f"{module}\n{name}\n".encode()
        + pickle.BINUNICODE + len(argument).to_bytes(4, "little") + argument
        + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP
    )
    path = tmp_path / "evil.pystate"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=f"{module}.*{name}") as raised:
        load_haiku_checkpoint(path)
    assert str(path) in str(raised.value)
    assert not marker.exists()


def test_jax_arrays_pickled_as_such_are_refused_with_advice(tmp_path):
    path = tmp_path / "jax_leaves.pickle"
    payload = pickle.PROTO + b"\x03" + pickle.GLOBAL + b"jax._src.array\n_reconstruct_array\n" + pickle.STOP
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=r"jax\._src\.array.*np\.asarray"):
        load_haiku_checkpoint(path)


class Reduces:
    """Pickles as `function(*args)` + BUILD `state`: to craft pickles that use only allowed globals."""

    def __init__(self, function, args, state=None):
        self.reduction = (function, args) if state is None else (function, args, state)

    def __reduce__(self):
        return self.reduction


NUMPY_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]

FORGED_ARRAYS = {
    # ndarray(shape, object, buffer) reads pointers from the buffer: numpy itself segfaults on it.
    "ndarray_called_with_object_buffer": (Reduces(np.ndarray, ((1,), np.dtype("O"), b"\x01" * 8)), "dtype 'O8'"),
    "ndarray_called_directly": (Reduces(np.ndarray, ((2,), np.dtype("f4"), b"\x00" * 8)), "numpy.ndarray directly"),
    "object_array_from_bytes": (
        Reduces(NUMPY_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (1,), np.dtype("O"), False, b"\x01" * 8)),
        "dtype 'O8'",
    ),
    # A BUILD on a real dtype can give float32 an object field; the stand-in refuses any fields.
    "dtype_given_fields": (
        Reduces(np.dtype, ("f4", False, True), (3, "|", None, ("a",), {"a": ("x", 0)}, 4, 1, 0)),
        "numeric dtype float32 the state",
    ),
    "too_few_bytes": (
        Reduces(NUMPY_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (4,), np.dtype("f4"), False, b"\x00" * 8)),
        "8 bytes for a float32 array of shape \\(4,\\), which needs 16",
    ),
    "not_an_ndarray": (Reduces(NUMPY_RECONSTRUCT, (np.dtype, (0,), b"b")), "reconstructs an array of type"),
}


@pytest.mark.parametrize("case", sorted(FORGED_ARRAYS))
def test_forged_numpy_objects_are_refused_before_numpy_sees_them(tmp_path, case):
    leaf, expected_words = FORGED_ARRAYS[case]
    path = tmp_path / f"{case}.pickle"
    path.write_bytes(pickle.dumps({"linear": {"w": leaf}}, protocol=3))
    with pytest.raises(CheckpointFormatError, match=expected_words) as raised:
        load_haiku_checkpoint(path)
    assert str(path) in str(raised.value)


def test_a_pickle_cannot_modify_an_allowed_global_for_later_loads(tmp_path):
    path = tmp_path / "build_on_global.pickle"
    build_on_dtype = {"__init__": None}  # BUILD on the `numpy dtype` global itself
    path.write_bytes(pickle.PROTO + b"\x03" + pickle.GLOBAL + b"numpy\ndtype\n"
                     + pickle.dumps(build_on_dtype, protocol=3)[2:-1] + pickle.BUILD + pickle.STOP)
    with pytest.raises(CheckpointFormatError, match="modify one of its globals"):
        load_haiku_checkpoint(path)
    assert leaf_table(load_haiku_checkpoint(GOLDEN_FILES["imagenet_conv"]).state)


@pytest.mark.parametrize("dtype", ["float32", ">f4", "float16", "float64", "int32", "uint8", "bool", "complex64"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_numeric_dtypes_and_layouts_round_trip_through_both_pickle_writers(tmp_path, dtype, order):
    values = np.asarray(np.arange(24).reshape(2, 3, 4) % 5, dtype=dtype, order=order)
    tree = {"module": {"values": values, "scalar": values.reshape(-1)[3].copy().reshape(())}}
    ours, numpys = tmp_path / "ours.pickle", tmp_path / "numpys.pickle"
    save_haiku_pickle(ours, tree)
    numpys.write_bytes(pickle.dumps(tree, protocol=3))
    for path in (ours, numpys):
        loaded = load_haiku_checkpoint(path).params["module"]
        for name, want in tree["module"].items():
            # numpy's own unpickling turns big-endian data native, as it does here: same values.
            assert loaded[name].dtype.newbyteorder("=") == want.dtype.newbyteorder("="), (path.name, name)
            assert loaded[name].shape == want.shape and np.array_equal(loaded[name], want), (path.name, name)


def broken_files(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    golden = GOLDEN_FILES["language_mlm"].read_bytes()
    rng = np.random.default_rng(0)
    npz = tmp_path / "wrong_keys.npz"
    np.savez(npz, **{"linear/w": np.ones(2, np.float32)})
    return {
        "truncated": (golden[: len(golden) // 2], "truncated"),
        "empty": (b"", "empty"),
        "random": (rng.bytes(4096).replace(b"PK", b"pk"), "not a Haiku checkpoint"),
        "random_after_header": (pickle.PROTO + b"\x03" + rng.bytes(4096), "corrupt|truncated"),
        "html": (b"<!DOCTYPE html><html>Not Found</html>", "HTML"),
        "list": (pickle.dumps([np.ones(3, np.float32)], protocol=3), "top level is a list"),
        "string_leaf": (pickle.dumps({"linear": {"w": "weights"}}, protocol=3), "linear/w is a str"),
        "module_not_mapping": (pickle.dumps({"linear": np.ones(3, np.float32)}, protocol=3),
                               "module 'linear' is an array"),
        "object_leaf": (pickle.dumps({"linear": {"w": np.array([None])}}, protocol=3), "dtype 'O8'"),
        "three_levels": (pickle.dumps({"a": {"b": {"c": np.ones(1)}}}, protocol=3), "a/b is a dict"),
        "container_extra_key": (pickle.dumps({"params": {"linear": {"w": np.ones(1)}}, "state": {}, "opt": {}},
                                             protocol=3), "'opt'"),
        "no_modules": (pickle.dumps({}, protocol=3), "holds no modules"),
        "npz_wrong_keys": (npz.read_bytes(), "'linear/w'"),
        "truncated_npz": (npz.read_bytes()[:100], "npz"),
        # LONG_BINPUT 2**31-1 on an empty memo: CPython's unpickler would allocate a memo table of 16 GiB.
        "huge_memo_index": (pickle.PROTO + b"\x03" + pickle.NONE + pickle.LONG_BINPUT + b"\xff\xff\xff\x7f"
                            + pickle.STOP, "LONG_BINPUT at byte 3 stores memo entry 2,147,483,647, but only 0"),
        "memo_index_skipping_ahead": (pickle.PROTO + b"\x03" + pickle.NONE + pickle.BINPUT + b"\x00" + pickle.NONE
                                      + pickle.PUT + b"5\n" + pickle.STOP, "PUT at byte 6 stores memo entry 5"),
    }


BROKEN_CASES = [
    "truncated", "empty", "random", "random_after_header", "html", "list", "string_leaf", "module_not_mapping",
    "object_leaf", "three_levels", "container_extra_key", "no_modules", "npz_wrong_keys", "truncated_npz",
    "huge_memo_index", "memo_index_skipping_ahead",
]


@pytest.mark.parametrize("case", BROKEN_CASES)
def test_broken_file_raises_format_error_naming_the_file(tmp_path, case):
    content, expected_words = broken_files(tmp_path)[case]
    path = tmp_path / f"{case}.pystate"
    path.write_bytes(content)
    with pytest.raises(CheckpointFormatError, match=expected_words) as raised:
        load_haiku_checkpoint(path)
    assert not isinstance(raised.value, UnsafePickleError)
    assert str(path) in str(raised.value)


def test_every_truncation_is_reported_as_a_format_error(tmp_path):
    golden = GOLDEN_FILES["imagenet_conv"].read_bytes()
    path = tmp_path / "cut.pystate"
    for end in range(0, len(golden), 997):
        path.write_bytes(golden[:end])
        with pytest.raises(CheckpointFormatError, match="cut.pystate"):
            load_haiku_checkpoint(path)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "absent.pickle"
    with pytest.raises(FileNotFoundError, match="absent.pickle"):
        load_haiku_checkpoint(path)


@pytest.mark.parametrize("kind", ["a directory", "a device", "a FIFO"])
def test_a_path_that_is_not_a_regular_file_is_refused(tmp_path, kind, request):
    path = {"a directory": tmp_path / "folder.pickle", "a device": Path("/dev/zero"),
            "a FIFO": tmp_path / "fifo.pickle"}[kind]
    if kind == "a directory":
        path.mkdir()
    if kind == "a FIFO":
        os.mkfifo(path)
        writer = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # so that opening it to read could not block
        request.addfinalizer(lambda: os.close(writer))
    with pytest.raises(CheckpointFormatError, match=f"{path} is {kind}, not a regular file"):
        load_haiku_checkpoint(path)


def test_bfloat16_checkpoints_are_refused_with_advice(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    tree = {"linear": {"w": np.ones(3, ml_dtypes.bfloat16)}}
    pickled, npz = tmp_path / "bfloat16.pickle", tmp_path / "bfloat16.npz"
    pickled.write_bytes(pickle.dumps(tree, protocol=3))
    np.savez(npz, **{"params/linear/w": tree["linear"]["w"]})  # numpy writes bfloat16 as |V2
    for path, found in ((pickled, "global ml_dtypes.bfloat16"), (npz, r"dtype \|V2")):
        with pytest.raises(CheckpointFormatError, match=f"{found}.*bfloat16 checkpoints are not supported: cast the "
                           "parameters to float32 in JAX first") as raised:
            load_haiku_checkpoint(path)
        assert not isinstance(raised.value, UnsafePickleError) and str(path) in str(raised.value)


def test_big_endian_leaves_become_native(tmp_path):
    values = np.arange(6, dtype=">f4").reshape(2, 3)
    path = tmp_path / "big_endian.npz"
    np.savez(path, **{"params/linear/w": values})
    for source in (path, {"linear": {"w": values}}):
        leaf = load_haiku_checkpoint(source).params["linear"]["w"]
        assert leaf.dtype == np.float32 and leaf.dtype.isnative and np.array_equal(leaf, values)


# --- npz and in-memory trees --------------------------------------------------------------------------


def test_npz_round_trip_with_the_documented_keys(tmp_path):
    params, state = small_tree()
    path = tmp_path / "tree.npz"
    save_haiku_npz(path, params, state)
    with np.load(path) as archive:
        assert sorted(archive.files) == sorted(
            [f"params/{m}/{n}" for m in params for n in params[m]] + [f"state/{m}/{n}" for m in state for n in state[m]]
        )
    checkpoint = load_haiku_checkpoint(path)
    assert_trees_equal(checkpoint.params, params)
    assert_trees_equal(checkpoint.state, state)
    assert checkpoint.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_npz_written_by_hand_loads_and_state_is_optional(tmp_path):
    path = tmp_path / "by_hand.npz"
    np.savez(path, **{"params/perceiver_encoder/~/cross_attention/layer_norm/scale": np.ones(4, np.float32)})
    checkpoint = load_haiku_checkpoint(path)
    assert leaf_table(checkpoint.params) == {"perceiver_encoder/~/cross_attention/layer_norm/scale": ((4,), "float32")}
    assert checkpoint.state == {}


def test_in_memory_tree_keeps_arrays_uncopied():
    params, state = small_tree()
    checkpoint = load_haiku_checkpoint({"params": params, "state": state})
    assert (checkpoint.source, checkpoint.sha256) == (None, None)
    assert_trees_equal(checkpoint.params, params)
    assert checkpoint.params["embed"]["embeddings"] is params["embed"]["embeddings"]
    assert load_haiku_checkpoint(params).state == {}


def test_in_memory_tree_from_haiku_init_with_jax_arrays():
    hk = pytest.importorskip("haiku")
    jax = pytest.importorskip("jax")
    forward = hk.transform_with_state(lambda x: hk.BatchNorm(True, True, 0.9)(hk.Linear(3)(x), is_training=True))
    params, state = forward.init(jax.random.PRNGKey(0), np.ones((2, 5), np.float32))
    checkpoint = load_haiku_checkpoint({"params": params, "state": state})
    assert leaf_table(checkpoint.params) == {"linear/w": ((5, 3), "float32"), "linear/b": ((3,), "float32"),
                                             "batch_norm/scale": ((1, 3), "float32"),
                                             "batch_norm/offset": ((1, 3), "float32")}
    assert leaf_table(checkpoint.state)["batch_norm/~/mean_ema/counter"] == ((), "int32")
    assert_trees_equal(checkpoint.params, jax.tree.map(np.asarray, hk.data_structures.to_mutable_dict(params)))


def test_in_memory_tree_with_a_non_array_leaf_is_refused():
    with pytest.raises(CheckpointFormatError, match="in-memory.*linear/w is a list"):
        load_haiku_checkpoint({"linear": {"w": [1.0, 2.0]}})


# --- save_haiku_pickle --------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["imagenet_conv", "language_mlm"])
def test_saved_pickle_has_the_released_globals_and_round_trips(tmp_path, task):
    golden = load_haiku_checkpoint(GOLDEN_FILES[task])
    path = tmp_path / GOLDEN_FILES[task].name
    save_haiku_pickle(path, golden.params, golden.state if golden.state else None)
    assert pickle_globals(path) == pickle_globals(GOLDEN_FILES[task]) == RELEASED_GLOBALS
    assert pickle.PROTO + b"\x03" == path.read_bytes()[:2]
    reloaded = load_haiku_checkpoint(path)
    assert_trees_equal(reloaded.params, golden.params)
    assert_trees_equal(reloaded.state, golden.state)


def test_saved_pickle_reads_back_with_haikus_own_pickle_load(tmp_path):
    pytest.importorskip("haiku")
    params, state = small_tree()
    state[next(iter(state))]["counter"] = np.int32(7)  # a numpy scalar leaf is saved as a 0-d int32 array
    with_state, bare = tmp_path / "with_state.pystate", tmp_path / "bare.pickle"
    save_haiku_pickle(with_state, params, state)
    save_haiku_pickle(bare, params)
    with open(with_state, "rb") as file:
        container = pickle.load(file)
    with open(bare, "rb") as file:
        bare_params = pickle.load(file)
    assert sorted(container) == ["params", "state"]
    assert_trees_equal(container["params"], params)
    assert_trees_equal(container["state"], {m: {n: np.asarray(a) for n, a in l.items()} for m, l in state.items()})
    assert_trees_equal(bare_params, params)


def test_save_with_empty_state_writes_the_imagenet_container(tmp_path):
    params, _ = small_tree()
    path = tmp_path / "empty_state.pystate"
    save_haiku_pickle(path, params, {})
    assert pickle_globals(path) == RELEASED_GLOBALS
    checkpoint = load_haiku_checkpoint(path)
    assert checkpoint.state == {} and leaf_table(checkpoint.params) == leaf_table(params)


def test_save_refuses_to_overwrite_unless_asked(tmp_path):
    params, _ = small_tree()
    other, _ = small_tree(seed=1)
    path = tmp_path / "params.pickle"
    save_haiku_pickle(path, params)
    original = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_haiku_pickle(path, other)
    assert path.read_bytes() == original
    save_haiku_pickle(path, other, overwrite=True)
    assert_trees_equal(load_haiku_checkpoint(path).params, other)
    with pytest.raises(FileExistsError):
        save_haiku_npz(path, other)


@pytest.mark.parametrize("failing", ["fsync", "replace"])
@pytest.mark.parametrize("save", [save_haiku_pickle, save_haiku_npz])
def test_failed_save_leaves_neither_a_partial_file_nor_a_changed_one(tmp_path, monkeypatch, failing, save):
    params, _ = small_tree()
    kept = tmp_path / "kept.pickle"
    kept.write_bytes(b"the previous file")

    def fail(*args, **kwargs):
        raise OSError(f"simulated {failing} failure")

    monkeypatch.setattr(os, failing, fail)
    for target in (tmp_path / "new.pickle", kept):
        with pytest.raises(OSError, match="simulated"):
            save(target, params, overwrite=True)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.pickle"]
    assert kept.read_bytes() == b"the previous file"


def test_save_validates_before_writing(tmp_path):
    path = tmp_path / "bad.pickle"
    with pytest.raises(CheckpointFormatError, match="save_haiku_pickle.*linear/w is a str"):
        save_haiku_pickle(path, {"linear": {"w": "weights"}})
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_is_frozen():
    checkpoint = load_haiku_checkpoint(small_tree()[0])
    assert isinstance(checkpoint, HaikuCheckpoint)
    with pytest.raises(AttributeError):
        checkpoint.source = "elsewhere"  # type: ignore[misc]
