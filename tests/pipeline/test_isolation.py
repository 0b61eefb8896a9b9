"""A worker using the onnx backend never has torch or Ultralytics in its memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from detector_worker.synthetic.standin import BRAND, DETECTOR
from tests.conftest import ROOT

SCRIPT = textwrap.dedent(f"""
    import sys
    from pathlib import Path
    import numpy as np
    import detector_worker.pipeline.models, detector_worker.pipeline.onnx_backend
    import detector_worker.pipeline.export  # cheap to import: torch only inside the export itself
    from detector_worker.pipeline.models import load_classifier, load_detector
    from detector_worker.synthetic.datasets import render_sample

    directory = Path(sys.argv[1])
    frame = render_sample(4242, 3).image
    detections = load_detector(directory / "{DETECTOR}.pt").detect(frame, 0.25)
    result = load_classifier(directory / "{BRAND}.pt").classify(np.ascontiguousarray(frame[200:296, 300:396]))
    assert abs(sum(result.scores.values()) - 1) < 1e-4, result
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "ultralytics"))
    assert not heavy, heavy
    print(len(detections), result.label)
""")


@pytest.mark.slow  # make check skips it: exports the models to ONNX first
def test_onnx_backend_runs_without_torch(exported_models: Path) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(exported_models)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
