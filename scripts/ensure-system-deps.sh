#!/usr/bin/env bash
# Installs the Debian packages the appliance needs to build and test:
#   libsystemd-dev + pkg-config  (systemd-python compiles against them)
#   systemd                      (systemd-analyze verify/security for the unit tests)
#   strace, util-linux           (privacy trace tests, two-user spool permission test)
#   chromium, chromium-driver    (the operator console's real-browser tests, with selenium)
#   postgresql                   (the station's scale-out tier: the tests start a real server, run
#                                 as the package's 'postgres' account because initdb refuses root)
# Runs apt only when something is missing, so a prepared machine needs no network.
set -euo pipefail
missing=()
pkg-config --version >/dev/null 2>&1 || missing+=(pkg-config)
pkg-config --exists libsystemd 2>/dev/null || missing+=(libsystemd-dev)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v strace >/dev/null 2>&1 || missing+=(strace)       # the privacy trace tests
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)  # the two-user spool test
command -v chromium >/dev/null 2>&1 || missing+=(chromium)           # console browser tests
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && getent passwd postgres >/dev/null \
    || missing+=(postgresql)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "installing Debian packages: ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
