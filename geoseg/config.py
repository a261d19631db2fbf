"""Typed configuration for training and evaluation, from TOML or the seed's INI.

One frozen dataclass per section. ``load_config`` reads

* ``.toml`` (tomllib), or
* ``.ini`` / ``.config`` in the seed's ``train_eval_infer.config`` format: sections
  ``[model] [train] [eval] [test] [infer] [mask] [tiledinfer]`` whose values are
  Python-looking literals (``256``, ``0.001``, ``"./models"``, ``(5,5)``,
  ``["iou"]``, ``True``, ``{(60,16,152): 0}``). They are read by a small literal
  parser in this module; nothing is ever ``eval``-ed.

Every key is checked against its section's fields: an unknown key is an error that
names ``section.key`` and suggests the nearest known key (the seed silently
ignored ``reducer_patience`` because of a typo). Values are converted to the
field's type or rejected with a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import configparser
import difflib
import re
import types
import typing
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError, UnusedKeyWarning, one_line

__all__ = ["ModelConfig", "TrainConfig", "DataConfig", "InferConfig", "MaskConfig", "TiledInferConfig",
           "Config", "load_config", "parse_literal", "parse_colour", "config_to_toml"]

RGB = tuple[int, int, int]
IOU_NAMES = ("iou", "iou_coef", "mean_iou")   # the seed's names for the IoU metric


@dataclass(frozen=True)
class ModelConfig:
    """[model]: the network."""

    model: str = "flexunet"                 # flexunet, or a keras.applications encoder name
    image_width: int = 256                  # training chip size (px)
    image_height: int = 256
    image_channels: int = 3
    num_classes: int = 2
    base_filters: int = 16
    base_kernels: tuple[int, int] = (3, 3)  # first-level kernel; 2 smaller per level, >= 3
    num_layers: int = 5                     # depth including the bridge
    dropout_rate: float = 0.0
    dilation: tuple[int, int] = (1, 1)
    batch_norm: bool = True
    head: str = "softmax"                   # softmax | sigmoid (binary)
    encoder_weights: str = "none"           # none | imagenet | path to a weights file
    init_weights: str = ""                  # start from a trained model: a .geoseg bundle or .keras file
    learning_rate: float = 1e-3
    clipvalue: float | None = None
    loss: str = "categorical_crossentropy"  # categorical_crossentropy | dice | ce_dice | focal | ...
    metrics: tuple[str, ...] = ("iou",)     # reported: iou (mean IoU without background)
    show_summary: bool = False
    jit_compile: bool = True                # XLA-compile the train step (1.75x faster on CPU, bench/train_input.py)

    def __post_init__(self) -> None:
        _positive(self, "image_width", "image_height", "image_channels", "num_classes", "base_filters",
                  "num_layers")
        if not 0 <= self.dropout_rate < 1:
            raise ConfigError(f"model.dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.learning_rate <= 0:
            raise ConfigError(f"model.learning_rate must be positive, got {self.learning_rate}")
        if self.head not in ("softmax", "sigmoid"):
            raise ConfigError(f"model.head must be 'softmax' or 'sigmoid', got {self.head!r}")
        for name in self.metrics:
            if name not in IOU_NAMES:
                raise ConfigError(f"model.metrics: {name!r} is not supported (geoseg reports per-class "
                                  "IoU and Dice; use 'iou')")
        if self.model == "flexunet":
            m = self.tile_multiple
            if self.image_width % m or self.image_height % m:
                raise ConfigError(f"model.image_width/image_height must be multiples of {m} "
                                  f"for num_layers = {self.num_layers}")

    @property
    def tile_multiple(self) -> int:
        """What the network's input sides must be multiples of: its downsampling factor
        (``2 ** (num_layers - 1)`` for the FlexUNet, 32 for an encoder UNet)."""
        return 2 ** (self.num_layers - 1) if self.model == "flexunet" else 32


@dataclass(frozen=True)
class TrainConfig:
    """[train]: the training run."""

    epochs: int = 100
    batch_size: int = 8
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    patience: int = 10                      # early stopping (epochs without improvement)
    metrics: tuple[str, ...] = ("iou", "val_iou")  # the last one is monitored: val_iou or val_loss
    model_dir: str = "./models"
    eval_dir: str = "./eval"
    image_datapath: str = ""
    mask_datapath: str = ""
    learning_rate_reducer: bool = True
    reducer_factor: float = 0.5
    reducer_patience: int = 4
    epoch_change_infer: bool = False
    epoch_change_infer_dir: str = "./epoch_change_infer"
    epoch_change_tiledinfer: bool = False
    epoch_change_tiledinfer_dir: str = "./epoch_change_tiledinfer"
    num_infer_images: int = 1
    seed: int = 137
    # geoseg additions (bundle metadata and data handling)
    output: str = ""                        # bundle path (default: model_dir/model.geoseg)
    bands: tuple[str, ...] = ()             # input band names (default b1..bN)
    scale: float = 0.0                      # DN -> model scale (0: 1/255 for 8-bit, 1e-4 for 16-bit, else 1)
    offset: float = 0.0
    class_names: tuple[str, ...] = ()
    class_colors: tuple[str, ...] = ()      # "#RRGGBB" per class (default: a palette)
    background: int = 0                     # left out of the headline means (-1: none)
    class_weights: tuple[float, ...] = ()
    augment: bool = True
    input_pipeline: str = "auto"            # auto | tf.data | keras (PyDataset: any backend, no TensorFlow)
    tile_size: int = 256                    # recommended inference window for the bundle
    overlap: int = 32

    def __post_init__(self) -> None:
        _positive(self, "epochs", "batch_size", "num_infer_images")
        for name in self.metrics:
            if name not in IOU_NAMES + tuple("val_" + n for n in IOU_NAMES) + ("loss", "val_loss"):
                raise ConfigError(f"train.metrics: {name!r} is not supported (use iou, val_iou, loss, val_loss)")
        if not 0 < self.reducer_factor < 1:
            raise ConfigError(f"train.reducer_factor must be in (0, 1), got {self.reducer_factor}")
        if self.patience < 0 or self.reducer_patience < 0:
            raise ConfigError("train.patience and train.reducer_patience must not be negative")
        if self.input_pipeline not in ("auto", "tf.data", "keras"):
            raise ConfigError(f"train.input_pipeline must be auto, tf.data or keras, got {self.input_pipeline!r}")


@dataclass(frozen=True)
class DataConfig:
    """[eval] / [test]: held-out image and mask folders."""

    image_datapath: str = ""
    mask_datapath: str = ""


@dataclass(frozen=True)
class InferConfig:
    """[infer]: images to segment after training."""

    images_dir: str = ""                    # segmented with the trained model after training
    output_dir: str = ""                    # class rasters + previews go here (empty: skip)


@dataclass(frozen=True)
class MaskConfig:
    """[mask]: how masks become class indexes."""

    rgb_map: dict[RGB, int] = field(default_factory=dict)   # colour -> class index
    ignore_index: int = 255                 # colours not in rgb_map (counted in reports)
    binarize: bool = False                  # grey masks: class 1 where grey >= threshold, else 0
    threshold: int = 128
    grayscaling: bool = False               # colour masks to grey (ITU-R 601) before binarize

    def __post_init__(self) -> None:
        if not 0 <= self.ignore_index <= 255:
            raise ConfigError(f"mask.ignore_index must be 0..255, got {self.ignore_index}")
        if self.binarize and self.rgb_map:
            raise ConfigError("mask.binarize and mask.rgb_map exclude each other")
        if not 0 <= self.threshold <= 255:
            raise ConfigError(f"mask.threshold must be 0..255, got {self.threshold}")
        for rgb, cls in self.rgb_map.items():
            if cls == self.ignore_index:
                raise ConfigError(f"mask.rgb_map maps {_hex(rgb)} to the ignore index {cls}")
            if not 0 <= cls <= 254:
                raise ConfigError(f"mask.rgb_map: class index of {_hex(rgb)} must be 0..254, got {cls}")


@dataclass(frozen=True)
class TiledInferConfig:
    """[tiledinfer]: tiled inference (the engine's tile and overlap)."""

    overlapping: int = 32                   # pixels shared by neighbouring windows (< tile_size / 2)
    tile_size: int = 0                      # window size in px (0: the model's, train.tile_size)
    images_dir: str = ""                    # segmented (tiled) after training, and for
    output_dir: str = ""                    #   epoch_change_tiledinfer previews
    blend: str = "crop"                     # crop | cosine

    def __post_init__(self) -> None:
        if self.overlapping < 0:
            raise ConfigError(f"tiledinfer.overlapping must not be negative, got {self.overlapping}")
        if self.tile_size < 0:
            raise ConfigError(f"tiledinfer.tile_size must not be negative (0: the model's), got {self.tile_size}")
        if self.tile_size and 2 * self.overlapping >= self.tile_size:
            raise ConfigError(f"tiledinfer.overlapping = {self.overlapping} must be less than half of "
                              f"tiledinfer.tile_size = {self.tile_size} (neighbouring windows share the "
                              "overlap: each window needs a core of its own)")
        from .unit import BLENDS  # noqa: PLC0415  (the engine's registry; it imports rasterio)
        if self.blend not in BLENDS:
            raise ConfigError(f"tiledinfer.blend must be one of {', '.join(BLENDS)}, got {self.blend!r}")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: DataConfig = field(default_factory=DataConfig)
    test: DataConfig = field(default_factory=DataConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    tiledinfer: TiledInferConfig = field(default_factory=TiledInferConfig)

    def __post_init__(self) -> None:
        m = self.mask.rgb_map
        if m:
            used = sorted(set(m.values()))
            if used[-1] >= self.model.num_classes:
                raise ConfigError(f"mask.rgb_map uses class {used[-1]} but model.num_classes is "
                                  f"{self.model.num_classes}")
        if self.model.head == "sigmoid" and self.model.num_classes != 2:
            raise ConfigError("model.head = sigmoid needs model.num_classes = 2")
        self._check_tiling()

    def _check_tiling(self) -> None:
        """The inference windows the bundle recommends (``train.tile_size``/``overlap``)
        and those of ``[tiledinfer]`` (post-training inference, epoch previews) are used
        as given or refused here, before training: never changed silently."""
        t, ti, mult = self.train, self.tiledinfer, self.model.tile_multiple
        for key, tile in (("train.tile_size", t.tile_size), ("tiledinfer.tile_size", ti.tile_size)):
            if tile and (tile < 16 or tile % mult):
                raise ConfigError(f"{key} = {tile} must be a multiple of {mult} (the network's downsampling "
                                  f"factor for model = {self.model.model!r}) and at least 16")
        if 2 * t.overlap >= t.tile_size:
            raise ConfigError(f"train.overlap = {t.overlap} must be less than half of train.tile_size = "
                              f"{t.tile_size} (neighbouring windows share the overlap)")
        if not ti.tile_size and 2 * ti.overlapping >= t.tile_size:
            raise ConfigError(f"tiledinfer.overlapping = {ti.overlapping} must be less than half of the window "
                              f"size, which is train.tile_size = {t.tile_size} (tiledinfer.tile_size is not set): "
                              f"set [tiledinfer] tile_size (e.g. {4 * ti.overlapping} for the seed's "
                              f"{4 * ti.overlapping}/{ti.overlapping}) or a smaller overlapping")


def _positive(obj, *names: str) -> None:
    section = type(obj).__name__.replace("Config", "").lower()
    for n in names:
        v = getattr(obj, n)
        if v is not None and v <= 0:
            raise ConfigError(f"{section}.{n} must be positive, got {v}")


def _hex(rgb: RGB) -> str:
    return "#%02X%02X%02X" % rgb


# ---------------------------------------------------------------- literal parser

_TOKEN = re.compile(r"""\s*(?:
    (?P<num>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)|
    (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|
    (?P<name>[A-Za-z_][A-Za-z_0-9]*)|
    (?P<punct>[()\[\]{},:])
)""", re.VERBOSE)


def parse_literal(text: str) -> Any:
    """Parse one Python-style literal (numbers, strings, True/False/None, tuples,
    lists, dicts) without evaluating anything. A bare word is taken as a string."""
    tokens = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[:1] not in "\"'([{":
                return text  # an unquoted string such as ./models
            raise ValueError(f"cannot read {text!r} near {text[pos:pos + 10]!r}")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    if not tokens:
        raise ValueError("empty value")
    if len(tokens) > 1 and all(k in ("name", "num") for k, _ in tokens):
        return text  # an unquoted phrase, e.g. a path with spaces
    try:
        value, i = _parse(tokens, 0)
    except IndexError:
        raise ValueError(f"cannot read {text!r}: unterminated bracket or quote") from None
    if i != len(tokens):
        raise ValueError(f"unexpected {tokens[i][1]!r} in {text!r}")
    return value


def _parse(tokens, i):
    kind, tok = tokens[i]
    if kind == "num":
        return (float(tok) if any(c in tok for c in ".eE") else int(tok)), i + 1
    if kind == "str":
        body = tok[1:-1]
        return re.sub(r"\\(.)", r"\1", body), i + 1
    if kind == "name":
        return {"True": True, "False": False, "None": None, "true": True, "false": False}.get(tok, tok), i + 1
    if tok in "([":
        close = ")" if tok == "(" else "]"
        items, i = [], i + 1
        while tokens[i][1] != close:
            v, i = _parse(tokens, i)
            items.append(v)
            if tokens[i][1] == ",":
                i += 1
            elif tokens[i][1] != close:
                raise ValueError(f"expected ',' or {close!r}, got {tokens[i][1]!r}")
        return (tuple(items) if tok == "(" else items), i + 1
    if tok == "{":
        d, i = {}, i + 1
        while tokens[i][1] != "}":
            k, i = _parse(tokens, i)
            if tokens[i][1] != ":":
                raise ValueError("expected ':' in a dict")
            v, i = _parse(tokens, i + 1)
            key = tuple(k) if isinstance(k, list) else k
            if key in d:
                raise ValueError(f"key {key!r} is given twice")
            d[key] = v
            if tokens[i][1] == ",":
                i += 1
        return d, i + 1
    raise ValueError(f"unexpected {tok!r}")


# ---------------------------------------------------------------- conversion

def _convert(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() == "none" and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and len(args) == 2 and args[1] is not ...:
            value = (value, value)  # base_kernels = 5 means (5, 5)
        if isinstance(value, str) and args and args[-1] is ...:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if args and args[-1] is ...:
            return tuple(_convert(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(v, a, where) for v, a in zip(value, args))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of colour = class, got {value!r}")
        out: dict = {}
        for k, v in value.items():
            rgb = parse_colour(k, where)
            if rgb in out:
                raise ConfigError(f"{where}: colour {_hex(rgb)} is given twice")
            out[rgb] = _convert(v, int, f"{where}[{_hex(rgb)}]")
        return out
    raise ConfigError(f"{where}: unsupported type {typ}")


def parse_colour(k: Any, where: str) -> RGB:
    if isinstance(k, str):
        s = k.strip()
        if re.fullmatch(r"#?[0-9a-fA-F]{6}", s):
            s = s.lstrip("#")
            return tuple(int(s[i:i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
        parts = [p for p in re.split(r"[,\s()]+", s) if p]
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            k = tuple(int(p) for p in parts)
    if isinstance(k, (tuple, list)) and len(k) == 3 and all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in k):
        return tuple(k)  # type: ignore[return-value]
    raise ConfigError(f"{where}: {k!r} is not a colour (use (R, G, B) or '#RRGGBB')")


_SECTIONS = {f.name: f for f in fields(Config)}


def _section_class(name: str):
    return typing.get_type_hints(Config)[name]


#: Seed keys read (so the seed's configs load) that training does not use: a warning
#: says so when a config sets them, rather than accepting them silently.
_UNUSED = {("train", "eval_dir"): "evaluation results are written by the evaluate command, where it is told",
           ("test", "*"): "the test split is scored by the evaluate command, not during training"}


def _build(raw: dict[str, dict[str, Any]], source: str) -> Config:
    for sname, values in raw.items():
        for key in values:
            why = _UNUSED.get((sname, key)) or _UNUSED.get((sname, "*"))
            if why:
                warnings.warn(f"{source}: '{sname}.{key}' is not used by training ({why})", UnusedKeyWarning,
                              stacklevel=3)
    parts = {}
    for sname, values in raw.items():
        if sname not in _SECTIONS:
            hint = difflib.get_close_matches(sname, list(_SECTIONS), n=1)
            raise ConfigError(f"{source}: unknown section [{sname}]"
                              + (f" (did you mean [{hint[0]}]?)" if hint else
                                 f"; known: {', '.join(_SECTIONS)}"))
        cls = _section_class(sname)
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"{source}: unknown key '{sname}.{key}'{_key_hint(sname, key, hints)}")
            kwargs[key] = _convert(value, hints[key], f"{source}: {sname}.{key}")
        try:
            parts[sname] = cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
    try:
        return Config(**parts)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _key_hint(sname: str, key: str, hints: dict) -> str:
    """For a key unknown in ``[sname]``: the section(s) it belongs in, else the
    nearest key of ``[sname]``."""
    home = [f"[{n}]" for n in _SECTIONS if n != sname and key in typing.get_type_hints(_section_class(n))]
    if home:
        return f": '{key}' belongs in {' or '.join(home)}"
    near = difflib.get_close_matches(key, list(hints), n=1)
    return f" (did you mean '{sname}.{near[0]}'?)" if near else ""


def load_config(path: str | Path) -> Config:
    """Read a config file (``.toml``, or the seed's INI format in ``.ini``/``.config``)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    text = p.read_text()
    if p.suffix.lower() == ".toml":
        import tomllib  # noqa: PLC0415
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p.name}: invalid TOML: {e}") from None
        for k, v in raw.items():
            if not isinstance(v, dict):
                raise ConfigError(f"{p.name}: '{k}' must be inside a [section]")
        return _build(raw, p.name)
    parser = configparser.ConfigParser(interpolation=None, strict=True, inline_comment_prefixes=(";", "#"))
    parser.optionxform = str  # keep key case
    try:
        parser.read_string(text, source=p.name)
    except configparser.Error as e:
        raise ConfigError(f"{p.name}: {one_line(e)}") from None
    raw: dict[str, dict[str, Any]] = {}
    for sname in parser.sections():
        raw[sname] = {}
        for key, value in parser.items(sname):
            try:
                raw[sname][key] = parse_literal(value)
            except ValueError as e:
                raise ConfigError(f"{p.name}: {sname}.{key}: {e}") from None
    return _build(raw, p.name)


def config_to_toml(cfg: Config) -> str:
    """The config as TOML (what ``geoseg train`` records beside a model)."""
    lines = []
    for f in fields(cfg):
        lines.append(f"[{f.name}]")
        for sf in fields(getattr(cfg, f.name)):
            v = getattr(getattr(cfg, f.name), sf.name)
            if v is None:
                continue
            if isinstance(v, dict):
                body = ", ".join(f'"{_hex(k)}" = {c}' for k, c in v.items())
                lines.append(f"{sf.name} = {{ {body} }}")
            elif isinstance(v, bool):
                lines.append(f"{sf.name} = {'true' if v else 'false'}")
            elif isinstance(v, str):
                lines.append(f'{sf.name} = "{v}"')
            elif isinstance(v, tuple):
                lines.append(f"{sf.name} = [{', '.join(repr(x) if not isinstance(x, str) else chr(34) + x + chr(34) for x in v)}]")
            else:
                lines.append(f"{sf.name} = {v!r}")
        lines.append("")
    return "\n".join(lines)
