#!/usr/bin/env bash
# Install claudemesh (the CLI/daemon `claudemesh` and the standalone `claudemesh-relay`)
# into ~/.local/bin, from this source tree, from a GitHub release, or from binaries you
# already have; optionally as a user service.
#
#   packaging/install.sh                      # build from source (needs cargo)
#   packaging/install.sh --release 0.1.0      # download a release, check its SHA-256
#   packaging/install.sh --binaries DIR       # install prebuilt binaries from DIR
#   options: --prefix DIR (default ~/.local)  --service  --no-completions
set -euo pipefail

REPO="claudemesh/claudemesh"
PREFIX="${HOME}/.local"
MODE="source"
VERSION=""
BINARIES=""
SERVICE=0
COMPLETIONS=1

die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
    --release) MODE="release"; VERSION="${2:?--release needs a version}"; shift 2 ;;
    --binaries) MODE="binaries"; BINARIES="${2:?--binaries needs a directory}"; shift 2 ;;
    --service) SERVICE=1; shift ;;
    --no-completions) COMPLETIONS=0; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

BIN="${PREFIX}/bin"
mkdir -p "$BIN"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

target_triple() {
  local os arch
  os="$(uname -s)"; arch="$(uname -m)"
  case "$arch" in x86_64|amd64) arch=x86_64 ;; aarch64|arm64) arch=aarch64 ;; *) die "unsupported CPU $arch" ;; esac
  case "$os" in
    Linux) echo "${arch}-unknown-linux-gnu" ;;
    Darwin) echo "${arch}-apple-darwin" ;;
    *) die "unsupported OS $os" ;;
  esac
}

sha256() {
  if command -v sha256sum >/dev/null; then sha256sum "$1" | cut -d' ' -f1; else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

case "$MODE" in
  source)
    command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) or use --release"
    ROOT="$(cd "$(dirname "$0")/.." && pwd)"
    [ -f "$ROOT/Cargo.toml" ] || die "run this from a claudemesh source tree, or use --release"
    (cd "$ROOT" && cargo build --release --locked -p claudemesh -p claudemesh-relay)
    SRC="$ROOT/target/release"
    ;;
  release)
    TRIPLE="$(target_triple)"
    NAME="claudemesh-${VERSION}-${TRIPLE}.tar.gz"
    BASE="https://github.com/${REPO}/releases/download/v${VERSION}"
    curl -fsSL -o "$WORK/$NAME" "$BASE/$NAME" || die "cannot download $BASE/$NAME"
    curl -fsSL -o "$WORK/SHA256SUMS" "$BASE/SHA256SUMS" || die "cannot download $BASE/SHA256SUMS"
    WANT="$(grep " ${NAME}\$" "$WORK/SHA256SUMS" | cut -d' ' -f1)"
    [ -n "$WANT" ] || die "$NAME is not listed in SHA256SUMS"
    [ "$(sha256 "$WORK/$NAME")" = "$WANT" ] || die "checksum mismatch for $NAME: not installing"
    tar -xzf "$WORK/$NAME" -C "$WORK"
    SRC="$WORK"
    ;;
  binaries)
    SRC="$(cd "$BINARIES" && pwd)"
    ;;
esac

for b in claudemesh claudemesh-relay; do
  [ -x "$SRC/$b" ] || die "$SRC/$b is missing"
  install -m 0755 "$SRC/$b" "$BIN/$b.new"
  mv -f "$BIN/$b.new" "$BIN/$b"
done
echo "installed $("$BIN/claudemesh" --version) into $BIN"

if [ "$COMPLETIONS" = 1 ]; then
  mkdir -p "$PREFIX/share/bash-completion/completions" "$PREFIX/share/zsh/site-functions" "$PREFIX/share/fish/vendor_completions.d"
  "$BIN/claudemesh" completions bash > "$PREFIX/share/bash-completion/completions/claudemesh"
  "$BIN/claudemesh" completions zsh > "$PREFIX/share/zsh/site-functions/_claudemesh"
  "$BIN/claudemesh" completions fish > "$PREFIX/share/fish/vendor_completions.d/claudemesh.fish"
  echo "shell completions installed under $PREFIX/share"
fi

if [ "$SERVICE" = 1 ]; then
  "$BIN/claudemesh" service install
fi

case ":$PATH:" in
  *":$BIN:"*) ;;
  *) echo "note: $BIN is not on your PATH; add it, e.g. echo 'export PATH=\"$BIN:\$PATH\"' >> ~/.profile" ;;
esac
echo "next: claudemesh up   (then \`claudemesh install\` to connect Claude Code)"
