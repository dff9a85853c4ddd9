"""`appliance eval`: layout discovery, the UR Fall CSV path, and one real end-to-end run
(real pose model on real video) on a tiny folder built in tmp_path."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.box.behaviour import BehaviourConfig
from appliance.box.behaviour.cli import register
from appliance.box.behaviour.evaluate import URFD_CSV, URFD_FPS, URFD_KEYPOINTS, URFD_SIZE, evaluate_urfd, plan_for
from appliance.common.errors import InputError

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "behaviour"


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(argv)


def test_plan_accepts_a_fight_folder_or_a_data_root(tmp_path):
    scfd = tmp_path / "root" / "scfd-dev"
    for sub in ("fight", "nofight"):
        (scfd / sub).mkdir(parents=True)
        (scfd / sub / "a.mp4").write_bytes(b"")
        (scfd / sub / "notes.txt").write_text("not a video")
    (tmp_path / "root" / "mot" / "SEQ" / "img1").mkdir(parents=True)
    for folder in ("hard-negative", "samples", "falls-extra"):
        (tmp_path / "root" / folder).mkdir()
        (tmp_path / "root" / folder / f"{folder}.mp4").write_bytes(b"")
    direct = plan_for(scfd)
    assert [p.name for p in direct.fight] == ["a.mp4"] and [p.name for p in direct.nofight] == ["a.mp4"]
    assert not direct.ordinary and not direct.fall_videos
    root = plan_for(tmp_path / "root")
    # All ordinary footage (false alarms per camera-hour) and all fall-only footage.
    assert root.fight == direct.fight
    assert [p.name for p in root.ordinary] == ["hard-negative.mp4", "samples.mp4", "img1"]
    assert [p.name for p in root.fall_videos] == ["falls-extra.mp4"]


@pytest.mark.parametrize("make", ["missing", "empty", "file"])
def test_plan_rejects_what_it_cannot_evaluate(tmp_path, make):
    target = tmp_path / "x"
    if make == "empty":
        target.mkdir()
    elif make == "file":
        target.write_text("x")
    with pytest.raises(InputError):
        plan_for(target)


def _write_urfd_csv(path: Path) -> None:
    """The constructed-fall fixture in the UR Fall CSV layout (13 keypoints, normalised, labels)."""
    z = np.load(FIXTURES / "fall_constructed.npz")
    header = ["video", "frame"] + [f"k{i}_{c}" for i in range(13) for c in "xys"] + ["label"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for t, kp in zip(z["t"], z["keypoints"]):
            label = 0 if t < 2.0 else 1 if t < 2.6 else 2
            pts = kp[list(URFD_KEYPOINTS)].copy()
            pts[:, 0] /= URFD_SIZE[0]
            pts[:, 1] /= URFD_SIZE[1]
            w.writerow(["fall-x", round(t * URFD_FPS), *pts.reshape(-1).tolist(), label])


def test_urfd_csv_sequences_are_scored(tmp_path):
    path = tmp_path / URFD_CSV
    _write_urfd_csv(path)
    result = evaluate_urfd(path, BehaviourConfig(), 10.0)
    assert result["sequences"] == 1 and result["fall_detected"] == 1
    assert result["lying_expected"] == 1 and result["lying_detected"] == 1
    assert result["down_on_upright_frames"] == 0.0 and result["down_on_lying_frames"] > 0.8
    assert 0 <= result["fall_delay_median_s"] < 1.5


def test_urfd_csv_errors_are_one_line(tmp_path):
    bad = tmp_path / URFD_CSV
    bad.write_text("video,frame,label\nfall-01,1,0\n")
    with pytest.raises(InputError, match="UR Fall"):
        evaluate_urfd(bad, BehaviourConfig(), 10.0)


def _short_clip(src: Path, dst: Path, seconds: float) -> None:
    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS)
    ok, image = cap.read()
    out = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), fps, (image.shape[1], image.shape[0]))
    for _ in range(int(seconds * fps)):
        out.write(image)
        ok, image = cap.read()
        if not ok:
            break
    out.release()
    cap.release()


def test_eval_runs_the_real_pipeline_on_a_small_folder(tmp_path, capsys):
    (tmp_path / "fight").mkdir()
    (tmp_path / "nofight").mkdir()
    (tmp_path / "fight" / "demo.mp4").symlink_to(REPO / "samples" / "demo_skeleton.mp4")
    _short_clip(REPO / "samples" / "one-by-one-person-detection.mp4", tmp_path / "nofight" / "walk.mp4", 3.0)
    args = _cli(["eval", str(tmp_path), "--json", "--quiet"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    fight = report["fight"]
    assert fight["fight_clips"] == 1 and fight["nofight_clips"] == 1
    assert fight["nofight_recall"] == 1.0          # 3 s of a person walking: nothing violent
    assert 0.0 <= fight["balanced_accuracy"] <= 1.0
    assert report["urfd_csv"] is None and report["falls"] is None
    # The no-fight clip is ordinary footage: false alarms per camera-hour under the profile.
    fa = report["false_alarms"]
    assert fa["profile"] == "bw-polg-44-4" and fa["clips"] == 1 and fa["permitted_violent_triggers"] == 0
    assert fa["false_alarms_per_camera_hour"] == 0.0 and 0.0 < fa["camera_hours"] < 0.01
    assert report["operating_point"]["threshold"] > 0
    weapon = report["weapon"]
    assert weapon["ordinary_hours"] == pytest.approx(3.0 / 3600, rel=0.1)
    assert weapon["ordinary_false_alarms"] == 0 and weapon["false_alarms_per_hour"] == 0.0
    assert weapon["crops_per_analysed_frame"] > 0 and weapon["ms_per_crop"] > 0
    # Nothing was written next to the data.
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["demo.mp4", "fight", "nofight", "walk.mp4"]

    det = tmp_path.parent / "det"
    args = _cli(["eval", str(tmp_path), "--quiet", "--det", str(det)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "balanced accuracy" in text and "per camera-hour" in text
    # The weapon pattern is measured too: the 3 s walk is ordinary footage, its hands were looked at.
    assert "false alarms = 0.0 per camera-hour" in text
    rows = (tmp_path.parent / "det.csv").read_text().splitlines()
    assert rows[0] == ("threshold,fight_recall,false_alarms_per_camera_hour,with_rules_fight_recall,"
                       "with_rules_false_alarms_per_camera_hour,default") and len(rows) > 10
    assert sum(int(r.split(",")[-1]) for r in rows[1:]) == 1      # the default operating point, marked
    import cv2
    assert cv2.imread(str(tmp_path.parent / "det.png")) is not None
    args = _cli(["eval", str(tmp_path), "--json", "--quiet", "--no-objects"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["weapon"] is None


def test_an_unreadable_clip_is_listed_and_the_rest_still_measured(tmp_path, capsys):
    (tmp_path / "fight").mkdir()
    (tmp_path / "nofight").mkdir()
    _short_clip(REPO / "samples" / "one-by-one-person-detection.mp4", tmp_path / "nofight" / "walk.mp4", 2.0)
    # A download cut short (no index at the end) and a file that is no video at all.
    (tmp_path / "fight" / "cut.mp4").write_bytes((REPO / "samples" / "demo_skeleton.mp4").read_bytes()[:4000])
    (tmp_path / "nofight" / "notes.avi").write_text("not a video")
    args = _cli(["eval", str(tmp_path), "--json", "--quiet"])
    assert args.func(args) == 3
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert {u["clip"] for u in report["unreadable"]} == {"fight/cut.mp4", "nofight/notes.avi"}
    assert all("cannot decode" in u["reason"] or "OpenCV" in u["reason"] for u in report["unreadable"])
    assert report["fight"]["nofight_clips"] == 1 and report["fight"]["nofight_recall"] == 1.0
    assert report["fight"]["fight_clips"] == 0
    assert "2 clip(s) could not be decoded" in captured.err
    args = _cli(["eval", str(tmp_path), "--quiet"])
    assert args.func(args) == 3
    assert "UNREADABLE, left out of every figure above (2 clips)" in capsys.readouterr().out


def test_eval_of_a_missing_folder_is_a_user_error(tmp_path):
    args = _cli(["eval", str(tmp_path / "nope"), "--quiet"])
    with pytest.raises(InputError):
        args.func(args)


def test_the_det_adds_what_the_rules_raise_at_every_threshold():
    """The operator's DET: the classifier's alarms at a threshold plus the strike/kick/push/
    strangle alarms, which do not depend on it; a fight clip found by either counts."""
    from appliance.box.behaviour.evaluate import ClipResult, EvalReport
    from appliance.contracts.types import Event, Pattern

    def event(pattern, t):
        return Event(pattern, t, t + 0.1, (1, 2), 0.7, {})

    high = tuple((0.1 * i, 0.9) for i in range(5))    # P(fight) 0.9 for 0.5 s
    fights = [ClipResult("fight/a.mp4", "fight", (), 20, 2.0, high),
              ClipResult("fight/b.mp4", "fight", (event(Pattern.STRIKE, 1.0),), 20, 2.0, ()),
              ClipResult("fight/c.mp4", "fight", (), 20, 2.0, ())]
    ordinary = [ClipResult("normal/x.mp4", "ordinary", (event(Pattern.PUSH, 3.0),), 36000, 3600.0,
                           tuple((0.1 * i, 0.5) for i in range(5)))]
    report = EvalReport(fight=fights, ordinary=ordinary, operating_point=(0.85, 2, 1.5, 10.0))
    rows = {r["threshold"]: r for r in report.det_curve([0.4, 0.85])}
    assert rows[0.85]["fight_recall"] == pytest.approx(1 / 3, abs=1e-4) and rows[0.85]["false_alarms_per_camera_hour"] == 0
    assert rows[0.85]["with_rules_fight_recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert rows[0.85]["with_rules_false_alarms_per_camera_hour"] == 1.0      # the push, in one camera-hour
    assert rows[0.4]["false_alarms_per_camera_hour"] == 1.0 and rows[0.4]["with_rules_false_alarms_per_camera_hour"] == 2.0
