#!/usr/bin/env bash
# Print the path of a valkey-server binary for the tests (tests/harness.py starts it when
# FLEET_TEST_REDIS_SERVER names it), fetching one into the repo's .venv if none is installed.
#
# A valkey-server on PATH wins, then one already in .venv/bin. Otherwise this takes Debian
# bookworm-backports' valkey-tools package (the one that holds the server binary), checks it
# against the archive's signed InRelease (gpgv with debian-archive-keyring, then the Packages
# index's SHA-256), and copies its one binary into .venv/bin/valkey-server without installing the
# package: the machine's redis-server and redis-cli stay as they are. Its libraries (libjemalloc2,
# liblzf1, libssl3) are the ones Debian's redis-server already needs.
set -euo pipefail
cd "$(dirname "$0")/../.."

if command -v valkey-server >/dev/null 2>&1; then
  command -v valkey-server
  exit 0
fi

BIN="$PWD/.venv/bin/valkey-server"
if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
  echo "$BIN"
  exit 0
fi
[ -d .venv/bin ] || { echo "valkey.sh: no .venv in $PWD (.ci/run makes it first)" >&2; exit 1; }

MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE="bookworm-backports"
ARCH="$(dpkg --print-architecture)"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
for need in curl gpgv xz dpkg-deb sha256sum; do
  command -v "$need" >/dev/null 2>&1 || { echo "valkey.sh: $need is missing" >&2; exit 1; }
done
[ -r "$KEYRING" ] || { echo "valkey.sh: $KEYRING is missing (apt package debian-archive-keyring)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fetch() { curl -fsS --retry 3 --max-time 120 -o "$2" "$MIRROR/$1"; }

fetch "dists/$SUITE/InRelease" "$work/InRelease"
gpgv --keyring "$KEYRING" --output "$work/Release" "$work/InRelease" 2>/dev/null \
  || { echo "valkey.sh: the signature of $SUITE's InRelease does not verify" >&2; exit 1; }

index="main/binary-$ARCH/Packages.xz"
want="$(awk -v f="$index" '/^SHA256:/ {s=1; next} /^[A-Za-z]/ {s=0} s && $3 == f {print $1}' "$work/Release")"
[ -n "$want" ] || { echo "valkey.sh: $index is not in $SUITE's Release" >&2; exit 1; }
fetch "dists/$SUITE/$index" "$work/Packages.xz"
echo "$want  $work/Packages.xz" | sha256sum -c --quiet -

xz -dc "$work/Packages.xz" | awk '/^Package: valkey-tools$/ {p=1} p && /^$/ {p=0; done=1} p && !done' >"$work/stanza"
file="$(awk '/^Filename:/ {print $2}' "$work/stanza")"
sum="$(awk '/^SHA256:/ {print $2}' "$work/stanza")"
[ -n "$file" ] && [ -n "$sum" ] || { echo "valkey.sh: no valkey-tools in $SUITE for $ARCH" >&2; exit 1; }
fetch "$file" "$work/valkey-tools.deb"
echo "$sum  $work/valkey-tools.deb" | sha256sum -c --quiet -

dpkg-deb -x "$work/valkey-tools.deb" "$work/root"
# One binary serves every role by the name it is started with; Debian's valkey-server package
# only adds a link of that name (and a service).
found="$(find "$work/root" -type f -name valkey-check-rdb | head -n 1)"
[ -n "$found" ] || { echo "valkey.sh: valkey-tools holds no valkey-check-rdb" >&2; exit 1; }
install -m 0755 "$found" "$BIN"
"$BIN" --version >&2
echo "$BIN"
