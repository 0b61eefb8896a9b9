"""Keep Ultralytics offline and inside the project.

Ultralytics otherwise writes settings to ~/.config, may try to pip-install missing extras and,
when training, downloads a font. Call `prepare_ultralytics()` before `import ultralytics`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def prepare_ultralytics(config_dir: Path | None = None) -> Path:
    config_dir = config_dir or Path(os.environ.get("YOLO_CONFIG_DIR", PROJECT_ROOT / ".cache" / "ultralytics"))
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    font = config_dir / "Ultralytics" / "Arial.ttf"
    if not font.exists():
        import matplotlib

        source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        font.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, font)
    return config_dir
