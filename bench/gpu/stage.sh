#!/usr/bin/env bash
# Device call: keep the carried .gpu/partN in /tmp/tb/stage for the run (the machine stays warm between calls).
set -eu
mkdir -p /tmp/tb/stage
for part in .gpu/part*; do cp -r "$part"/. /tmp/tb/stage/; echo "staged $part"; done
du -sh /tmp/tb/stage; ls /tmp/tb/stage | wc -l
python3 --version; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
