#!/usr/bin/env bash
# Build the docs site and take screenshots of four pages with headless Chromium (Debian: apt-get install chromium).
#   tools/screenshots.sh [OUT_DIR]        -> OUT_DIR/{home,tutorial,api,cli}.png (default: site-shots/)
# (The repository's ./dev is the environment script, so this lives in tools/.)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-site-shots}
site=$(mktemp -d)
NO_MKDOCS_2_WARNING=1 ./dev mkdocs build --strict -q -d "$site"
mkdir -p "$out"
shoot() {   # name, page path inside the site, window height
  chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,"$3" \
           --screenshot="$out/$1.png" "file://$site/$2" >/dev/null 2>&1
  echo "$out/$1.png  <- $2"
}
shoot home index.html 1400
shoot tutorial tutorials/first-run/index.html 1600
shoot api reference/api/index.html 1600
shoot cli reference/cli/index.html 1600
rm -rf "$site"
