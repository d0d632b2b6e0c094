"""Completes IISAN's Amazon layout from the Amazon Reviews 2018 metadata (Ni et al., EMNLP
2019; the ``meta_<category>.json.gz`` files).

IISAN's release (GAIR-Lab/IISAN ``Dataset/``; spec ``iisan.md`` §1.13, §1.16 item 7) ships
the users files of the three subsets and the items files of Scientific and Instruments,
but no items file for Office and no images at all. This writes, for the items of a users
file:

* ``<category>_items.tsv`` — ``asin<TAB>title`` in the metadata's order (the order the
  reader numbers items in); tabs and line breaks inside titles become spaces;
* ``am_image_<xx>.urls.tsv`` — ``asin<TAB>image URL`` (``imageURLHighRes``, else
  ``imageURL``), to download into ``am_image_<xx>/<asin>.jpg`` (``docs/datasets.md``).

Nothing is downloaded here::

    python -m jaxrec.data.readers.amazon_meta --meta=meta_Office_Products.json.gz \\
        --users=$HOME/data/office/am_Office_Products_users_10K.tsv --category=Office_Products

Errors (one ``error:`` line, status 2) name the metadata file and line of a row that is
not a JSON object with an ``asin``, and the users-file items the metadata lacks.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
from typing import Optional

from jaxrec.data.events import DataFormatError
from jaxrec.data.readers import _content
from jaxrec.data.readers.amazon import image_folder_name


def _records(path: str):
    """(line, dict) per metadata line: JSON (2018 files) or a Python literal (2014 files)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                try:
                    rec = ast.literal_eval(line)
                except (ValueError, SyntaxError):
                    raise DataFormatError(path, "expected one JSON object per line", n) from None
            if not isinstance(rec, dict) or not isinstance(rec.get("asin"), str):
                raise DataFormatError(path, "expected a JSON object with an 'asin' field", n)
            yield n, rec


def _clean(text) -> str:
    return " ".join(str(text or "").split())


def _image_url(rec: dict) -> str:
    for key in ("imageURLHighRes", "imageURL", "imUrl"):
        urls = rec.get(key)
        if isinstance(urls, str) and urls:
            return urls
        if isinstance(urls, list) and urls:
            return str(urls[0])
    return ""


def build(meta_path: str, users_path: str, category: str, out_dir: Optional[str] = None
          ) -> dict:
    """Writes the items TSV and the image URL list of the items of ``users_path``.

    Args:
      meta_path: ``meta_<category>.json(.gz)`` of Amazon Reviews 2018.
      users_path: the release's ``am_<category>_users*.tsv``.
      category: file-name stem, e.g. ``Office_Products``.
      out_dir: where to write (default: the users file's folder).
    Returns:
      {'items': path, 'urls': path, 'num_items': N, 'without_image': M}.
    Raises:
      DataFormatError: a malformed metadata line (file:line); items of the users file
        missing from the metadata (their count and first asins).
    """
    _, asins, _ = _content.read_sequence_lines(users_path)
    wanted = set(asins)
    titles, urls = {}, {}
    for _, rec in _records(meta_path):
        a = rec["asin"]
        if a in wanted and a not in titles:        # the 2018 files repeat some asins
            titles[a] = _clean(rec.get("title"))
            urls[a] = _image_url(rec)
    missing = sorted(wanted - set(titles))
    if missing:
        raise DataFormatError(meta_path, f"{len(missing)} item(s) of {users_path} are not in "
                                         f"the metadata, e.g. {', '.join(missing[:5])}")
    out_dir = out_dir or os.path.dirname(os.path.abspath(users_path))
    items_path = os.path.join(out_dir, f"{category}_items.tsv")
    urls_path = os.path.join(out_dir, f"{image_folder_name(category)}.urls.tsv")
    with open(items_path, "w", encoding="utf-8") as f:
        f.writelines(f"{a}\t{t}\n" for a, t in titles.items())
    with open(urls_path, "w", encoding="utf-8") as f:
        f.writelines(f"{a}\t{u}\n" for a, u in urls.items() if u)
    return {"items": items_path, "urls": urls_path, "num_items": len(titles),
            "without_image": sum(1 for u in urls.values() if not u)}


def main(argv):
    del argv
    from absl import flags
    f = flags.FLAGS
    out = build(os.path.expanduser(f.meta), os.path.expanduser(f.users), f.category,
                os.path.expanduser(f.out_dir) if f.out_dir else None)
    print(f"wrote {out['items']} ({out['num_items']} items) and {out['urls']} "
          f"({out['num_items'] - out['without_image']} image URLs; {out['without_image']} "
          "items have none)")


def run():
    """Console script ``jaxrec-amazon-meta`` (same flags as ``python -m
    jaxrec.data.readers.amazon_meta``)."""
    from absl import flags

    from jaxrec import cli
    flags.DEFINE_string("meta", None, "meta_<category>.json(.gz) of Amazon Reviews 2018.",
                        required=True)
    flags.DEFINE_string("users", None, "IISAN's am_<category>_users*.tsv.", required=True)
    flags.DEFINE_string("category", None, "File-name stem, e.g. Office_Products.",
                        required=True)
    flags.DEFINE_string("out_dir", None, "Output folder (default: the users file's).")
    cli.run(main)


if __name__ == "__main__":
    run()
