import pytest

from geoseg.config import Config, load_config, parse_literal
from geoseg.errors import ConfigError

SEED_INI = """\
; train_eval_infer.config  (the seed's format, written for this test)
[model]
model          = "flexunet"
image_width    = 256
image_height   = 256
image_channels = 6
num_classes    = 2
base_filters   = 16
base_kernels   = (5,5)
num_layers     = 5
dropout_rate   = 0.05
learning_rate  = 0.0001
clipvalue      = 0.5
dilation       = (2,2)
loss           = "ce_dice"
metrics        = ["iou"]
show_summary   = False

[train]
epochs        = 40
batch_size    = 4
patience      = 10
metrics       = ["iou", "val_iou"]
model_dir     = "./models"
eval_dir      = "./eval"
image_datapath = "./data/train/images/"
mask_datapath  = "./data/train/masks/"
learning_rate_reducer = True
reducer_factor   = 0.3
reducer_patience = 5
epoch_change_infer     = True
epoch_change_infer_dir = "./epoch_change_infer"
num_infer_images       = 2

[eval]
image_datapath = "./data/valid/images/"
mask_datapath  = "./data/valid/masks/"

[mask]
rgb_map = {(0,0,0):0, (0,255,255):1}

[tiledinfer]
overlapping = 64
images_dir  = "./scenes"
output_dir  = "./tiled"
"""

TOML_TWIN = """\
[model]
model = "flexunet"
image_width = 256
image_height = 256
image_channels = 6
num_classes = 2
base_filters = 16
base_kernels = [5, 5]
num_layers = 5
dropout_rate = 0.05
learning_rate = 0.0001
clipvalue = 0.5
dilation = [2, 2]
loss = "ce_dice"
metrics = ["iou"]
show_summary = false

[train]
epochs = 40
batch_size = 4
patience = 10
metrics = ["iou", "val_iou"]
model_dir = "./models"
eval_dir = "./eval"
image_datapath = "./data/train/images/"
mask_datapath = "./data/train/masks/"
learning_rate_reducer = true
reducer_factor = 0.3
reducer_patience = 5
epoch_change_infer = true
epoch_change_infer_dir = "./epoch_change_infer"
num_infer_images = 2

[eval]
image_datapath = "./data/valid/images/"
mask_datapath = "./data/valid/masks/"

[mask]
rgb_map = { "#000000" = 0, "#00FFFF" = 1 }

[tiledinfer]
overlapping = 64
images_dir = "./scenes"
output_dir = "./tiled"
"""


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_seed_ini_equals_toml_twin(tmp_path):
    a = load_config(write(tmp_path, "train_eval_infer.config", SEED_INI))
    b = load_config(write(tmp_path, "twin.toml", TOML_TWIN))
    assert a == b
    assert a.train.reducer_patience == 5 and a.train.reducer_factor == 0.3  # every key honoured
    assert a.model.base_kernels == (5, 5) and a.model.dilation == (2, 2)
    assert a.mask.rgb_map == {(0, 0, 0): 0, (0, 255, 255): 1}
    assert a.tiledinfer.overlapping == 64 and a.model.clipvalue == 0.5


def test_defaults_and_round_trip(tmp_path):
    from geoseg.config import config_to_toml
    cfg = load_config(write(tmp_path, "c.toml", TOML_TWIN))
    again = load_config(write(tmp_path, "again.toml", config_to_toml(cfg)))
    assert again == cfg
    assert Config().train.epochs == 100


@pytest.mark.parametrize("text,match", [
    ("[train]\nreducer_patiance = 4\n", "unknown key 'train.reducer_patiance' (did you mean 'train.reducer_patience'?)"),
    ("[modle]\nepochs = 4\n", "unknown section [modle] (did you mean [model]?)"),
    ("[model]\nbase_filters = 16.5\n", "model.base_filters: expected an integer"),
    ("[model]\nbase_filters = \"many\"\n", "model.base_filters: expected an integer"),
    ("[train]\nlearning_rate_reducer = 3\n", "train.learning_rate_reducer: expected true or false"),
    ("[model]\ndropout_rate = 1.5\n", "dropout_rate must be in [0, 1)"),
    ("[model]\nimage_width = 250\n", "multiples of 16"),
    ("[mask]\nrgb_map = {(0,0,0):0, (0,0,0):1}\n", "given twice"),
    ("[mask]\nrgb_map = {(0,0,300):0}\n", "is not a colour"),
    ("[model]\nnum_classes = 2\n[mask]\nrgb_map = {(0,0,0):0, (1,1,1):5}\n", "uses class 5 but model.num_classes is 2"),
    ("[train]\nepochs = [1, 2\n", "cannot read"),
    # a value error names the file, as an unknown key does
    ("[train]\nepochs = 2.5\n", "bad.config: train.epochs: expected an integer, got 2.5"),
    # a key in the wrong section: the section it belongs in, not a neighbour's name
    ("[model]\nepochs = 3\n", "bad.config: unknown key 'model.epochs': 'epochs' belongs in [train]"),
    ("[train]\nimages_dir = \"x\"\n", "'images_dir' belongs in [infer] or [tiledinfer]"),
    # windows: used as given or refused with the reason, never clamped
    ("[tiledinfer]\noverlapping = 128\n", "tiledinfer.overlapping = 128 must be less than half of the window "
     "size, which is train.tile_size = 256 (tiledinfer.tile_size is not set): set [tiledinfer] tile_size "
     "(e.g. 512 for the seed's 512/128)"),
    ("[tiledinfer]\noverlapping = 128\ntile_size = 256\n",
     "tiledinfer.overlapping = 128 must be less than half of tiledinfer.tile_size = 256"),
    ("[tiledinfer]\ntile_size = 200\n", "tiledinfer.tile_size = 200 must be a multiple of 16"),
    ("[model]\nmodel = \"resnet50\"\n[train]\ntile_size = 240\n", "train.tile_size = 240 must be a multiple of 32"),
    ("[train]\noverlap = 128\n", "train.overlap = 128 must be less than half of train.tile_size = 256"),
])
def test_bad_configs_one_line_errors(tmp_path, text, match):
    p = write(tmp_path, "bad.config", text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert match in str(e.value) and "\n" not in str(e.value)


def test_toml_colour_clash_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="given twice"):
        load_config(write(tmp_path, "c.toml", '[mask]\nrgb_map = { "#000000" = 0, "0,0,0" = 1 }\n'))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "x.toml", "[model\n"))


def test_literal_parser_never_evaluates():
    with pytest.raises(ValueError):
        parse_literal("__import__('os')")  # a call is not a literal: refused, never run
    with pytest.raises(ValueError):
        parse_literal("(1, 2")
    assert parse_literal("./models") == "./models"
    assert parse_literal("'a\\'b'") == "a'b"


def test_every_example_config_loads():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "examples"
    found = sorted(list(root.rglob("*.toml")) + list(root.rglob("*.config")))
    assert len(found) >= 6
    for p in found:
        load_config(p)
    a = load_config(root / "s2_water" / "train_eval_infer.config")
    assert a == load_config(root / "s2_water" / "water.toml")


def test_tiledinfer_window_of_the_seed_is_honoured(tmp_path):
    """[tiledinfer] tile_size + overlapping: the seed's 512/128 tiled inference is read
    as given (the window size is a key; nothing is clamped)."""
    text = SEED_INI.replace("overlapping = 64", "overlapping = 128\ntile_size   = 512")
    cfg = load_config(write(tmp_path, "seed.config", text))
    assert (cfg.tiledinfer.tile_size, cfg.tiledinfer.overlapping) == (512, 128)
    assert load_config(write(tmp_path, "seed.config", SEED_INI)).tiledinfer.tile_size == 0  # the model's
