"""An `import:` extractor setting (precomputed features named by files) -> a Features artifact.

    features = import_setting(dataset, "lastfm", {"import": "mmrec", "path": "hetrec_lastfm2k_mm/features",
                                                  "files": {"vggish.npy": "audio"}}, out_root)

The setting is checked by `mmlib.extract.cards.check_setting` (the one check of a setting); its
`path` resolves as a dataset's (relative: under $MMLIB_DATA). The import is written through the
Features writer (`mmlib.io.common.write_features`) into `out_root/<key>/`, whose manifest's
`source` records the setting, the folder, the format, the sha256 of every file read (`inputs`) and
the `content_hash`. It is reused while the setting, the dataset hash and every input file's sha256
are unchanged and its own files verify; anything else re-imports (with a log line saying why). The
check and the import hold the key's lock, as `extract_features` does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mmlib.data.spec import resolve_data_path
from mmlib.errors import MmlibError
from mmlib.extract.cards import ImportSetting, check_setting
from mmlib.extract.features import Features, read_manifest, to_jsonable
from mmlib.extract.pipeline import dataset_hash
from mmlib.io.common import check_key, features_lock, log, write_features
from mmlib.io.ducho import ducho_inputs, read_ducho
from mmlib.io.elliot import elliot_inputs, read_elliot_features
from mmlib.io.mmrec import mmrec_inputs, read_mmrec_features
from mmlib.storage import confined

_ALIGN = {"original": "item_id", "indexed": "item"}


def _plan(checked: ImportSetting, folder: Path):
    """(inputs digest now, reader(dataset) -> imported parts) of a checked setting."""
    if checked.format == "mmrec":
        return (mmrec_inputs(folder, checked.files),
                lambda ds: read_mmrec_features(folder, ds, checked.files, checked.missing,
                                               _ALIGN[checked.ids]))
    if checked.format == "ducho":
        folders = {m: confined(folder, f) for m, f in checked.folders.items()}
        return (ducho_inputs(folders),
                lambda ds: read_ducho(ds, folders, checked.missing, _ALIGN[checked.ids]))
    return (elliot_inputs(folder, checked.folders),
            lambda ds: read_elliot_features(folder, ds, checked.folders, checked.missing, checked.ids))


def _why_not_reuse(folder: Path, record: dict, inputs: dict, data_hash: str) -> str | None:
    """Why out_root/<key> is not this import any more (None: it is)."""
    try:
        manifest = read_manifest(folder)
    except MmlibError as exc:
        return str(exc)
    if manifest is None:
        return "not imported yet"
    source = manifest.get("source") or {}
    if source.get("setting") != record["setting"]:
        return "the setting changed"
    if (manifest.get("dataset") or {}).get("hash") != data_hash:
        return "the dataset changed"
    if source.get("inputs") != inputs:
        changed = sorted(k for k in set(inputs) | set(source.get("inputs") or {})
                         if (source.get("inputs") or {}).get(k) != inputs.get(k))
        return f"the files changed since the import ({', '.join(changed)})"
    return None


def import_setting(dataset, key: str, setting: dict, out_root: Path | str,
                   where: str | None = None) -> Features:
    """Import (or reuse) the features an `import:` setting names, as out_root/<key>."""
    where = where or f"features {key!r}: setting"
    checked = check_setting(setting, where)
    if not isinstance(checked, ImportSetting):
        raise MmlibError(f"{where}: not an import setting (it has no 'import:' key).")
    check_key(key)
    source_folder = resolve_data_path(checked.path, f"{where}.path")
    record = {"setting": to_jsonable(dataclasses.asdict(checked)),
              "path": str(source_folder.resolve())}
    folder = Path(out_root) / key
    folder.mkdir(parents=True, exist_ok=True)
    data_hash = dataset_hash(dataset)
    with features_lock(out_root, key):
        inputs, read = _plan(checked, source_folder)
        why = _why_not_reuse(folder, record, inputs, data_hash)
        if why is None:
            try:
                features = Features.load(folder)  # every matrix and mask verified
                features.check_dataset(dataset)
                log.info("reusing imported features %s (%s, same files and dataset)", folder,
                         checked.format)
                return features
            except MmlibError as exc:
                why = str(exc)
        log.info("%s: importing %s features from %s (%s)", where, checked.format, source_folder, why)
        return write_features(dataset, key, out_root, read(dataset), provenance=record, locked=True)


__all__ = ["import_setting"]
