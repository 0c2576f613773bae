"""Model configurations as dataclasses, read from and written to the keys of the official colab configs.

Each field carries the official key it is stored under (the field name unless stated). Reading a
dict rejects unknown keys and names missing required ones; absent optional keys take the official
code's default for that argument. `to_official()` writes every key, so a saved config is explicit.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, TypeVar

T = TypeVar("T", bound="OfficialConfig")


class ConfigError(ValueError):
    """A configuration dict does not describe a valid model."""


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


def _nested_type(f: dataclasses.Field) -> type[OfficialConfig] | None:
    return f.metadata.get("nested")


class OfficialConfig:
    """Mixin for dataclass configs stored in official keys."""

    official_name: ClassVar[str] = "config"

    @classmethod
    def from_official(cls: type[T], values: Mapping[str, Any], where: str | None = None) -> T:
        where = where or cls.official_name
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: expected a mapping of official config keys, got {type(values).__name__}")
        fields = {_key(f): f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; known keys are {sorted(fields)}")
        missing = sorted(
            key
            for key, f in fields.items()
            if key not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ConfigError(f"{where}: missing required keys {missing}")
        kwargs = {}
        for key, value in values.items():
            f = fields[key]
            nested = _nested_type(f)
            if nested is not None and value is not None:
                value = nested.from_official(value, f"{where}.{key}")
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[f.name] = value
        return cls(**kwargs)

    def to_official(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, OfficialConfig):
                value = value.to_official()
            elif isinstance(value, tuple):
                value = list(value)
            out[_key(f)] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_official(), sort_keys=True)


@dataclass(frozen=True)
class TrainablePositionEncodingConfig(OfficialConfig):
    """Official `trainable_position_encoding_kwargs`."""

    official_name: ClassVar[str] = "trainable_position_encoding_kwargs"
    num_channels: int = 128
    init_scale: float = 0.02


@dataclass(frozen=True)
class EncoderConfig(OfficialConfig):
    """Arguments of the official `PerceiverEncoder` (its `name` is the checkpoint's module prefix)."""

    official_name: ClassVar[str] = "encoder_config"
    num_self_attends_per_block: int = 6
    num_blocks: int = 8
    z_index_dim: int = 512
    num_z_channels: int = 1024
    qk_channels: int | None = None
    v_channels: int | None = None
    num_cross_attend_heads: int = 1
    num_self_attend_heads: int = 8
    cross_attend_widening_factor: int = 1
    self_attend_widening_factor: int = 1
    dropout_prob: float = 0.0
    z_pos_enc_init_scale: float = 0.02
    cross_attention_shape_for_attn: str = "kv"
    use_query_residual: bool = True
    name: str = "perceiver_encoder"


@dataclass(frozen=True)
class DecoderConfig(OfficialConfig):
    """Arguments of the official `BasicDecoder`."""

    official_name: ClassVar[str] = "decoder_config"
    output_num_channels: int
    position_encoding_type: str = "trainable"
    output_index_dims: int | tuple[int, ...] | None = None
    subsampled_index_dims: int | tuple[int, ...] | None = None
    num_z_channels: int = 1024
    qk_channels: int | None = None
    v_channels: int | None = None
    use_query_residual: bool = False
    concat_preprocessed_input: bool = False
    num_heads: int = 1
    final_project: bool = True
    trainable_position_encoding_kwargs: TrainablePositionEncodingConfig | None = field(
        default=None, metadata={"nested": TrainablePositionEncodingConfig}
    )
    name: str = "basic_decoder"

    def __post_init__(self):
        if self.position_encoding_type != "trainable":
            raise ConfigError(
                f"decoder_config.position_encoding_type={self.position_encoding_type!r} is not supported yet "
                "(supported: 'trainable')"
            )
        if self.concat_preprocessed_input:
            raise ConfigError("decoder_config.concat_preprocessed_input=True is not supported yet")
        if self.output_index_dims is None:
            raise ConfigError("decoder_config.output_index_dims is required for trainable decoder queries")

    @property
    def num_queries(self) -> int:
        dims = self.output_index_dims
        dims = (dims,) if isinstance(dims, int) else dims
        count = 1
        for d in dims:
            count *= d
        return count

    @property
    def query_position_encoding(self) -> TrainablePositionEncodingConfig:
        return self.trainable_position_encoding_kwargs or TrainablePositionEncodingConfig()


@dataclass(frozen=True)
class LanguageConfig(OfficialConfig):
    """The masked-language-modelling colab's configuration (`masked_language_modelling.ipynb`)."""

    official_name: ClassVar[str] = "language_mlm"
    d_model: int = field(metadata={"key": "D_MODEL"})
    d_latents: int = field(metadata={"key": "D_LATENTS"})
    max_seq_len: int = field(metadata={"key": "MAX_SEQ_LEN"})
    encoder: EncoderConfig = field(metadata={"key": "encoder_config", "nested": EncoderConfig})
    decoder: DecoderConfig = field(metadata={"key": "decoder_config", "nested": DecoderConfig})
    vocab_size: int = 262


LANGUAGE_MLM = LanguageConfig(
    d_model=768,
    d_latents=1280,
    max_seq_len=2048,
    vocab_size=262,
    encoder=EncoderConfig(
        num_self_attends_per_block=26,
        num_blocks=1,
        z_index_dim=256,
        num_z_channels=1280,
        num_self_attend_heads=8,
        num_cross_attend_heads=8,
        qk_channels=8 * 32,
        v_channels=1280,
        use_query_residual=True,
        cross_attend_widening_factor=1,
        self_attend_widening_factor=1,
    ),
    decoder=DecoderConfig(
        output_num_channels=1280,
        position_encoding_type="trainable",
        output_index_dims=2048,
        num_z_channels=1280,
        qk_channels=8 * 32,
        v_channels=768,
        num_heads=8,
        final_project=False,
        use_query_residual=False,
        trainable_position_encoding_kwargs=TrainablePositionEncodingConfig(num_channels=768),
    ),
)
"""The released masked-language model (`language_perceiver_io_bytes.pickle`), 201,108,230 parameters."""
