#!/usr/bin/env bash
# Installs what the test suite needs and a fresh Debian machine may lack (as root, or
# through sudo): the native -dev packages the build links against (libcurl among them:
# librdkafka's OpenID Connect client), Java and Maven (Apache Kafka's broker), Python 3
# with venv (the independent client peers), PostgreSQL's server, OpenSSL (the secured
# broker's certificates). Go 1.26 (Jaeger, promtool, helm) is not in Debian's archive at
# that version: it must be on PATH already, and the script says so.
set -euo pipefail

need=()
for pkg in libssl-dev libsqlite3-dev zlib1g-dev libcurl4-openssl-dev pkg-config cmake openssl \
  python3-venv; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
command -v java >/dev/null || need+=(default-jre-headless)
command -v mvn >/dev/null || need+=(maven)
command -v python3 >/dev/null || need+=(python3)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${need[@]}"
fi
if ! command -v go >/dev/null; then
  echo "setup: Go 1.26 or newer must be on PATH (it builds Jaeger, promtool and helm for the tests)" >&2
  exit 1
fi
