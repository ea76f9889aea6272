"""Named extractor settings: `params/extractors/<name>.yaml`, each a mapping modality -> extractor
spec, in the shape a study's `extractors.<key>` takes. The paper's five settings:

| preset            | visual                          | textual                                   |
|-------------------|---------------------------------|-------------------------------------------|
| `resnet50_sbert`  | resnet50 (pooled 2048-d)        | sentence_transformers all-mpnet-base-v2   |
| `clip`            | clip (openai/clip-vit-base-patch16), both modalities          |
| `mmfashion_sbert` | resnet50 + MMFashion weights    | sentence_transformers all-mpnet-base-v2   |
| `align`           | align (kakaobrain/align-base), both modalities                |
| `altclip`         | altclip (BAAI/AltCLIP), both modalities                       |

Presets may also import precomputed features (`import:`, see `mmlib.extract.cards.ImportSetting`):
`lastfm2k_minilm_whisper` and `lastfm2k_minilm_vggish` read Last.fm-2K's shipped MMRec matrices.

    setting = load_preset("clip")            # {"visual": {...}, "textual": {...}}
    extract_features(dataset, "clip", setting, out_root)
"""

from __future__ import annotations

import copy
from pathlib import Path

from mmlib.config import load_yaml
from mmlib.errors import MmlibError
from mmlib.extract.cards import check_setting
from mmlib.resources import params_dir


def presets_dir() -> Path:
    return params_dir() / "extractors"


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def load_preset(name: str | Path) -> dict[str, dict]:
    """The setting of preset `name` (a name in params/extractors/ or a path to a YAML file),
    checked: known modalities, known extractors, valid options (checkpoints are not resolved)."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = presets_dir() / f"{name}.yaml"
    if not path.is_file():
        raise MmlibError(f"extractor preset {str(name)!r}: no such file {path}. Known presets: "
                         f"{', '.join(preset_names()) or 'none'} (in {presets_dir()}).")
    setting = load_yaml(path)
    check_setting(setting, str(path))
    return copy.deepcopy(setting)
