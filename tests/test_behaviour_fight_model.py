"""The window-level fight classifier (appliance/box/behaviour/fight_model.py, models/fight-window-lr.json)
on recorded real skeleton sequences (tests/fixtures/behaviour, scripts/make_behaviour_fixtures.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from appliance.box.behaviour import BehaviourAnalyzer, BehaviourConfig
from appliance.box.behaviour.fight_model import FEATURE_NAMES, FightModel, readable, window_features
from appliance.box.pose.manifest import load_manifest
from appliance.common.errors import ModelError
from appliance.contracts.types import Pattern, TrackedFrame, TrackedPerson
from tests.test_behaviour_detectors import load_fixture, run

ROOT = Path(__file__).resolve().parent.parent
MODEL = "fight-window-lr"


def copy_models(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "models" / "manifest.toml", tmp_path / "manifest.toml")
    shutil.copy(ROOT / "models" / f"{MODEL}.json", tmp_path / f"{MODEL}.json")
    return tmp_path


def test_bundled_model_loads_with_its_manifest_entry():
    entry = load_manifest()[MODEL]
    assert "MIT" in entry.licence and "train_fight_classifier.py" in entry.source
    model = FightModel.load(MODEL)
    assert model.sha256 == entry.sha256
    assert set(model.feature_names) <= set(FEATURE_NAMES) and len(model.feature_names) >= 5
    assert 0.0 < model.threshold < 1.0 and model.consecutive_windows >= 1
    assert np.all(model.std > 0) and np.all(np.isfinite(model.weights))
    assert BehaviourAnalyzer().fight_model is not None           # the default config uses it


def test_a_changed_model_file_is_refused(tmp_path):
    models = copy_models(tmp_path)
    doc = json.loads((models / f"{MODEL}.json").read_text())
    doc["threshold"] = 0.01                                      # a quiet edit: fight fires on anything
    (models / f"{MODEL}.json").write_text(json.dumps(doc, indent=1) + "\n")
    with pytest.raises(ModelError, match="refusing to load"):
        FightModel.load(MODEL, models)
    with pytest.raises(ModelError, match="refusing to load"):
        BehaviourAnalyzer(BehaviourConfig(), models_dir=str(models))


def test_an_untampered_copy_loads_and_a_missing_one_is_a_clear_error(tmp_path):
    models = copy_models(tmp_path)
    assert BehaviourAnalyzer(BehaviourConfig(), models_dir=str(models)).fight_model.name == MODEL
    (models / f"{MODEL}.json").unlink()
    with pytest.raises(ModelError, match="cannot be read"):
        BehaviourAnalyzer(BehaviourConfig(), models_dir=str(models))
    with pytest.raises(ModelError, match="not in the manifest"):
        BehaviourAnalyzer(BehaviourConfig(fight_model="no-such-model"))


def test_malformed_model_documents_are_refused():
    good = json.loads((ROOT / "models" / f"{MODEL}.json").read_text())
    FightModel.from_bytes(json.dumps(good).encode())
    for change in ({"features": good["features"][:-1]}, {"threshold": 1.5}, {"features": ["no_such"] * len(good["features"])},
                   {"std": [0.0] * len(good["std"])}, {"consecutive_windows": 0}):
        with pytest.raises(ModelError):
            FightModel.from_bytes(json.dumps({**good, **change}).encode())
    with pytest.raises(ModelError):
        FightModel.from_bytes(b"\xff not json")


def test_fires_on_a_real_fight_and_explains_why():
    # Surveillance Camera Fight Dataset fi033, at the classifier's operating point (pose score
    # >= 0.1, the default tracker).
    fights = [e for e in run(load_fixture("scfd_fight_lowthr")) if e.pattern is Pattern.FIGHT]
    assert fights
    e = fights[0]
    model = FightModel.load(MODEL)
    assert e.explanation["fight_probability"] >= model.threshold
    assert e.explanation["model"] == MODEL and model.sha256.startswith(e.explanation["model_sha256"])
    assert e.explanation["consecutive_windows"] >= model.consecutive_windows
    reasons = [v for k, v in e.explanation.items() if k.startswith("reason_")]
    # Each reason names a model feature in physical units (log-compressed speeds shown as speeds).
    assert reasons and all(" log-odds)" in r for r in reasons)
    shown = {readable(n, 0.0).split(" = ")[0] for n in model.feature_names}
    assert all(r.split(" = ")[0] in shown for r in reasons)
    assert 0.5 <= e.confidence <= 1.0 and len(e.track_ids) >= 2
    json.dumps(e.to_json())


@pytest.mark.parametrize("fixture", ["scfd_nofight_lowthr", "scfd_nofight_crowd", "scfd_nofight_group", "walking",
                                     "pair_none_constructed"])
def test_no_fight_on_real_no_fight_clips_and_walking(fixture):
    assert not [e for e in run(load_fixture(fixture)) if e.pattern is Pattern.FIGHT]


def test_a_lone_person_never_fights():
    # However the skeleton moves, one person in the window is not a fight (the model is not asked).
    frames = load_fixture("scfd_fight_lowthr")
    alone = [TrackedFrame(f.frame_index, f.t, f.persons[:1], f.frame_size) for f in frames]
    assert not [e for e in run(alone) if e.pattern is Pattern.FIGHT]


def test_rule_mode_does_not_load_a_model():
    analyzer = BehaviourAnalyzer(BehaviourConfig(fight_model=""))
    assert analyzer.fight_model is None


def test_window_features_are_finite_and_scale_free():
    frames = load_fixture("scfd_fight_lowthr")
    half = load_fixture("scfd_fight_lowthr", scale=0.5)
    a, b = window_features(frames), window_features(half)
    assert a.shape == (len(FEATURE_NAMES),) and np.all(np.isfinite(a))
    assert np.allclose(a, b, rtol=1e-3, atol=1e-3)
    empty = window_features([TrackedFrame(0, 0.0, (), (640, 360))])
    assert np.all(np.isfinite(empty))
    blank = TrackedPerson(1, np.array([10, 10, 50, 150], np.float32), 0.9, np.zeros((17, 3), np.float32), 0, 0)
    assert np.all(np.isfinite(window_features([TrackedFrame(i, i / 10, (blank, blank), (640, 360))
                                               for i in range(20)])))


def test_the_classifier_window_stays_bounded_under_track_churn():
    person = next(f.persons[0] for f in load_fixture("walking") if f.persons)
    analyzer = BehaviourAnalyzer()
    window_s = analyzer.fight_model.window_s
    longest = 0
    for i in range(300):
        # 5 persons a frame, 3 of them brand-new ids (a crowd with a flickering detector).
        persons = tuple(TrackedPerson(i * 3 + j if j < 3 else j - 3, person.box, person.score, person.keypoints, 0, 0)
                        for j in range(5))
        analyzer.update(TrackedFrame(i, i * 0.1, persons, (768, 432)))
        longest = max(longest, len(analyzer._window.frames))
    assert longest <= window_s * 10 + 1
    assert analyzer.tracked_histories <= analyzer.cfg.max_tracks
