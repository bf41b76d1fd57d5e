#!/usr/bin/env bash
# Create .venv and install the whole stack: torch, timm, mmengine, mmcv (full, with compiled ops),
# mmsegmentation, the test data. Idempotent: a second run only checks and takes seconds.
# The mmcv wheel is built once (about 15 min on 2 cores) and cached outside the checkout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NEPA_VENV:-$ROOT/.venv}"
CACHE="${NEPA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nepa-eval}"
PY_BOOT="${PYTHON:-python3}"
TORCH_SPEC="${NEPA_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
MMCV_VERSION=2.1.0
log() { printf '[setup] %s\n' "$*" >&2; }

STAMP_SRC="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha1sum | cut -c1-16)"
STAMP="$VENV/.nepa-setup-$STAMP_SRC"

if [ -f "$STAMP" ] && "$VENV/bin/python" -c "import mmcv.ops, mmseg.models, timm, backbones, nepa_eval" 2>/dev/null; then
    log "environment is up to date ($VENV)"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment $VENV"
    "$PY_BOOT" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

log "installing torch ($TORCH_SPEC)"
# shellcheck disable=SC2086
"${PIP[@]}" $TORCH_SPEC

# ---- mmcv with compiled ops -------------------------------------------------
if "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; then
    log "mmcv $MMCV_VERSION with ops already importable"
else
    TAG="$("$PY" -c "import torch, sys; print('torch%s-py%d%d-%s' % (torch.__version__.split('+')[0], *sys.version_info[:2], 'cuda' if torch.cuda.is_available() else 'cpu'))")"
    WHEELDIR="$CACHE/wheels/mmcv-$MMCV_VERSION-$TAG"
    WHEEL="$(ls "$WHEELDIR"/mmcv-*.whl 2>/dev/null | head -n1 || true)"
    if [ -z "$WHEEL" ]; then
        log "building mmcv $MMCV_VERSION with ops for $TAG (once; ~15 min on 2 cores)"
        WORK="$(mktemp -d)"
        # mmcv's setup.py imports pkg_resources (setuptools < 70); torch itself wants a newer one back afterwards.
        # Even `pip download` runs setup.py (for metadata), and an isolated build env would take the newest
        # setuptools, which no longer ships pkg_resources: so no isolation, for the download too.
        "${PIP[@]}" "setuptools<70" wheel ninja packaging
        "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-build-isolation --no-binary :all: \
            "mmcv==$MMCV_VERSION" -d "$WORK"
        tar -xzf "$WORK"/mmcv-"$MMCV_VERSION".tar.gz -C "$WORK"
        SRC="$WORK/mmcv-$MMCV_VERSION"
        # torch >= 2.10 headers need C++20; mmcv's setup.py hard-codes c++14/17.
        sed -i 's/-std=c++14/-std=c++20/g; s/-std=c++17/-std=c++20/g' "$SRC/setup.py"
        if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
            unset FORCE_CUDA
        else
            export FORCE_CUDA=0
        fi
        mkdir -p "$WHEELDIR.tmp"
        (cd "$SRC" && MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
            "$PY" -m pip wheel --disable-pip-version-check -q --no-build-isolation --no-deps . -w "$WHEELDIR.tmp")
        rm -rf "$WHEELDIR" && mv "$WHEELDIR.tmp" "$WHEELDIR"   # the cache only ever holds a finished wheel
        rm -rf "$WORK"
        WHEEL="$(ls "$WHEELDIR"/mmcv-*.whl | head -n1)"
    else
        log "using cached mmcv wheel $(basename "$WHEEL")"
    fi
    "${PIP[@]}" "$WHEEL"
fi
# torch wants setuptools >= 77; mmengine resolves `mmseg::` config inheritance through pkg_resources, which
# setuptools 81+ no longer ships.
"${PIP[@]}" "setuptools>=77,<81"

# ---- the project and its Python dependencies ---------------------------------
log "installing nepa-eval (editable) and its dependencies"
"${PIP[@]}" -e "$ROOT[dev]"

# ---- data that ships inside registry packages (offline at run time) ------------
"${PIP[@]}" --no-deps foolbox==3.3.4
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    log "installing Debian package dataset-fashion-mnist"
    if ! { $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
           || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; }; then
        log "WARNING: could not install dataset-fashion-mnist; the tests that need it will fail"
    fi
fi

# labelme's source archive carries 3 Pascal VOC photos with masks (the segmentation smoke test's input). The
# archive is GPL: its images are read from the cache as test inputs, never copied into the checkout.
VOC_DIR="$CACHE/labelme/data_dataset_voc"
if [ ! -d "$VOC_DIR/JPEGImages" ]; then
    log "fetching labelme 6.3.1's VOC example photos into $VOC_DIR"
    LM_TMP="$(mktemp -d)"
    if "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: labelme==6.3.1 -d "$LM_TMP" \
        && "$PY" - "$LM_TMP"/labelme-6.3.1.tar.gz "$VOC_DIR" <<'PYEOF'
import shutil, sys, tarfile, tempfile
from pathlib import Path

archive, dest = sys.argv[1], Path(sys.argv[2])
part = "/examples/semantic_segmentation/data_dataset_voc/"
with tempfile.TemporaryDirectory() as tmp, tarfile.open(archive) as tar:
    tar.extractall(tmp, members=[m for m in tar.getmembers() if part in m.name and m.isfile()], filter="data")
    src = next(Path(tmp).glob("*" + part.rstrip("/")))
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(str(dest) + ".tmp", ignore_errors=True)
    shutil.copytree(src, str(dest) + ".tmp")
    Path(str(dest) + ".tmp").rename(dest)  # the cache only ever holds a complete folder
PYEOF
    then :; else log "WARNING: could not fetch labelme's VOC photos; the VOC smoke test will fail"; fi
    rm -rf "$LM_TMP"
fi

# timm's own model test-suite ships in its source archive (tests/), not in the wheel: tests/test_timm_suite.py runs
# its test_models.py on our nepa_* models. Only tests/ of the installed version is kept, in the cache.
TIMM_VERSION="$("$PY" -c "from importlib.metadata import version; print(version('timm'))")"
TIMM_TESTS="$CACHE/timm-tests/$TIMM_VERSION"
if [ ! -f "$TIMM_TESTS/tests/test_models.py" ]; then
    log "fetching timm $TIMM_VERSION's test-suite into $TIMM_TESTS"
    TT_TMP="$(mktemp -d)"
    if "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: "timm==$TIMM_VERSION" -d "$TT_TMP" \
        && "$PY" - "$TT_TMP"/timm-"$TIMM_VERSION".tar.gz "$TIMM_TESTS" <<'PYEOF'
import shutil, sys, tarfile, tempfile
from pathlib import Path

archive, dest = sys.argv[1], Path(sys.argv[2])
with tempfile.TemporaryDirectory() as tmp, tarfile.open(archive) as tar:
    members = [m for m in tar.getmembers() if m.isfile() and m.name.split("/")[1:2] == ["tests"]]
    tar.extractall(tmp, members=members, filter="data")
    src = next(Path(tmp).glob("*/tests"))
    dest.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dest / "tests.tmp", ignore_errors=True)
    shutil.copytree(src, dest / "tests.tmp")
    shutil.rmtree(dest / "tests", ignore_errors=True)
    (dest / "tests.tmp").rename(dest / "tests")  # the cache only ever holds a complete folder
PYEOF
    then :; else log "WARNING: could not fetch timm's test-suite; tests/test_timm_suite.py will fail"; fi
    rm -rf "$TT_TMP"
fi

"$PY" -c "import mmcv.ops, mmseg.models, timm, backbones, nepa_eval" \
    || { log "ERROR: the environment does not import; see the messages above"; exit 1; }
rm -f "$VENV"/.nepa-setup-*
touch "$STAMP"
log "done: activate with 'source ${VENV#$ROOT/}/bin/activate' or use 'make'"
