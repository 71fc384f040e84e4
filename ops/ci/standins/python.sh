# Stand-in for python:3.11.11-slim-bookworm (ops/ci/containers.sh, when no registry is reachable):
# Debian's python3 (3.11) in place of the official build under /usr/local. Only CI builds on it.
set -eu
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
  ca-certificates python3 python3-venv python3-pip python3-dev
rm -rf /var/lib/apt/lists/*
ln -s /usr/bin/python3 /usr/local/bin/python
rm -f /usr/lib/python3*/EXTERNALLY-MANAGED
# The host's CA bundle (public certificates): pip reaches PyPI through what the host trusts.
cp /standin/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
