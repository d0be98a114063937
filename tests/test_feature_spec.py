"""The typed feature spec reads and writes the same feature_spec.json as the plain dict, with the same hash."""
import json

import pytest

from atc_il.config import DatasetConfig
from atc_il.errors import DataError, ModelError
from atc_il.feature_spec import FeatureSpec
from pipelines.features import feature_spec
from pipelines.shards import spec_hash


@pytest.mark.parametrize("kw", [{}, {"goal": True}, {"nuisance": True}, {"controller_history": False}])
def test_round_trip_keeps_the_dict_and_the_hash(kw):
    d = feature_spec(DatasetConfig(**kw), 5.0)
    spec = FeatureSpec.of(d)
    assert spec.to_dict() == d and spec.hash() == spec_hash(d)
    assert FeatureSpec.from_json(spec.to_json()).to_dict() == d
    assert FeatureSpec.of(spec) is spec


def test_helpers_and_optional_sections(tmp_path):
    d = feature_spec(DatasetConfig(), 5.0)
    d["normalisation"] = {k: {"mean": [0.0] * t["shape"][-1], "std": [1.0] * t["shape"][-1], "count": 3}
                          for k, t in d["tensors"].items()}
    d["normalisation_split"], d["spec_hash"] = "train", spec_hash(d)
    (tmp_path / "feature_spec.json").write_text(json.dumps(d))
    spec = FeatureSpec.load(tmp_path)                     # a data-set folder or the file itself
    assert spec.to_dict() == d and spec.hash() == d["spec_hash"]
    names = spec.feature_names("geometry")
    assert names[-1] == "valid" and spec.index("geometry", "valid") == len(names) - 1
    assert spec.shape("pair") == d["tensors"]["pair"]["shape"]
    norm = spec.norm("pair")
    assert norm is not None and norm.count == 3
    with pytest.raises(DataError, match="no feature 'nope'"):
        spec.index("pair", "nope")


def test_corrupt_or_invalid_files_name_the_file_and_field(tmp_path):
    path = tmp_path / "feature_spec.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="feature_spec.json: corrupt feature spec, not valid JSON"):
        FeatureSpec.load(path)
    d = feature_spec(DatasetConfig(), 5.0)
    d["tensors"]["pair"]["shape"] = "wide"
    path.write_text(json.dumps(d))
    with pytest.raises(DataError, match=r"feature_spec.json: invalid feature spec, field tensors\.pair\.shape"):
        FeatureSpec.load(path)
    with pytest.raises(ModelError, match="no feature spec"):
        FeatureSpec.load(tmp_path / "missing", error=ModelError)
