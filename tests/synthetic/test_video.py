"""Clips are real H.264 with ground truth beside them, and loop cleanly on an RTSP server."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from detector_worker.synthetic.scene import Scene
from detector_worker.synthetic.video import GROUND_TRUTH_FORMAT, ground_truth_path, main, write_clip


def test_clip_is_h264_without_b_frames_and_keyframe_every_second(tmp_path: Path) -> None:
    scene = Scene.build(31, 6.0, width=320, height=240, fps=5.0)
    video = tmp_path / "clip.mp4"
    write_clip(video, scene)
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (320, 240)
        assert float(stream.average_rate) == 5.0
        packets = [p for p in container.demux(stream) if p.size]
    assert len(packets) == scene.n_frames == 30
    keyframes = [i for i, p in enumerate(packets) if p.is_keyframe]
    assert keyframes == list(range(0, 30, 5))
    pts = [p.pts for p in packets]
    assert pts == sorted(pts), "no B-frames: decode order is display order"


@pytest.mark.slow  # > 3 s here; make check skips it
def test_ground_truth_matches_the_decoded_frames(tmp_path: Path) -> None:
    scene = Scene.build(32, 12.0)
    video = tmp_path / "clip.mp4"
    gt_path = write_clip(video, scene)
    assert gt_path == ground_truth_path(video)
    truth = json.loads(gt_path.read_text())
    assert truth["format"] == GROUND_TRUTH_FORMAT
    assert truth["n_frames"] == scene.n_frames == len(truth["frames"])
    assert [v["vehicle_id"] for v in truth["vehicles"]] == [v.vehicle_id for v in scene.visits]
    cap = cv2.VideoCapture(str(video))
    decoded = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if decoded % 17 == 0:  # spot check: the encoded frame is the rendered one, within codec loss
            rendered, objects = scene.render(decoded)
            psnr = cv2.PSNR(frame, rendered)
            assert psnr > 28, (decoded, psnr)
            assert [o.to_json() for o in objects] == truth["frames"][decoded]
        decoded += 1
    assert decoded == scene.n_frames


def test_command_line_writes_video_and_ground_truth(tmp_path: Path, capsys: object) -> None:
    out = tmp_path / "cli.mp4"
    assert main([str(out), "--seed", "4", "--seconds", "2", "--width", "160", "--height", "120",
                 "--kinds", "pass", "--brands", "Aurex"]) == 0
    truth = json.loads(ground_truth_path(out).read_text())
    assert (truth["width"], truth["height"]) == (160, 120)
    assert [(v["kind"], v["brand"]) for v in truth["vehicles"]] == [("pass", "Aurex")]
    assert np.isclose(truth["fps"], 10.0)
