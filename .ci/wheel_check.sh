#!/usr/bin/env bash
# The package outside the checkout: build the wheel, install it (with the pinned versions of
# constraints.txt) into a fresh virtual environment, and train a smoke run from a directory
# that is not the repository, through the installed console script and a registered config.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="$ROOT/.venv/bin/python"
WORK="$(mktemp -d /tmp/jaxrec_wheel.XXXXXX)"
had_build=0; [ -d "$ROOT/build" ] && had_build=1
# setuptools stages the wheel in ./build: remove it afterwards unless it was there before
trap 'rm -rf "$WORK"; [ "$had_build" = 1 ] || rm -rf "$ROOT/build"' EXIT
"$PY" -m build --wheel --outdir "$WORK/dist" "$ROOT" > "$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; exit 1; }
WHEEL="$(ls "$WORK"/dist/jaxrec-*.whl)"
py312="$(bash "$ROOT/.ci/find_python312.sh")"
"$py312" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --upgrade pip
"$WORK/venv/bin/python" -m pip install -q -c "$ROOT/constraints.txt" "$WHEEL"
cd "$WORK"                      # outside the checkout: only the installed package is importable
"$WORK/venv/bin/python" -c "import jaxrec, jaxrec.configs as c; assert 'site-packages' in jaxrec.__file__, jaxrec.__file__; print('jaxrec', jaxrec.__version__, 'configs:', ', '.join(c.names()))"
JAXREC_DATA_DIR="$WORK/data" "$WORK/venv/bin/jaxrec-train" --config=sqn:encoder=gru4rec,smoke \
    --config.train.num_steps=2 --workdir="$WORK/run" > "$WORK/run.log" 2>&1 || { tail -30 "$WORK/run.log"; exit 1; }
test -f "$WORK/run/results.json"
echo "wheel check: $(basename "$WHEEL") installed in a fresh venv trained a smoke run outside the checkout"
