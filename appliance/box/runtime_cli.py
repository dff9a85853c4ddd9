"""`appliance analyze` (offline, no network) and `appliance run` (the pixel daemon)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from appliance.box.capture import FileSource
from appliance.box.config import AppConfig, default_config, load_config
from appliance.common.errors import InputError
from appliance.contracts.types import Decision


def register(sub) -> None:
    p = sub.add_parser("analyze", help="run the pipeline offline on a video file (no network)",
                       description="Runs capture → pose → tracking → behaviour → policy on a video "
                                   "file, in memory. Writes pixels only with --overlay.")
    p.add_argument("video", help="video file to analyse")
    p.add_argument("--config", help="appliance TOML config (camera.source is replaced by VIDEO)")
    p.add_argument("--profile", help="legal profile id (default: the config's, else bw-polg-44-4)")
    p.add_argument("--json", action="store_true", help="one JSON object per line; last line is the summary")
    p.add_argument("--overlay", metavar="OUT.webm",
                   help="write a WebM with skeletons and track ids drawn (the only path that writes pixels)")
    p.add_argument("--analysis-fps", type=float, help="override analysis.fps")
    p.set_defaults(func=cmd_analyze)

    r = sub.add_parser("run", help="the pixel daemon: camera → … → sealed clips in the spool")
    r.add_argument("--config", required=True, help="appliance TOML config, e.g. /etc/appliance/appliance.toml")
    r.add_argument("--max-seconds", type=float, default=None,
                   help="stop after this many seconds (tests and soak runs)")
    r.add_argument("--fast", action="store_true",
                   help="camera.source is a video file: read it as fast as possible instead of at its own "
                        "frame rate, still analysing analysis.fps frames per second of video (the default "
                        "paces a file like a live camera); the daemon exits at the end of a file either way")
    r.set_defaults(func=cmd_run)


def _analysis_config(args) -> AppConfig:
    cfg = load_config(args.config) if args.config else default_config(args.video)
    if args.analysis_fps is not None:
        if not 0.5 <= args.analysis_fps <= 60:
            raise InputError("--analysis-fps must lie in 0.5..60")
        cfg = dataclasses.replace(cfg, analysis=dataclasses.replace(cfg.analysis, fps=args.analysis_fps))
    return cfg


class Progress:
    """A one-line progress bar on stderr for long files (only on a terminal)."""

    def __init__(self, total: int, enabled: bool):
        self.total = total
        self.enabled = enabled and total > 200 and sys.stderr.isatty()
        self.last = 0.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and done < self.total):
            return
        self.last = now
        frac = min(1.0, done / self.total)
        bar = "#" * int(frac * 30)
        print(f"\r[{bar:<30}] {done}/{self.total} frames", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def _decision_json(d: Decision) -> dict:
    return {"type": "event", **d.event.to_json(), "permitted": d.permitted, "profile": d.profile.id,
            "profile_sha256": d.profile.sha256, "rule": d.rule, "reason": d.reason}


def cmd_analyze(args: argparse.Namespace) -> int:
    from appliance.box.runtime import Pipeline, analyse_video

    video = args.video
    cfg = _analysis_config(args)
    source = FileSource(video, max_width=cfg.ring.max_width)   # a one-line error if unreadable
    pipeline = Pipeline(cfg, profile=args.profile)
    out = sys.stdout
    emit_json = args.json

    def jprint(obj) -> None:
        out.write(json.dumps(obj, separators=(",", ":")) + "\n")

    if not emit_json:
        print(f"{Path(video).name}: {source.frame_count} frames at {source.fps:.2f} fps; "
              f"analysing at {cfg.analysis.fps:g} fps with {pipeline.pose.entry.name} "
              f"(sha256 {pipeline.pose.model_sha256[:12]}…), profile {pipeline.profile.ref.id} "
              f"v{pipeline.profile.ref.version}")

    overlay = None
    if args.overlay:
        from appliance.box.overlay import OverlayWriter
        overlay = OverlayWriter(args.overlay, source.fps)

    progress = Progress(source.frame_count, enabled=not emit_json)
    per_second: dict[int, tuple[int, set[int]]] = {}
    decisions: list[Decision] = []

    def on_result(res) -> None:
        if overlay:
            overlay.set_tracked(res.tracked)
        sec = int(res.tracked.t)
        n, ids = per_second.get(sec, (0, set()))
        per_second[sec] = (max(n, len(res.tracked.persons)), ids | {p.track_id for p in res.tracked.persons})
        if emit_json:
            line = {"type": "frame", "index": res.frame.index, "t": round(res.frame.t, 3),
                    "persons": [{"track": p.track_id, "box": [round(float(v), 1) for v in p.box],
                                 "score": round(float(p.score), 3),
                                 "keypoints": [[round(float(v), 1 if j < 2 else 3) for j, v in enumerate(kp)]
                                               for kp in p.keypoints]}
                                for p in res.tracked.persons]}
            if res.scan is not None:   # [objects] enabled: which persons' hands were looked at, what was found
                line["hands_scanned"] = list(res.scan.scanned)
                line["objects"] = [{"track": o.track_id, "object": o.label, "score": round(o.score, 3),
                                    "hand": o.hand, "box": [round(float(v), 1) for v in o.box]}
                                   for o in res.scan.objects]
            jprint(line)
        for d in res.decisions:
            _report_decision(d)
        for e in res.tamper_events:
            if emit_json:
                jprint({"type": "tamper", **e.fields()})
            else:
                began = "since" if e.state == "raised" else "gone since"
                print(f"  tamper   {e.kind.value:<9} {e.state:<7} at {e.t:6.2f} s (condition {began} "
                      f"{e.since_t:.2f} s, {e.mode} reference): no clip; audited and in the health statement")
        progress.update(pipeline.stats.frames)

    def _report_decision(d: Decision) -> None:
        decisions.append(d)
        if emit_json:
            jprint(_decision_json(d))
        else:
            verdict = (f"PERMITTED by {d.profile.id} ({d.rule}): a clip is built" if d.permitted
                       else f"not permitted ({d.reason}): no clip, counted only")
            e = d.event
            print(f"  event {e.pattern.value:<8} {e.start_t:6.2f}-{e.end_t:6.2f} s  tracks "
                  f"{','.join(map(str, e.track_ids)):<7} confidence {e.confidence:.2f}  {verdict}")

    def on_final(ds) -> None:
        for d in ds:
            _report_decision(d)

    def on_clip(clip) -> None:
        if not emit_json:
            print(f"  clip     {clip.frame_times[0]:6.2f}-{clip.frame_times[-1]:6.2f} s  "
                  f"{len(clip.frame_times)} frames {clip.width}x{clip.height}, {len(clip.video) / 1024:.0f} KiB "
                  f"WebM in memory (analyze does not seal or store it)")

    started = time.monotonic()
    try:
        stats = analyse_video(pipeline, source.frames(), on_result=on_result, on_clip=on_clip,
                              on_ingest=overlay.write if overlay else None, on_final=on_final)
    finally:
        progress.close()
        if overlay:
            overlay.close()
    wall = time.monotonic() - started
    summary = {"type": "summary", "frames": stats.frames, "analysed_frames": stats.analysed_frames,
               "persons_max": stats.persons_max, "tracks": len(stats.track_ids),
               "seconds": round(stats.seconds, 3), "triggered": stats.triggered,
               "events": stats.events, "permitted": stats.permitted, "clips": stats.clips,
               "profile": pipeline.profile.ref.id, "model_sha256": pipeline.pose.model_sha256,
               "processing_s": round(wall, 2), "tamper_raised": stats.tamper_raised,
               "tamper": pipeline.tamper.status() if pipeline.tamper else None}
    if emit_json:
        jprint(summary)
    else:
        print("  second  persons  track ids")
        for sec, (n, ids) in sorted(per_second.items()):
            print(f"  {sec:>6}  {n:>7}  {', '.join(map(str, sorted(ids))) or '-'}")
        print(f"summary: {stats.frames} frames, {stats.analysed_frames} analysed, up to {stats.persons_max} "
              f"persons, {len(stats.track_ids)} tracks, {stats.seconds:.1f} s of video in {wall:.1f} s; "
              f"{stats.events} events ({stats.permitted} permitted); triggered: "
              f"{'yes' if stats.triggered else 'no'}")
        if args.overlay:
            print(f"overlay written to {args.overlay}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from appliance.box.daemon import run_daemon
    cfg = load_config(args.config)
    if cfg.camera is None:
        raise InputError(f"{args.config}: a [camera] table with source = ... is required for `run`")
    return run_daemon(cfg, config_path=args.config, max_seconds=args.max_seconds, fast=args.fast)

