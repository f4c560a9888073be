#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests when it is missing.
# Where that is impossible (not root, no apt), the browser tests skip and say why.
set -u
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "browser-deps: /usr/bin/chromium missing and cannot apt-get install it; browser tests will skip" >&2
  exit 0
fi
echo "browser-deps: installing Debian's chromium"
apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
  || echo "browser-deps: apt-get install chromium failed; browser tests will skip" >&2
exit 0
