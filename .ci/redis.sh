#!/usr/bin/env bash
# CI: make sure redis-server (Debian's package) is installed, for the fleet tests. Nothing else: the tests start
# their own server on a free loopback port and stop it at the end.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
    echo "redis-server already installed: $(redis-server --version)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y redis-server
# The package starts a system-wide server where a service manager runs; the tests do not use it.
echo "installed: $(redis-server --version)"
