#!/usr/bin/env sh
# Packages {{name}}.zip (the deployment package: app.py at its root); `cirrus build`
# runs this. Add dependencies with: pip install --target . PACKAGE
set -eu
cd "$(dirname "$0")"
rm -f {{name}}.zip
python3 -m zipfile -c {{name}}.zip app.py
echo "built {{name}}.zip"
