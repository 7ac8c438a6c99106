#!/usr/bin/env bash
# Debian packages the project uses: the Fashion-MNIST data, Chromium for the web UI's
# end-to-end test, iproute2 for scripts/offline. Installs what is missing when it can
# (root or sudo); otherwise says what to install and carries on.
set -euo pipefail
packages=()
[ -d /usr/share/datasets/fashion-mnist ] || packages+=(dataset-fashion-mnist)
command -v chromium >/dev/null || packages+=(chromium)
command -v ip >/dev/null || packages+=(iproute2)  # scripts/offline brings loopback up
[ ${#packages[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; else
  echo "note: install the Debian packages ${packages[*]} (tests that need them are skipped)" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "note: no apt-get here; install ${packages[*]} by hand (tests that need them are skipped)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${packages[@]}"
