#!/usr/bin/env bash
# CI: make sure Debian's chromium and chromium-driver are installed, for the dashboard's browser tests
# (tests/control/test_dashboard.py drives them through selenium; nothing is downloaded at test time).
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "chromium already installed: $(chromium --version 2>/dev/null | head -1); $(chromedriver --version | head -1)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y chromium chromium-driver
echo "installed: $(chromium --version 2>/dev/null | head -1); $(chromedriver --version | head -1)"
