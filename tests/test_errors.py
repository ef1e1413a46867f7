"""Each kind of bad input raises its own SkyMoEError kind, and the message says where."""
from __future__ import annotations

import pytest

from skymoe.errors import AssetError, ConfigError, DataError, ModelFolderError, SkyMoEError


def test_the_message_names_the_file_record_and_field():
    error = DataError("expected a number", file="a.jsonl", record="line 3", field="count")
    assert str(error) == "file a.jsonl, record line 3, field 'count': expected a number"
    assert (error.file, error.record, error.field) == ("a.jsonl", "line 3", "count")
    assert str(ConfigError("bad", field="optim.lr")) == "field 'optim.lr': bad"
    assert str(AssetError("run: skymoe assets fetch x")) == "run: skymoe assets fetch x"


def test_each_site_raises_its_kind(tmp_path):
    from skymoe.assets import asset_spec
    from skymoe.infer.tiles import tile_grid
    from skymoe.model.inference import load_model

    with pytest.raises(AssetError, match="unknown asset 'nope'"):
        asset_spec("nope")
    with pytest.raises(ModelFolderError, match=f"file {tmp_path}: not a SkyMoE model directory"):
        load_model(tmp_path)
    with pytest.raises(ConfigError, match="overlap 8 must be smaller than tile_size 8"):
        tile_grid(20, 20, 8, 8)
    for kind in (AssetError, ModelFolderError, ConfigError, DataError):  # the CLI and the server catch these as one
        assert issubclass(kind, SkyMoEError) and issubclass(kind, ValueError)
