"""External formats, one module each, reading and writing in the same place:

| module             | format                                   | reads                                   | writes |
|--------------------|------------------------------------------|-----------------------------------------|--------|
| `mmlib.io.mmrec`   | `<name>.inter` (+ LATTICE json), id maps, `image_feat.npy`/`text_feat.npy`/any `.npy` | the `mmrec` dataset source (`load_mmrec`), `import_mmrec_features` | `export_mmrec` |
| `mmlib.io.elliot`  | `train/val/test.tsv`, `<modality>_features/<item>.npy`, `data_config.yml` | the `elliot_tsv` dataset source (`load_elliot_tsv`), `import_elliot_features` | `export_elliot` |
| `mmlib.io.ducho`   | one `<item_id>.npy` per item and modality | `import_ducho`                          | `export_ducho` |

`mmlib.io.setting.import_setting` turns a study's `import:` extractor setting (precomputed
features named by files, e.g. `{import: mmrec, path: hetrec_lastfm2k_mm/features}`) into a cached
Features artifact; `mmlib.pipeline.extract` calls it.

Where it sits: above `data` (Dataset, the sources' parsing helpers) and `extract` (the Features
artifact), below `pipeline`. The data layer names its two file sources' loaders here by module
path (`mmlib.data.sources.LOADERS`), resolved on first use, as extractor cards name their module:
`mmlib.data` imports nothing from `mmlib.io`.

Importing this package imports no format module: the names below are imported on first access.
"""

from __future__ import annotations

from mmlib.lazy import lazy_exports

_LAZY = {  # name -> module that defines it
    "export_ducho": "mmlib.io.ducho",
    "import_ducho": "mmlib.io.ducho",
    "export_elliot": "mmlib.io.elliot",
    "import_elliot_features": "mmlib.io.elliot",
    "load_elliot_tsv": "mmlib.io.elliot",
    "export_mmrec": "mmlib.io.mmrec",
    "import_mmrec_features": "mmlib.io.mmrec",
    "load_mmrec": "mmlib.io.mmrec",
    "import_setting": "mmlib.io.setting",
}

__all__ = ["export_ducho", "export_elliot", "export_mmrec", "import_ducho", "import_elliot_features",
           "import_mmrec_features", "import_setting", "load_elliot_tsv", "load_mmrec"]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
