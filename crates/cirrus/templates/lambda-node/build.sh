#!/usr/bin/env sh
# Packages {{name}}.zip (the deployment package: index.mjs at its root); `cirrus build`
# runs this. Add dependencies with npm install, then zip node_modules too.
set -eu
cd "$(dirname "$0")"
rm -f {{name}}.zip
python3 -m zipfile -c {{name}}.zip index.mjs
echo "built {{name}}.zip"
