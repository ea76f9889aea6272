"""Named extractor settings: `params/extractors/<name>.yaml`, each a mapping modality -> extractor
spec, in the shape a study's `extractors.<key>` takes. The paper's five settings:

| preset            | visual                          | textual                                   |
|-------------------|---------------------------------|-------------------------------------------|
| `resnet50_sbert`  | resnet50 (pooled 2048-d)        | sentence_transformers all-mpnet-base-v2   |
| `clip`            | clip (openai/clip-vit-base-patch16), both modalities          |
| `mmfashion_sbert` | resnet50 + MMFashion weights    | sentence_transformers all-mpnet-base-v2   |
| `align`           | align (kakaobrain/align-base), both modalities                |
| `altclip`         | altclip (BAAI/AltCLIP), both modalities                       |

    setting = load_preset("clip")            # {"visual": {...}, "textual": {...}}
    extract_features(dataset, "clip", setting, out_root)
"""

from __future__ import annotations

import copy
from pathlib import Path

from mmlib.config import load_yaml
from mmlib.errors import MmlibError
from mmlib.extract.base import build_setting

PRESETS_DIR = Path(__file__).resolve().parents[2] / "params" / "extractors"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name: str | Path) -> dict[str, dict]:
    """The setting of preset `name` (a name in params/extractors/ or a path to a YAML file),
    checked: known modalities, known extractors, valid options (checkpoints are not resolved)."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise MmlibError(f"extractor preset {str(name)!r}: no such file {path}. Known presets: "
                         f"{', '.join(preset_names()) or 'none'} (in {PRESETS_DIR}).")
    setting = load_yaml(path)
    build_setting(setting, str(path))
    return copy.deepcopy(setting)
