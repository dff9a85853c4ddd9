"""Envelope version 1 vs 2 on the bundled fight sample: clip build (one vs two VP8 encodes with
bystander pixelation), sealing, sizes, and how much of the involved persons stays visible.

Run: .venv/bin/python -m bench redaction
"""

from __future__ import annotations

import time

import numpy as np

REPEATS = 3


def _best(fn) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def run() -> list[tuple[str, float, str]]:
    import cv2
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from appliance.box.clip import build_clip
    from appliance.box.clip.bystanders import pixelate, plan_redaction
    from appliance.box.config import AppConfig, package_root
    from appliance.box.runtime import Pipeline, analyse_video
    from appliance.contracts.envelope import open_envelope, seal_clip
    from appliance.contracts.keys import HpkePrivateKey

    sample = package_root() / "samples" / "scfd_fight_fi023.mp4"
    cfg = AppConfig()
    pipeline = Pipeline(cfg, redaction=cfg.redaction)
    clips = []
    cap = cv2.VideoCapture(str(sample))
    fps = cap.get(cv2.CAP_PROP_FPS)

    def frames():
        for i in range(10_000):
            ok, image = cap.read()
            if not ok:
                return
            yield i, i / fps, 1.7e9 + i / fps, image

    analyse_video(pipeline, frames(), on_clip=clips.append)
    cap.release()
    clip = clips[0]
    trigger, seen = clip.trigger, pipeline.seen_history
    # The ring's frames (at ring.max_fps), as the box builds its clip from them.
    inside = pipeline.ring.window(trigger.window_start_t, trigger.window_end_t)
    masks = None
    t_v1, v1_clip = _best(lambda: build_clip(trigger, inside, {}, clip.model_sha256, masks, cfg.ring.max_fps))
    t_v2, v2_clip = _best(lambda: build_clip(trigger, inside, {}, clip.model_sha256, masks, cfg.ring.max_fps,
                                             redaction=cfg.redaction, seen=seen))
    device = Ed25519PrivateKey.generate()
    station, evidence = HpkePrivateKey.generate(), HpkePrivateKey.generate()
    s_v1, env1 = _best(lambda: seal_clip(v1_clip, device_id="bench", sequence=1, signing_key=device,
                                         station_public_key=station.public_key()))
    s_v2, env2 = _best(lambda: seal_clip(v2_clip, device_id="bench", sequence=1, signing_key=device,
                                         station_public_key=station.public_key(),
                                         evidence_public_key=evidence.public_key()))
    o_v2, _ = _best(lambda: open_envelope(env2, station, device.public_key()))

    # Involved persons' box area left visible (not changed by pixelate on a noise image).
    plan = plan_redaction(v2_clip.frame_times, seen, trigger.event.track_ids, cfg.redaction,
                          (v2_clip.width, v2_clip.height))
    noise = np.random.default_rng(0).integers(0, 255, (v2_clip.height, v2_clip.width, 3), np.uint8)
    visible = []
    for i in range(len(v2_clip.frame_times)):
        covered = (pixelate(noise, *plan.frame(i), cfg.redaction) != noise).any(axis=2)
        for boxes in v2_clip.involved_boxes.values():
            for index, x, y, w, h in boxes:
                if index == i and w and h:
                    visible.append(1.0 - covered[y:y + h, x:x + w].mean())
    assert v2_clip.redacted is not None
    n = len(v2_clip.frame_times)
    return [
        (f"clip {v2_clip.width}x{v2_clip.height}, {n} frames: build v1 (one VP8 encode)", round(t_v1 * 1000), "ms"),
        ("build v2 (full + redacted, bystanders pixelated)", round(t_v2 * 1000), "ms"),
        ("full rendition WebM", round(len(v2_clip.video) / 1024), "KiB"),
        ("redacted rendition WebM", round(len(v2_clip.redacted.video) / 1024), "KiB"),
        ("seal+sign v1 (MLKEM768_X25519)", round(s_v1 * 1000, 1), "ms"),
        ("seal+sign v2 (two renditions, two recipients)", round(s_v2 * 1000, 1), "ms"),
        ("envelope v1", round(len(env1) / 1024), "KiB"),
        ("envelope v2", round(len(env2) / 1024), "KiB"),
        ("verify+open v2 redacted (station key)", round(o_v2 * 1000, 1), "ms"),
        (f"bystander tracks pixelated {list(v2_clip.redacted.pixelated_tracks)}; involved persons' box area "
         "left visible (mean)", round(100 * float(np.mean(visible)), 1), "%"),
        ("involved persons' box area left visible (worst frame)", round(100 * float(np.min(visible)), 1), "%"),
    ]
