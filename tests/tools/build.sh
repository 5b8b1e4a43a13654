#!/usr/bin/env bash
# Builds the Go programs the test suite runs, from the Go module proxy, into the cache
# ($MLOPS_CACHE_DIR, default ~/.cache/mlops) once, and prints a line `NAME=PATH` for each:
#
#   JAEGER    a real Jaeger (infra/jaeger/go.mod), where `mlops jaeger` looks for it too
#   PROMTOOL  Prometheus' rule checker (tests/tools/go.mod)
#   HELM      Helm, to render the chart (tests/tools/go.mod)
#
# Any failure fails the script with Go's own output: nothing falls back to a lesser check.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${MLOPS_CACHE_DIR:-$HOME/.cache/mlops}
mkdir -p "$cache"

# Built into a fresh directory renamed at the end: an interrupted build is never taken for
# a finished one.
build() { # <module dir> <out dir> <package>...
  local module=$1 out=$2
  shift 2
  rm -rf "$out.partial"
  mkdir -p "$out.partial"
  (cd "$module" && go build -o "$out.partial/" "$@")
  rm -rf "$out"
  mv "$out.partial" "$out"
}

jaeger_version=$(sed -n 's/^[[:space:]]*github.com\/jaegertracing\/jaeger \(v[^ ]*\).*/\1/p' "$root/infra/jaeger/go.mod" | head -1)
jaeger="$cache/jaeger-$jaeger_version"
if [ ! -x "$jaeger/jaeger" ]; then
  echo "tools: building Jaeger $jaeger_version (a few minutes, once)" >&2
  build "$root/infra/jaeger" "$jaeger" github.com/jaegertracing/jaeger/cmd/jaeger
fi

key=$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)
tools="$cache/go-tools-$key"
if [ ! -x "$tools/promtool" ] || [ ! -x "$tools/helm" ]; then
  echo "tools: building promtool and helm (a few minutes, once)" >&2
  build "$here" "$tools" github.com/prometheus/prometheus/cmd/promtool helm.sh/helm/v3/cmd/helm
fi

echo "JAEGER=$jaeger/jaeger"
echo "PROMTOOL=$tools/promtool"
echo "HELM=$tools/helm"
