#!/bin/sh
# Build (and push) every sftlab image with tag = the package version from pyproject.toml.
#
#   images/build.sh                 build all four images
#   images/build.sh --push          build and push them
#   images/build.sh --dry-run       print the commands only
#   REGISTRY=registry.example.com/ml images/build.sh --push
#
# Images, all from the one images/Dockerfile by --target (REGISTRY defaults to ghcr.io/sftlab, so
# REGISTRY/sftlab:VERSION is the image the compiled pipelines reference, sftlab.spec.schema.DEFAULT_IMAGE):
#   REGISTRY/sftlab:VERSION         --target base    CPU base, KFP components
#   REGISTRY/sftlab-train:VERSION   --target train   CUDA training (component image on GPU clusters)
#   REGISTRY/sftlab-serve:VERSION   --target serve   KServe evaluation server (ServingRuntime)
#   REGISTRY/sftlab-mlflow:VERSION  --target mlflow  MLflow tracking server (Helm chart)
# Other settings: DOCKER (docker; podman/nerdctl work), PLATFORM (linux/amd64),
# TORCH_CUDA_INDEX_URL (https://download.pytorch.org/whl/cu128), FLASH_ATTN_VERSION (empty: skip).
set -eu

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REGISTRY="${REGISTRY:-ghcr.io/sftlab}"
REGISTRY="${REGISTRY%/}"
DOCKER="${DOCKER:-docker}"
PLATFORM="${PLATFORM:-linux/amd64}"
TORCH_CUDA_INDEX_URL="${TORCH_CUDA_INDEX_URL:-https://download.pytorch.org/whl/cu128}"
FLASH_ATTN_VERSION="${FLASH_ATTN_VERSION:-}"
VERSION="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$ROOT/pyproject.toml")"
REVISION="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"

push=false
dry_run=false
for arg in "$@"; do
    case "$arg" in
        --push) push=true ;;
        --dry-run) dry_run=true ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument '$arg'" >&2; exit 64 ;;
    esac
done

run() {
    echo "+ $*"
    if [ "$dry_run" = false ]; then "$@"; fi
}

# name  target  extra build args
build() {
    name="$1"; target="$2"; shift 2
    run "$DOCKER" build --platform "$PLATFORM" -f "$ROOT/images/Dockerfile" --target "$target" \
        --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" "$@" \
        -t "$REGISTRY/$name:$VERSION" "$ROOT"
    if [ "$push" = true ]; then run "$DOCKER" push "$REGISTRY/$name:$VERSION"; fi
}

build sftlab base
build sftlab-train train \
    --build-arg "TORCH_INDEX_URL=$TORCH_CUDA_INDEX_URL" --build-arg "FLASH_ATTN_VERSION=$FLASH_ATTN_VERSION"
build sftlab-serve serve --build-arg "TORCH_INDEX_URL=$TORCH_CUDA_INDEX_URL"
build sftlab-mlflow mlflow
