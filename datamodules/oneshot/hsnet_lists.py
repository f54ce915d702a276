"""HSNet's per-fold COCO-20i episode lists (``splits/coco/val/fold<i>.pkl`` of juhongm999/hsnet), read safely."""

from __future__ import annotations

import pickle
from pathlib import Path

from datamodules.data_pickle import load_data_pickle
from datamodules.errors import DatasetError


def read_hsnet_lists(path: Path, class_ids: list[int], image_ids: dict[str, int]) -> dict[int, list[int]]:
    """HSNet's COCO-20i image lists: a pickle of {class index: ["val2014/<file_name>", ...]} -> {class: image ids}.

    Read with `load_data_pickle` (plain containers only, no more memory than the file's size justifies), then
    checked: every class of `class_ids` listed, every name an image of the annotations (`image_ids` by file name).
    """
    try:
        data = load_data_pickle(path.read_bytes())
    except OSError as err:
        raise DatasetError(f"HSNet's episode lists {path} cannot be read ({err}).") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise DatasetError(
            f"HSNet's episode lists {path} are not a readable pickle of {{class: [image names]}}: {err}. Fix: copy "
            "data/splits/coco/val/fold<i>.pkl from github.com/juhongm999/hsnet again, or delete it to draw the "
            "episodes from the annotations."
        ) from None
    missing = [c for c in class_ids if not isinstance(data, dict) or not isinstance(data.get(c), list)]
    if missing:
        raise DatasetError(
            f"HSNet's episode lists {path} have no image list for class index(es) {missing[:5]} of this fold: it "
            "must be a dict of {class index: [image names]} for the fold's classes. Fix: copy the fold's file "
            "from github.com/juhongm999/hsnet again, or delete it to draw the episodes from the annotations."
        )
    pools = {}
    for c in class_ids:
        names = [Path(str(name)).name for name in data[c]]
        unknown = [name for name in names if name not in image_ids]
        if unknown:
            raise DatasetError(
                f"HSNet's episode lists {path} name {len(unknown)} image(s) of class index {c} that are not in the "
                f"annotations (e.g. {unknown[0]}): the lists and the annotations are of different splits. Fix: "
                "use the val2014 annotations with HSNet's val lists, or delete the lists."
            )
        pools[c] = [image_ids[name] for name in names]
    return pools
